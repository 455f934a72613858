"""BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS: how long idempotency keys are kept (settings.py calls
`key_retention_days` once).

A key must outlive the event it stored: while the event exists, a retry with the key must be
answered by it, not stored a second time. So the keys are kept at least as long as the longest
event retention (failed events'), and forever when events are; a shorter value stops start-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

VARIABLE = "BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS"


def event_retention_days(*, completed: int, failed: int) -> int:
    """The days the longest-kept events are kept; 0: some are kept forever (as
    events_app/retention.py reads the two settings)."""
    if completed <= 0 or failed <= 0:
        return 0
    return max(completed, failed)


def key_retention_days(env: environ.Env, settings: Mapping[str, Any]) -> int:
    """The variable's value (0: forever), from the event retention in `settings` (the settings
    module's names so far: BIGMIND_EVENT_RETENTION_DAYS, BIGMIND_FAILED_EVENT_RETENTION_DAYS).
    Unset: as long as the events. Raises ImproperlyConfigured for a value shorter than that."""
    events = event_retention_days(
        completed=settings["BIGMIND_EVENT_RETENTION_DAYS"],
        failed=settings["BIGMIND_FAILED_EVENT_RETENTION_DAYS"],
    )
    days = env.int(VARIABLE, default=events)
    if days <= 0:
        return 0
    if events == 0:
        raise ImproperlyConfigured(
            f"{VARIABLE}={days} would delete idempotency keys of events that are kept forever "
            "(BIGMIND_EVENT_RETENTION_DAYS or BIGMIND_FAILED_EVENT_RETENTION_DAYS is 0): set it "
            "to 0, or leave it unset"
        )
    if days < events:
        raise ImproperlyConfigured(
            f"{VARIABLE}={days} is shorter than the events' retention ({events} days): a retry "
            f"of a kept event would store it again. Set it to {events} or more, or leave it unset"
        )
    return days

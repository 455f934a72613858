"""System checks of events_app's settings, run by `manage.py check --deploy` (the release gate,
docs/deployment.md)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register

from events_app.partitions.upkeep import INTERVALS

# As Django asks of DJANGO_SECRET_KEY (security.W009), in characters.
REDACTION_KEY_MIN_LENGTH = 50


@register(Tags.security, deploy=True)
def redaction_key_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """BIGMIND_REDACTION_KEY set, long, and not DJANGO_SECRET_KEY: the hashes of redacted values
    derive from it, so it must be secret and must not change when DJANGO_SECRET_KEY rotates."""
    key = settings.BIGMIND_REDACTION_KEY
    if not key:
        problem = "is not set, so redaction hashes derive from DJANGO_SECRET_KEY"
    elif key == settings.SECRET_KEY:
        problem = "is DJANGO_SECRET_KEY"
    elif len(key) < REDACTION_KEY_MIN_LENGTH or len(set(key)) < 5:
        problem = f"is weak (under {REDACTION_KEY_MIN_LENGTH} characters or 5 distinct ones)"
    else:
        return []
    return [
        Warning(
            f"BIGMIND_REDACTION_KEY {problem}: hashed values would change when that key is "
            "rotated, or could be guessed.",
            hint="Set BIGMIND_REDACTION_KEY to 50 or more random characters of its own and "
            "never change it (docs/governance.md, 'Redaction').",
            id="events_app.W001",
        )
    ]


@register()
def partition_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The events table's partition interval and lookahead: refused by `migrate` and `check`
    before upkeep would fail on them."""
    errors: list[CheckMessage] = []
    interval = settings.BIGMIND_EVENT_PARTITION_INTERVAL
    if interval not in INTERVALS:
        errors.append(
            Error(
                f"BIGMIND_EVENT_PARTITION_INTERVAL is {interval!r}.",
                hint="Use month (the default), week or day (docs/operations.md, 'Partitions').",
                id="events_app.E001",
            )
        )
    if settings.BIGMIND_EVENT_PARTITIONS_AHEAD < 1:
        errors.append(
            Error(
                "BIGMIND_EVENT_PARTITIONS_AHEAD must be 1 or more: the next interval's partition "
                "must exist before its first event arrives.",
                id="events_app.E002",
            )
        )
    return errors

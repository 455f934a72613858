"""Publishing processing work. Every publish carries event ids only (JSON), never instances,
and, when the publisher has them, the events' `received_at` (ISO 8601 text) as a second
argument: the worker's claim then names the events' partitions instead of visiting every
partition of the events table (events_app/pipeline/claims.py). A message without times (one
queued by an earlier release, a wake-up) is claimed by id alone, as before.

A publish that fails (broker down) is logged and dropped: the event is already stored as
`pending`, and the sweep (events_app/pipeline/sweep.py) queues it again once the broker is back.

Tasks are looked up by name in the Celery app's registry (`current_app.tasks[name]`), so the
pipeline never imports events_app/tasks.py, which imports the pipeline (tasks -> pipeline, one
way). The registered task's own `delay` / `apply_async` publish, so a message carries the
task's options and the routes of settings.CELERY_TASK_ROUTES exactly as a direct call would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from celery import Task, current_app
from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)

# The names the tasks of events_app/tasks.py are registered under (their `name=`).
PROCESS_EVENT_TASK = "events.process_event"
PROCESS_EVENTS_TASK = "events.process_events"

# Ids per `events.process_events` message: one claim statement and one transaction per event,
# within a task time limit even for a slow processor (a batch also re-queues what it cannot
# finish in time).
BATCH_MESSAGE_SIZE = 100


# Set while a single-event message is queued and no worker has started it yet (a "wake-up").
WAKEUP_KEY = "pipeline:wakeup-queued"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def event_enqueue(*, event_id: UUID, received_at: datetime | None = None) -> None:
    """Queue the processing of a just-committed event, unless a queued wake-up will take it.

    A worker that starts a single-event message first clears WAKEUP_KEY, then drains every due
    pending event (`events_process(drain=True)`). So while the key is set, a message exists
    whose drain has not begun, and it will claim this event, committed before we looked: no
    message of our own is needed. Under sustained ingest this publishes one message per
    worker wake-up instead of one per event, which otherwise pile up in the broker as no-ops
    (docs/benchmarks.md, "Soak"). The key expires after BIGMIND_WAKEUP_TTL_SECONDS, so a lost
    message blocks publishing only that long (the sweep still finds what it left). A cache
    that fails means publishing anyway.
    """
    _wakeup_publish(str(event_id), received_at)


def events_committed(
    *, event_ids: Sequence[UUID], received_at: Sequence[datetime | None] | None = None
) -> None:
    """Queue the processing of a group of just-committed events (ingest's group commit).

    One wake-up decision for the whole group (see `event_enqueue`), not one per event; without
    coalesced wake-ups (draining off), the group's ids go in `events.process_events` messages.
    """
    if not event_ids:
        return
    if _coalescing():
        _wakeup_publish(str(event_ids[0]), received_at[0] if received_at else None)
    else:
        events_enqueue(event_ids=event_ids, received_at=received_at)


def wakeup_again() -> None:
    """A drain stopped with due events possibly left (its time budget): queue a new wake-up.

    The message carries no id of its own: the drain is the work."""
    _wakeup_publish("")


def wakeup_started() -> None:
    """A worker starts draining: events committed from now on need a new wake-up."""
    try:
        cache.delete(WAKEUP_KEY)
    except Exception:
        logger.warning("could not clear the wake-up flag; it expires on its own")


def _task(name: str) -> Task:
    # The registry, read at publish time: the app is finalized then (its tasks discovered).
    return current_app.tasks[name]


def _wakeup_publish(event_id: str, received_at: datetime | None = None) -> None:
    if _wakeup_queued():
        return
    try:
        if received_at is None:
            _task(PROCESS_EVENT_TASK).delay(event_id)
        else:
            _task(PROCESS_EVENT_TASK).delay(event_id, _iso(received_at))
    except Exception:
        logger.exception(
            "queueing %s failed; the sweep will find what is pending", event_id or "a wake-up"
        )
        wakeup_started()  # nothing was queued: the next event must publish


def _coalescing() -> bool:
    return settings.BIGMIND_DRAIN_CHUNK_SIZE > 0 and settings.BIGMIND_WAKEUP_TTL_SECONDS > 0


def _wakeup_queued() -> bool:
    """True when a queued, unstarted wake-up covers new events; else claims that role."""
    if not _coalescing():
        return False  # no draining: every event needs its own message
    try:
        return not cache.add(WAKEUP_KEY, 1, settings.BIGMIND_WAKEUP_TTL_SECONDS)
    except Exception:
        return False


def event_enqueue_later(
    *, event_id: UUID, countdown: float, received_at: datetime | None = None
) -> None:
    arguments = (str(event_id),) if received_at is None else (str(event_id), _iso(received_at))
    try:
        _task(PROCESS_EVENT_TASK).apply_async(arguments, countdown=countdown)
    except Exception:
        logger.exception("queueing the retry of %s failed; the sweep will queue it", event_id)


def events_enqueue(
    *, event_ids: Sequence[UUID], received_at: Sequence[datetime | None] | None = None
) -> int:
    """Queue events in messages of BATCH_MESSAGE_SIZE ids, with their `received_at` if given
    (in the order of `event_ids`); returns how many were published."""
    published = 0
    for start in range(0, len(event_ids), BATCH_MESSAGE_SIZE):
        end = start + BATCH_MESSAGE_SIZE
        chunk = [str(event_id) for event_id in event_ids[start:end]]
        try:
            if received_at is None:
                _task(PROCESS_EVENTS_TASK).delay(chunk)
            else:
                _task(PROCESS_EVENTS_TASK).delay(chunk, [_iso(t) for t in received_at[start:end]])
        except Exception:
            logger.exception("queueing %d event(s) failed; they stay pending", len(chunk))
            break
        published += len(chunk)
    return published

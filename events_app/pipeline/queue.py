"""Publishing processing work. Every publish carries event ids only (JSON), never instances.

A publish that fails (broker down) is logged and dropped: the event is already stored as
`pending`, and the sweep (events_app/pipeline/sweep.py) queues it again once the broker is back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from uuid import UUID

logger = logging.getLogger(__name__)

# Ids per `events.process_events` message: one claim statement and one transaction per event,
# within a task time limit even for a slow processor (a batch also re-queues what it cannot
# finish in time).
BATCH_MESSAGE_SIZE = 100


def event_enqueue(*, event_id: UUID) -> None:
    # Imported here: tasks import the pipeline, and the task module pulls in Celery's machinery.
    from events_app.tasks import process_event_task

    try:
        process_event_task.delay(str(event_id))
    except Exception:
        logger.exception("queueing event %s failed; it stays pending for the sweep", event_id)


def event_enqueue_later(*, event_id: UUID, countdown: float) -> None:
    from events_app.tasks import process_event_task

    try:
        process_event_task.apply_async((str(event_id),), countdown=countdown)
    except Exception:
        logger.exception("queueing the retry of %s failed; the sweep will queue it", event_id)


def events_enqueue(*, event_ids: Sequence[UUID]) -> int:
    """Queue events in messages of BATCH_MESSAGE_SIZE ids; returns how many were published."""
    from events_app.tasks import process_events_task

    published = 0
    for start in range(0, len(event_ids), BATCH_MESSAGE_SIZE):
        chunk = [str(event_id) for event_id in event_ids[start : start + BATCH_MESSAGE_SIZE]]
        try:
            process_events_task.delay(chunk)
        except Exception:
            logger.exception("queueing %d event(s) failed; they stay pending", len(chunk))
            break
        published += len(chunk)
    return published

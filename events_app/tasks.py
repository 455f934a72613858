"""Celery tasks: thin wrappers that take ids and call the pipeline's services.

Reliability comes from the settings (bigmind/settings.py, "Celery"): late acknowledgement,
rejection on worker loss, prefetch 1, soft and hard time limits. Retries are not Celery's
`self.retry`: the pipeline records each attempt on the event row and queues the next one with
its backoff, so the event's state, not a message, is the source of truth (the sweep relies on it).
"""

from __future__ import annotations

from celery import shared_task

from events_app.pipeline.processing import batch_time_budget, events_process
from events_app.pipeline.sweep import events_sweep
from events_app.rejections import rejections_purge

TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


@shared_task(name="events.process_event", **TASK_OPTIONS)
def process_event_task(event_id: str) -> None:
    """One event, then other due pending ones (draining: see `events_process`)."""
    events_process(event_ids=[event_id], time_budget=batch_time_budget(), drain=True)


@shared_task(name="events.process_events", **TASK_OPTIONS)
def process_events_task(event_ids: list[str]) -> None:
    """Several events in one message (a batch request, the sweep, a reprocess): one claim."""
    events_process(event_ids=event_ids, time_budget=batch_time_budget())


@shared_task(name="events.sweep", **TASK_OPTIONS)
def sweep_task() -> None:
    events_sweep()


@shared_task(name="events.purge_rejections", **TASK_OPTIONS)
def purge_rejections_task() -> None:
    """Retention of rejected events (Celery beat); deletes in chunks, so it holds no long lock."""
    rejections_purge()

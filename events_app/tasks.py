"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from celery import shared_task

from events_app.pipeline import event_process

TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}


@shared_task(name="events.process_event", **TASK_OPTIONS)
def process_event_task(event_id: str) -> None:
    event_process(event_id=event_id)


@shared_task(name="events.process_events", **TASK_OPTIONS)
def process_events_task(event_ids: list[str]) -> None:
    """The events of one batch request, in one message."""
    for event_id in event_ids:
        event_process(event_id=event_id)

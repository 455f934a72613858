"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

import logging

from celery import shared_task

from events_app.pipeline import event_process

logger = logging.getLogger(__name__)


@shared_task(
    name="events.process_event",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def process_event_task(event_id: str) -> None:
    event_process(event_id=event_id)

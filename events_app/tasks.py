"""Celery tasks: thin wrappers that take ids and call the pipeline's services.

Reliability comes from the settings (bigmind/settings.py, "Celery"): late acknowledgement,
rejection on worker loss, prefetch 1, soft and hard time limits. Retries are not Celery's
`self.retry`: the pipeline records each attempt on the event row and queues the next one with
its backoff, so the event's state, not a message, is the source of truth (the sweep relies on it).

The one exception: a database error that escapes the pipeline (the database unreachable: a
restart, a failover), typically at the claim, before anything was recorded. The message is then
published again with a backoff (PROCESSING_RETRY) instead of leaving its events for the sweep
minutes later. Events already claimed when such an error escaped (mid-drain) stay `processing`
until the sweep returns them after the hard time limit plus its margin; nothing is lost.
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from events_app.ingest.rejections import rejections_purge
from events_app.partitions.upkeep import partitions_ensure
from events_app.pipeline.processing import batch_time_budget, events_process
from events_app.pipeline.queue import PROCESS_EVENT_TASK, PROCESS_EVENTS_TASK
from events_app.pipeline.sweep import events_sweep
from events_app.retention import retention_purge
from events_app.webhooks.sending import DELIVER_TASK, endpoint_drain

TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "ignore_result": True}
# Database unreachable (connection refused or lost): retried after 2, 4, 8 ... 60 s (jittered),
# 10 times at most; past that the sweep queues the events again once the database is back.
# Errors within one event's processing are the pipeline's (recorded on the event), not these.
PROCESSING_RETRY = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 10,
}


@shared_task(name=PROCESS_EVENT_TASK, **TASK_OPTIONS, **PROCESSING_RETRY)
def process_event_task(event_id: str, received_at: str | None = None) -> None:
    """One event, then other due pending ones (draining: see `events_process`). `received_at`
    names the event's partition (absent from messages of earlier releases)."""
    events_process(
        event_ids=[event_id],
        received_at=[received_at],
        time_budget=batch_time_budget(),
        drain=True,
    )


@shared_task(name=PROCESS_EVENTS_TASK, **TASK_OPTIONS, **PROCESSING_RETRY)
def process_events_task(event_ids: list[str], received_at: list[str] | None = None) -> None:
    """Several events in one message (a batch request, the sweep, a reprocess): one claim."""
    events_process(event_ids=event_ids, received_at=received_at, time_budget=batch_time_budget())


@shared_task(name="events.sweep", **TASK_OPTIONS)
def sweep_task() -> None:
    events_sweep()


@shared_task(name="events.purge_rejections", **TASK_OPTIONS)
def purge_rejections_task() -> None:
    """Retention of rejected events (Celery beat); deletes in chunks, so it holds no long lock."""
    rejections_purge()


@shared_task(name="events.purge", **TASK_OPTIONS)
def purge_task() -> None:
    """Retention of events and metric buckets (Celery beat): chunks, each a short transaction;
    what the time budget leaves is deleted by the next run."""
    retention_purge(time_budget=batch_time_budget())


@shared_task(name="events.partitions", **TASK_OPTIONS)
def partitions_task() -> None:
    """Partition upkeep (Celery beat): the events table's partitions, created ahead (a no-op on
    SQLite and on an unpartitioned table)."""
    partitions_ensure()


# Acknowledged on receipt, unlike the pipeline's tasks: the message is only a wake-up (the
# delivery rows are the truth, claims are fenced, and the sweep wakes any endpoint with due
# deliveries), so losing it costs a sweep interval at most. Holding it unacknowledged while
# sending exposed a kombu Redis-transport failure: a worker that lost the broker while holding
# its first unacknowledged message died ("Unrecoverable error ... 'NoneType' object has no
# attribute 'hostname'"), in the fault suite's broker restart.
@shared_task(name=DELIVER_TASK, acks_late=False, ignore_result=True)
def deliver_webhooks_task(endpoint_id: int) -> None:
    """Send one endpoint's due webhook deliveries (queue `webhooks`). No Celery retry: each
    delivery's own row holds its attempts and next time, and the sweep wakes what is due."""
    endpoint_drain(endpoint_id=endpoint_id, time_budget=batch_time_budget())

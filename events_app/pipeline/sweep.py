"""The periodic sweep (Celery beat, task `events.sweep`): nothing accepted is left behind.

- A `pending` event nobody claimed for BIGMIND_SWEEP_PENDING_AFTER_SECONDS (its publish was
  lost, the broker was down at commit, a retry's message vanished) is queued again.
- A `processing` event whose claim is older than the task's hard time limit plus
  BIGMIND_SWEEP_STUCK_MARGIN_SECONDS (its worker was killed) goes back to `pending` and is
  queued, or becomes `failed` if it has used all its attempts.
- Webhook deliveries that are due are sent again (events_app/webhooks/sending.py,
  `deliveries_sweep`).

Every change is a conditional UPDATE, and a message for an event that is no longer pending is
dropped by the claim, so overlapping sweeps or a sweep racing a slow worker are harmless.
Each run handles at most BIGMIND_SWEEP_BATCH_SIZE events of each kind, so it never holds
long locks; a backlog larger than that drains over several runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from events_app import dialect
from events_app.models import Event, EventStatus, WebhookEventType
from events_app.pipeline.claims import transitions_record
from events_app.pipeline.queue import events_enqueue
from events_app.webhooks import outbox
from events_app.webhooks.outbox import Occurrence
from events_app.webhooks.sending import deliveries_sweep

logger = logging.getLogger(__name__)

WORKER_LOST = "The worker processing this event stopped before finishing (claim timed out)"


@dataclass(frozen=True)
class SweepResult:
    requeued: int
    unstuck: int
    failed: int


def _stuck_cutoff(now: datetime) -> datetime:
    limit = settings.CELERY_TASK_TIME_LIMIT or settings.CELERY_TASK_SOFT_TIME_LIMIT or 3600
    return now - timedelta(seconds=limit + settings.BIGMIND_SWEEP_STUCK_MARGIN_SECONDS)


def _unstick(now: datetime) -> tuple[int, int]:
    cutoff = _stuck_cutoff(now)
    rows = list(
        Event.objects.filter(status=EventStatus.PROCESSING, claimed_at__lt=cutoff)
        .order_by("claimed_at")
        .values_list("pk", "received_at", "attempts", "claimed_at", "organization_id", "signal_id")[
            : settings.BIGMIND_SWEEP_BATCH_SIZE
        ]
    )
    unstuck = failed = 0
    for pk, received_at, attempts, claimed_at, organization_id, signal_id in rows:
        # Fenced on the claim we saw: a worker finishing right now wins, and we change nothing.
        # received_at names the event's partition.
        claim = Event.objects.filter(
            pk=pk, received_at=received_at, status=EventStatus.PROCESSING, claimed_at=claimed_at
        )
        with transaction.atomic():
            if attempts >= settings.BIGMIND_PROCESSING_MAX_ATTEMPTS:
                status, error = (
                    EventStatus.FAILED,
                    f"{WORKER_LOST} (gave up after {attempts} attempts)",
                )
                moved = claim.update(
                    status=status, last_error=error, processed_at=now, claimed_at=None
                )
                failed += moved
            else:
                status, error = EventStatus.PENDING, WORKER_LOST
                moved = claim.update(status=status, last_error=error, claimed_at=None, due_at=None)
                unstuck += moved
            if moved:
                transitions_record(
                    event_ids=[pk], status=status, attempt=attempts, note=error, at=now
                )
            if moved and status == EventStatus.FAILED:
                # Failed here rather than in events_settle: the outbox is owed it all the same.
                outbox.deliveries_write(
                    [
                        Occurrence(
                            WebhookEventType.EVENT_FAILED,
                            organization_id=organization_id,
                            event_id=pk,
                            signal_id=signal_id,
                            received_at=received_at,
                        )
                    ],
                    now=now,
                )
    return unstuck, failed


def events_sweep(*, now: datetime | None = None) -> SweepResult:
    now = now or timezone.now()
    unstuck, failed = _unstick(now)
    cutoff = now - timedelta(seconds=settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS)
    # An unstuck event has due_at NULL and an old received_at, so it is picked up right here.
    found = list(
        Event.objects.filter(status=EventStatus.PENDING)
        .filter(Q(due_at__isnull=True, received_at__lt=cutoff) | Q(due_at__lt=cutoff))
        .order_by("received_at")
        .values_list("pk", "received_at")[: settings.BIGMIND_SWEEP_BATCH_SIZE]
    )
    ids, times = [pk for pk, _ in found], [received_at for _, received_at in found]
    published = events_enqueue(event_ids=ids, received_at=times) if ids else 0
    if published:
        # Not queued again for another PENDING_AFTER seconds, however long the queue is.
        # Not an event that meanwhile failed a try and is waiting out its backoff.
        Event.objects.filter(
            dialect.received_range(times[:published]),
            pk__in=ids[:published],
            status=EventStatus.PENDING,
        ).filter(Q(due_at__isnull=True) | Q(due_at__lt=cutoff)).update(due_at=now)
    # The outbox too: endpoints with due deliveries (a lost message, a long backoff) are woken.
    deliveries_sweep(now=now)
    if published or unstuck or failed:
        logger.info(
            "sweep: %d pending event(s) queued again, %d stuck returned, %d failed",
            published,
            unstuck,
            failed,
        )
    return SweepResult(requeued=published, unstuck=unstuck, failed=failed)

"""Processing events again (`reprocess_events`, the admin's "Reprocess" action).

A completed or failed event goes back to `pending` with a fresh attempt budget and is queued.
Its rollups are not applied again: `Event.rollup` remembers what the first success added, so
reprocessing re-runs the processor (a new insight, a new engagement weight swapped for the old
one) and never counts a metric value or a state twice. A `pending` event is only queued again;
one being `processing` is left to its worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from uuid import UUID

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from events_app import dialect
from events_app.models import Event, EventStatus
from events_app.pipeline.claims import transitions_record
from events_app.pipeline.queue import BATCH_MESSAGE_SIZE, events_enqueue

REPROCESSABLE = (EventStatus.COMPLETED, EventStatus.FAILED, EventStatus.PENDING)


def events_reprocess_queryset(
    *,
    organization_id: int | None = None,
    status: str | None = None,
    signal_slug: str | None = None,
    since: datetime | None = None,
) -> QuerySet[Event]:
    events = Event.objects.filter(status__in=REPROCESSABLE)
    if organization_id is not None:
        events = events.filter(organization_id=organization_id)
    if status is not None:
        events = events.filter(status=status)
    if signal_slug is not None:
        events = events.filter(signal__slug=signal_slug)
    if since is not None:
        events = events.filter(received_at__gte=since)
    return events


def _chunks(events: QuerySet[Event], size: int) -> Iterator[dict[UUID, datetime]]:
    """Keyset pagination on the primary key: stable while events are added or change status.
    Each page's ids with their received_at (which names their partitions)."""
    last: UUID | None = None
    while True:
        page = events.order_by("pk")
        if last is not None:
            page = page.filter(pk__gt=last)
        rows = dict(page.values_list("pk", "received_at")[:size])
        if not rows:
            return
        yield rows
        last = next(reversed(rows))


def events_reprocess(
    *,
    events: QuerySet[Event],
    progress: Callable[[int], None] | None = None,
    chunk_size: int = BATCH_MESSAGE_SIZE,
) -> int:
    """Send these events through processing again; returns how many were queued."""
    queued = 0
    for page in _chunks(events, chunk_size):
        ids = list(page)
        within = dialect.received_range(page.values())
        with transaction.atomic():
            moved = list(
                Event.objects.select_for_update()
                .filter(within, pk__in=ids, status__in=REPROCESSABLE)
                .values_list("pk", flat=True)
            )
            now = timezone.now()
            Event.objects.filter(within, pk__in=moved, status__in=REPROCESSABLE).update(
                status=EventStatus.PENDING,
                attempts=0,
                last_error="",
                claimed_at=None,
                due_at=now,
            )
            transitions_record(
                event_ids=moved, status=EventStatus.PENDING, note="reprocess requested", at=now
            )
            transaction.on_commit(
                partial(events_enqueue, event_ids=moved, received_at=[page[i] for i in moved])
            )
        queued += len(moved)
        if progress is not None:
            progress(len(ids))
    return queued

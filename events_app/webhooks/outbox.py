"""The outbox: webhook deliveries written in the same transaction as the pipeline step that
causes them, so a committed completion always has its deliveries and a rolled-back one has none.

The pipeline hands over `Occurrence`s (what happened, to which event); this module finds the
endpoints that want each one and writes one `WebhookDelivery` per endpoint, with the exact body
every attempt will send. An organization without an enabled endpoint costs one indexed query per
chunk. Once the transaction commits, each endpoint written to is woken on the
`webhooks` queue (events_app/webhooks/sending.py), which sends.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from events_app.ids import uuid7
from events_app.models import Event, WebhookDelivery, WebhookEndpoint
from events_app.webhooks.endpoints import subscribed
from events_app.webhooks.payloads import body, event_data
from events_app.webhooks.sending import deliveries_committed


@dataclass(frozen=True)
class Occurrence:
    """Something an endpoint may want to hear about: `type` (a WebhookEventType), the event it
    is about, and what the type adds beside the event (`insight`, or `previous` and `state`)."""

    type: str
    organization_id: int
    event_id: UUID
    signal_id: int
    extra: dict[str, Any] = field(default_factory=dict)


def deliveries_write(occurrences: list[Occurrence], *, now: datetime) -> list[UUID]:
    """Write the deliveries these occurrences owe, in the caller's transaction; their ids."""
    if not occurrences:
        return []
    by_organization: dict[int, list[WebhookEndpoint]] = defaultdict(list)
    for endpoint in WebhookEndpoint.objects.filter(
        organization_id__in={o.organization_id for o in occurrences}, enabled=True
    ).select_related("organization"):
        by_organization[endpoint.organization_id].append(endpoint)
    if not by_organization:
        return []
    owed = [
        (occurrence, endpoint)
        for occurrence in occurrences
        for endpoint in subscribed(
            by_organization.get(occurrence.organization_id, []),
            occurrence.type,
            occurrence.signal_id,
        )
    ]
    if not owed:
        return []
    # The events as they stand in this transaction: completed, with their results.
    events = {
        event.id: event_data(event)
        for event in Event.objects.filter(id__in={o.event_id for o, _ in owed}).select_related(
            "signal"
        )
    }
    rows = []
    for occurrence, endpoint in owed:
        delivery_id = uuid7()
        data = {"event": events[occurrence.event_id], **occurrence.extra}
        rows.append(
            WebhookDelivery(
                id=delivery_id,
                organization_id=occurrence.organization_id,
                endpoint=endpoint,
                type=occurrence.type,
                event_id=occurrence.event_id,
                body=body(
                    delivery_id=delivery_id,
                    type=occurrence.type,
                    created=now,
                    organization=endpoint.organization.slug,
                    data=data,
                ),
                next_attempt_at=now,
            )
        )
    WebhookDelivery.objects.bulk_create(rows)
    deliveries_committed(endpoint_ids={row.endpoint_id for row in rows})
    return [row.id for row in rows]

"""The outbox: webhook deliveries written in the same transaction as the pipeline step that
causes them, so a committed completion always has its deliveries and a rolled-back one has none.

The pipeline hands over `Occurrence`s (what happened, to which event); this module finds the
endpoints that want each one and writes one `WebhookDelivery` per endpoint: what happened and what
the type adds (`extra`). Its body, the exact bytes every attempt sends, is built at the first
attempt, from the event as it stands then. An organization without an enabled endpoint costs one
indexed query per chunk. Once the transaction commits, each endpoint written to is woken on the
`webhooks` queue (events_app/webhooks/sending.py), which sends.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection

from events_app import dialect
from events_app.ids import uuid7
from events_app.models import WebhookDelivery, WebhookDeliveryStatus, WebhookEndpoint
from events_app.webhooks.endpoints import subscribed
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
    received_at: datetime | None = None  # the event's: it names the event's partition


def deliveries_write(occurrences: list[Occurrence], *, now: datetime) -> list[UUID]:
    """Write the deliveries these occurrences owe, in the caller's transaction; their ids."""
    if not occurrences:
        return []
    by_organization: dict[int, list[WebhookEndpoint]] = defaultdict(list)
    for endpoint in WebhookEndpoint.objects.filter(
        organization_id__in={o.organization_id for o in occurrences}, enabled=True
    ):
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
    # The body is built at the first attempt (sending.bodies_build), from the event then:
    # building it here, for every delivery of every chunk, cost more than processing the chunk.
    rows = [
        (
            uuid7(),
            occurrence.organization_id,
            endpoint.pk,
            occurrence.type,
            occurrence.event_id,
            occurrence.received_at,
            occurrence.extra,
            now,
        )
        for occurrence, endpoint in owed
    ]
    _insert(rows)
    deliveries_committed(endpoint_ids={row[2] for row in rows})
    return [row[0] for row in rows]


def _insert(
    rows: list[tuple[UUID, int, int, str, UUID, datetime | None, dict[str, Any], datetime]],
) -> None:
    """One INSERT for the chunk's deliveries, its rows as one JSON parameter (dialect.rows).
    Not bulk_create: on PostgreSQL it sends each column as an array, and psycopg quotes every
    body's characters for the array in Python, which cost more than the rest of the chunk."""
    source, params = dialect.rows(
        [
            ("did", "uuid"),
            ("org", "bigint"),
            ("ep", "bigint"),
            ("ty", "text"),
            ("eid", "uuid"),
            ("rat", "timestamptz"),
            ("ex", "jsonb"),
            ("at", "timestamptz"),
        ],
        rows,
    )
    table = WebhookDelivery._meta.db_table
    sql = f"""
        INSERT INTO "{table}" ("id", "organization_id", "endpoint_id", "type", "event_id",
            "event_received_at", "extra", "body", "status", "attempts", "next_attempt_at",
            "last_error", "response_excerpt", "created_at")
        SELECT v."did", v."org", v."ep", v."ty", v."eid", v."rat", v."ex", '', %s, 0, v."at",
            '', '', v."at"
        FROM {source}
    """  # noqa: S608 - only model metadata is interpolated
    with connection.cursor() as cursor:
        cursor.execute(sql, [WebhookDeliveryStatus.PENDING, *params])

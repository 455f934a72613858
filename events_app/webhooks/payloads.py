"""What a webhook delivery says: the body `{"id", "type", "created", "organization", "data"}`,
with `data.event` the event as GET /v1/events/<id> shows it.

`event_data` builds that shape by hand: the pipeline sits below the API, and this runs inside the
completing transaction for every event an endpoint wants. tests/events_app/test_webhook_outbox.py
pins it equal to the API's EventSerializer, so the shape is still declared once.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from bigmind.api_time import iso_utc
from events_app.models import Event, webhook_event_id
from events_app.results import event_result_data


def event_data(event: Event) -> dict[str, Any]:
    """`event` (its signal loaded) as GET /v1/events/<id> answers it."""
    return {
        "id": str(event.id),
        "signal_id": event.signal.public_id,
        "signal": event.signal.slug,
        "schema_version": event.schema_version,
        "schema_valid": event.schema_valid,
        "violations": event.violations,
        "identity": {"type": event.identity_type, "id": event.identity_id},
        "data": event.data,
        "timestamp": iso_utc(event.timestamp),
        "received_at": iso_utc(event.received_at),
        "reference": event.reference,
        "idempotency_key": event.idempotency_key,
        "status": event.status,
        "attempts": event.attempts,
        "last_error": event.last_error or None,
        "result": event_result_data(event.result),
        "processed_at": iso_utc(event.processed_at),
    }


def body(
    *, delivery_id: UUID, type: str, created: datetime, organization: str, data: dict[str, Any]
) -> str:
    """The exact text every attempt of this delivery sends (compact JSON, UTF-8 on the wire)."""
    envelope = {
        "id": webhook_event_id(delivery_id),
        "type": type,
        "created": iso_utc(created),
        "organization": organization,
        "data": data,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

"""POST /v1/events/batch: up to 100 events; each item succeeds or fails on its own."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from events_app.api import schema
from events_app.api.common import ApiView, request_body_read
from events_app.api.events import event_public_data
from events_app.ingest.batch import events_ingest_batch


def batch_item_data(item: Any) -> dict[str, Any]:
    if item.error is None:
        data = event_public_data(item.event, signal_public_id=item.signal.public_id)
        data["index"] = item.index
        if item.replayed:
            data["replayed"] = True
        return data
    reference = item.payload.get("reference") if isinstance(item.payload, dict) else None
    slot: dict[str, Any] = {
        "status": "rejected",
        "index": item.index,
        "reference": reference if isinstance(reference, str) else None,
        "error": item.error.message,
        "code": item.error.code,
        "status_code": item.error.status_code,
    }
    if item.error.details is not None:
        slot["details"] = item.error.details
    return slot


class EventBatchApi(ApiView):
    """POST /v1/events/batch: up to 100 events; each item succeeds or fails on its own."""

    @extend_schema(**schema.EVENT_BATCH)
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_BATCH_MAX_BODY_BYTES)
        result = events_ingest_batch(client=request.user, raw_body=raw)
        all_accepted = result.all_accepted
        return Response(
            {"success": all_accepted, "data": [batch_item_data(item) for item in result.items]},
            status=202 if all_accepted else 207,
            headers=result.rate.headers() if result.rate else None,
        )

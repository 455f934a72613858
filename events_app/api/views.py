from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bigmind.errors import PayloadTooLarge
from events_app.models import Event
from events_app.services import event_ingest


def request_body_read(request: Request, *, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` before reading it."""
    meta = request.META
    too_large = PayloadTooLarge(f"Request body is too large: the limit is {limit} bytes")
    length_header = meta.get("CONTENT_LENGTH") or ""
    if length_header:
        try:
            length = int(length_header)
        except ValueError:
            length = 0
        if length > limit:
            raise too_large
        return request._request.body
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        # gunicorn hands chunked bodies to the app with no Content-Length; read one byte past
        # the limit to tell "at the limit" from "over it".
        raw = meta["wsgi.input"].read(limit + 1)
        if len(raw) > limit:
            raise too_large
        return raw
    return b""


def event_public_data(event: Event, *, signal_public_id: str) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "signal_id": signal_public_id,
        "schema_version": event.schema_version,
        "status": event.status,
        "reference": event.reference,
    }


class EventIngestApi(APIView):
    """POST /v1/events: ingest one signal event."""

    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_EVENT_MAX_BODY_BYTES)
        result = event_ingest(
            client=request.user,
            raw_body=raw,
            idempotency_header=request.headers.get("Idempotency-Key"),
        )
        headers = result.rate.headers()
        headers["Location"] = f"/v1/events/{result.event.id}"
        if result.replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            {
                "success": True,
                "data": event_public_data(result.event, signal_public_id=result.signal.public_id),
            },
            status=200 if result.replayed else 202,
            headers=headers,
        )

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import UnreadablePostError
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bigmind.errors import BadRequest, PayloadTooLarge
from events_app.api import schema
from events_app.batch import events_ingest_batch
from events_app.models import Event
from events_app.services import event_ingest, event_validate
from events_app.store import StoredEvent


def _body_incomplete() -> BadRequest:
    return BadRequest(
        "Request body is incomplete: the connection ended before the body did",
        code="body_incomplete",
    )


def request_body_read(request: Request, *, limit: int) -> bytes:
    """The raw body, refusing (413) anything over `limit` before reading it, and (400) a body
    that ends before its Content-Length or its last chunk (RFC 9112: such a message is
    incomplete, so it must not be taken for a whole one)."""
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
        try:
            raw = request._request.body
        except UnreadablePostError as exc:
            raise _body_incomplete() from exc
        if len(raw) < length:
            # gunicorn hands over what came before the client closed, without an error.
            raise _body_incomplete()
        return raw
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        # gunicorn hands chunked bodies to the app with no Content-Length; read one byte past
        # the limit to tell "at the limit" from "over it".
        try:
            raw = meta["wsgi.input"].read(limit + 1)
        except Exception as exc:
            # The server's own framing errors (gunicorn: NoMoreData, InvalidChunkSize,
            # ChunkMissingTerminator) are the client's fault, not a 500.
            raise _body_incomplete() from exc
        if len(raw) > limit:
            raise too_large
        return raw
    return b""


def event_public_data(event: Event | StoredEvent, *, signal_public_id: str) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "signal_id": signal_public_id,
        "schema_version": event.schema_version,
        "status": event.status,
        "reference": event.reference,
    }


class EventIngestApi(APIView):
    """POST /v1/events: ingest one signal event."""

    @extend_schema(**schema.EVENT_INGEST)
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


def _batch_slot(item: Any) -> dict[str, Any]:
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


class EventBatchApi(APIView):
    """POST /v1/events/batch: up to 100 events; each item succeeds or fails on its own."""

    @extend_schema(**schema.EVENT_BATCH)
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_BATCH_MAX_BODY_BYTES)
        result = events_ingest_batch(client=request.user, raw_body=raw)
        all_accepted = result.all_accepted
        return Response(
            {"success": all_accepted, "data": [_batch_slot(item) for item in result.items]},
            status=202 if all_accepted else 207,
            headers=result.rate.headers() if result.rate else None,
        )


class EventValidateApi(APIView):
    """POST /v1/events/validate: every check of ingest, nothing stored, no budget spent."""

    @extend_schema(**schema.EVENT_VALIDATE)
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_EVENT_MAX_BODY_BYTES)
        result = event_validate(
            client=request.user,
            raw_body=raw,
            idempotency_header=request.headers.get("Idempotency-Key"),
        )
        return Response(
            {
                "success": True,
                "data": {
                    "valid": True,
                    "signal_id": result.signal.public_id,
                    "schema_version": result.schema_version,
                },
            },
            headers=result.rate.headers(),
        )

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, UnreadablePostError
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bigmind.errors import (
    ApplicationError,
    BadRequest,
    PayloadTooLarge,
    as_application_error,
    error_headers,
    json_response,
)
from events_app.api import schema
from events_app.ingest.auth import ApiClient, ApiKeyAuthentication
from events_app.ingest.batch import events_ingest_batch
from events_app.ingest.services import event_ingest, event_validate
from events_app.ingest.store import StoredEvent
from events_app.models import Event


def _body_incomplete() -> BadRequest:
    return BadRequest(
        "Request body is incomplete: the connection ended before the body did",
        code="body_incomplete",
    )


def request_body_read(request: HttpRequest | Request, *, limit: int) -> bytes:
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
            # A DRF Request passes `body` through to its HttpRequest.
            raw = request.body
        except UnreadablePostError as exc:
            raise _body_incomplete() from exc
        if len(raw) < length:
            # gunicorn hands over what came before the client closed, without an error.
            raise _body_incomplete()
        return raw
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        # gunicorn hands chunked bodies to the app with no Content-Length, decoded, and says so
        # with `wsgi.input_terminated`. A server that does not (runserver, wsgiref) hands over
        # nothing: refuse that plainly, rather than calling a valid body empty (issue #12).
        if not meta.get("wsgi.input_terminated"):
            raise ApplicationError(
                "This server cannot read a chunked request body; send it with Content-Length",
                status_code=411,
                code="length_required",
            )
        # Read one byte past the limit to tell "at the limit" from "over it".
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


_AUTHENTICATION = ApiKeyAuthentication()


def event_ingest_answer(request: HttpRequest | Request, client: ApiClient) -> HttpResponse:
    """POST /v1/events for an authenticated client: ingest one signal event."""
    raw = request_body_read(request, limit=settings.BIGMIND_EVENT_MAX_BODY_BYTES)
    result = event_ingest(
        client=client,
        raw_body=raw,
        idempotency_header=request.META.get("HTTP_IDEMPOTENCY_KEY"),
    )
    headers = result.rate.headers()
    headers["Location"] = f"/v1/events/{result.event.id}"
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return json_response(
        {
            "success": True,
            "data": event_public_data(result.event, signal_public_id=result.signal.public_id),
        },
        status=200 if result.replayed else 202,
        headers=headers,
    )


@csrf_exempt
def event_ingest_endpoint(request: HttpRequest) -> HttpResponse:
    """POST /v1/events, answered before DRF wraps the request (EventIngestApi.as_view).

    The ingest hot path: DRF's Request, negotiation, permission and rendering steps were a
    seventh of an ingest worker's CPU (py-spy, docs/benchmarks.md), and this endpoint needs
    none of them. What it does need is DRF's: the same authentication class, the same error
    envelope (bigmind.errors), and JSON byte for byte as DRF's renderer writes it.
    """
    try:
        client, _ = _AUTHENTICATION.authenticate(request)  # type: ignore[arg-type]
        request.user = client  # type: ignore[assignment]  # the request log names the key
        return event_ingest_answer(request, client)
    except Exception as exc:
        error = as_application_error(exc)
        if error is None:
            raise  # a bug: Django's handler500 answers in the envelope
        response = json_response(error.envelope(), status=error.status_code)
        for name, value in error_headers(error).items():
            response[name] = value
        return response


class EventIngestApi(APIView):
    """POST /v1/events: ingest one signal event.

    Requests reach `event_ingest_endpoint` without DRF (see `as_view`); `post` is DRF's entry
    to the same answer, and what the OpenAPI document describes.
    """

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        drf_view = super().as_view(**initkwargs)

        def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method == "POST":
                return event_ingest_endpoint(request)
            return drf_view(request, *args, **kwargs)  # type: ignore[no-any-return]

        # What Django, DRF and drf-spectacular read off a view (view_class, cls, initkwargs,
        # csrf_exempt...): the DRF view's own attributes.
        view.__dict__.update(drf_view.__dict__)
        view.__doc__ = drf_view.__doc__
        return view

    @extend_schema(**schema.EVENT_INGEST)
    def post(self, request: Request) -> HttpResponse:
        return event_ingest_answer(request, request.user)


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
            idempotency_header=request.META.get("HTTP_IDEMPOTENCY_KEY"),
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

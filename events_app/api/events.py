"""/v1/events and /v1/events/<id>: send one event (POST), list events (GET), read one (GET)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.api_time import iso_utc, iso_utc_text
from bigmind.errors import as_application_error, error_headers, json_response
from events_app.api import schema
from events_app.api.common import (
    ApiView,
    QueryChoice,
    QueryCursor,
    QueryDateTime,
    QueryLimit,
    QueryText,
    query_parse,
    request_body_read,
    success,
)
from events_app.ingest.auth import ApiClient, ApiKeyAuthentication
from events_app.ingest.services import event_ingest
from events_app.ingest.store import StoredEvent
from events_app.models import Event, EventStatus
from events_app.selectors import EventFilters, event_get, event_list


# --- Shapes -----------------------------------------------------------------------------------
def event_public_data(event: Event | StoredEvent, *, signal_public_id: str) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "signal_id": signal_public_id,
        "schema_version": event.schema_version,
        "status": event.status,
        "reference": event.reference,
    }


def event_result_data(result: Any) -> Any:
    """An event's stored `result`, with its date-times in the API's `Z` form.

    Since issue #12 the pipeline writes them so (`bigmind.api_time.iso_utc`); results stored
    before it hold `+00:00`. Only the places the pipeline writes a date-time are rewritten
    (`rollup.metric.bucket_start`), never a string a processor or a client wrote elsewhere."""
    if not isinstance(result, dict):
        return result
    rollup = result.get("rollup")
    metric = rollup.get("metric") if isinstance(rollup, dict) else None
    if not isinstance(metric, dict) or not isinstance(metric.get("bucket_start"), str):
        return result
    assert isinstance(rollup, dict)
    metric = {**metric, "bucket_start": iso_utc_text(metric["bucket_start"])}
    return {**result, "rollup": {**rollup, "metric": metric}}


def event_full_data(event: Event) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "signal_id": event.signal.public_id,
        "signal": event.signal.slug,
        "schema_version": event.schema_version,
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


class EventListQuery(serializers.Serializer):
    """The filters and page of GET /v1/events; the string filters are as long as the columns
    they match can be (ingest enforces the same widths)."""

    signal = QueryText(max_length=100, help_text="The signal's slug (unknown: empty list).")
    identity_type = QueryText(max_length=64, help_text="Exact match on `identity.type`.")
    identity_id = QueryText(max_length=255, help_text="Exact match on `identity.id`.")
    status = QueryChoice(list(EventStatus.values), help_text="Processing status.")
    reference = QueryText(max_length=255, help_text="Exact match.")
    since = QueryDateTime(
        help_text=(
            "Events received at or after it. ISO 8601 (a date alone is midnight UTC; no "
            "offset means UTC; percent-encode `+` as `%2B`)."
        )
    )
    until = QueryDateTime(help_text="Events received before it (exclusive). Same forms.")
    limit = QueryLimit(help_text="Page size.")
    cursor = QueryCursor()


# --- POST /v1/events --------------------------------------------------------------------------
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
        success(event_public_data(result.event, signal_public_id=result.signal.public_id)),
        status=200 if result.replayed else 202,
        headers=headers,
    )


@csrf_exempt
def event_ingest_endpoint(request: HttpRequest) -> HttpResponse:
    """POST /v1/events, answered before DRF wraps the request (EventCollectionApi.as_view).

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


# --- Views ------------------------------------------------------------------------------------
def event_list_answer(request: Request) -> Response:
    query = query_parse(EventListQuery, request)
    limit, cursor = query.pop("limit"), query.pop("cursor")
    page = event_list(
        organization_id=request.user.organization_id,
        filters=EventFilters(**query),
        limit=limit,
        cursor=cursor,
    )
    return Response(
        success([event_full_data(event) for event in page.events], next_cursor=page.next_cursor)
    )


class EventCollectionApi(ApiView):
    """/v1/events: POST ingests one event, GET lists the key's organization's events.

    One view per path, two methods: POST requests reach `event_ingest_endpoint` without DRF
    (see `as_view`); `post` is DRF's entry to the same answer, and what the document describes.
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

    @extend_schema(**schema.EVENT_LIST, parameters=[EventListQuery, *schema.LIST_HEADERS])
    def get(self, request: Request) -> Response:
        return event_list_answer(request)


class EventDetailApi(ApiView):
    """GET /v1/events/<id>: one event of the key's organization, in full."""

    @extend_schema(**schema.EVENT_GET)
    def get(self, request: Request, event_id: str) -> Response:
        event = event_get(organization_id=request.user.organization_id, event_id=event_id)
        return Response(success(event_full_data(event)))

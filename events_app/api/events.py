"""/v1/events and /v1/events/<id>: send one event (POST), list events (GET), read one (GET)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

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
from events_app.api.fields import (
    Boolean,
    Choice,
    DateTime,
    FreeObject,
    Integer,
    Passed,
    PassedList,
    Text,
    Uuid,
)
from events_app.api.scopes import ScopedApiKeyAuthentication
from events_app.ingest.auth import ApiClient
from events_app.ingest.services import event_ingest
from events_app.ingest.store import STATUS_PURGED, StoredEvent
from events_app.ingest.validation import (
    IDENTITY_TYPE_RE,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_IDENTITY_ID_LENGTH,
    MAX_REFERENCE_LENGTH,
    MAX_SIGNAL_LENGTH,
    MAX_VERSION,
)
from events_app.models import Event, EventStatus
from events_app.results import event_result_data
from events_app.selectors import EventFilters, event_get, event_list

# --- Shapes -----------------------------------------------------------------------------------
_STATUSES = list(EventStatus.values)


class IdentitySerializer(serializers.Serializer):
    """The CRM record the event is about."""

    # Read off an Event or a RejectedEvent; the names are the API's.
    type = Text(
        source="identity_type",
        help_text=(
            "`account`, `contact`, `deal`, `lead` or a custom type of lowercase letters, "
            "digits and underscores."
        ),
        example="account",
        schema={"pattern": f"^{IDENTITY_TYPE_RE.pattern}$"},
    )
    id = Text(
        source="identity_id",
        help_text="The id in your CRM.",
        min_length=1,
        max_length=MAX_IDENTITY_ID_LENGTH,
        example="001ABC000000123",
    )


class EventRequestSerializer(serializers.Serializer):
    """One event. Other fields are ignored; an optional field sent as null is the same as leaving it out. The body is parsed as strict JSON whatever the Content-Type (UTF-8, no NaN, no duplicate keys, no NUL characters, nesting at most 32 levels)."""  # noqa: E501

    # The document's declaration of what events_app/ingest/validation.py checks by hand (for
    # speed); the limits are that module's.
    signal = Text(
        help_text="The signal's slug.",
        min_length=1,
        max_length=MAX_SIGNAL_LENGTH,
        example="api-calls",
    )
    version = Passed(
        required=False,
        help_text='A schema version number or `"latest"` (the default).',
        schema={
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
                {"type": "string", "enum": ["latest"]},
            ]
        },
    )
    identity = IdentitySerializer()
    data = FreeObject(
        required=False,
        allow_null=True,
        help_text="Checked against the signal's schema version; default `{}`.",
    )
    timestamp = DateTime(
        required=False,
        allow_null=True,
        help_text=(
            "When it happened, ISO 8601; no offset means UTC; at most 24 hours in the future. "
            "Default: the time of receipt."
        ),
    )
    reference = Text(
        required=False,
        allow_null=True,
        max_length=MAX_REFERENCE_LENGTH,
        help_text="Your own reference, echoed back.",
    )
    idempotency_key = Text(
        required=False,
        allow_null=True,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        help_text="Or the `Idempotency-Key` header; both given must be equal.",
    )


class EventAcceptedSerializer(serializers.Serializer):
    id = Uuid(help_text="UUID version 7.")
    signal_id = Text(help_text="The signal's public id.", example="sig_bFyqj0qg")
    schema_version = Integer(
        allow_null=True,
        help_text="The version `data` was checked against; null: no schema.",
    )
    status = Choice(
        [*_STATUSES, STATUS_PURGED],
        help_text=(
            "`pending` when new; a replay reports the stored event's current status, or "
            "`purged` when retention has deleted the event since (its key is kept longer)."
        ),
    )
    reference = Text(allow_null=True)


def event_public_data(event: Event | StoredEvent, *, signal_public_id: str) -> dict[str, Any]:
    """An accepted event, as POST /v1/events and each accepted batch item answer it: the shape
    of EventAcceptedSerializer, built by hand because it is on the ingest hot path (the
    serializer's rendering costs about four times as much CPU); a test pins the two equal."""
    return {
        "id": str(event.id),
        "signal_id": signal_public_id,
        "schema_version": event.schema_version,
        "status": event.status,
        "reference": event.reference,
    }


class EventResult(FreeObject):
    def to_representation(self, value: Any) -> Any:
        return event_result_data(value)


class LastError(Text):
    def to_representation(self, value: Any) -> Any:
        return value or None  # no error is stored as ""


class EventSerializer(serializers.Serializer):
    id = Uuid()
    signal_id = Text(source="signal.public_id")
    signal = Text(source="signal.slug", help_text="The signal's slug (as it is now).")
    schema_version = Integer(allow_null=True)
    schema_valid = Boolean(
        help_text=(
            "False: `data` failed schema version `schema_version`, and the event was accepted "
            "because its signal's enforcement was `flag`."
        )
    )
    violations = PassedList(
        child=schema.SchemaViolationSerializer(),
        allow_null=True,
        help_text="What `data` failed, as a 400 would have listed it; null when valid.",
    )
    identity = IdentitySerializer(source="*")
    data = FreeObject()
    timestamp = DateTime(help_text="When it happened, UTC.")
    received_at = DateTime(help_text="When the API stored it, UTC.")
    reference = Text(allow_null=True)
    idempotency_key = Text(allow_null=True)
    status = Choice(_STATUSES)
    attempts = Integer(min_value=0)
    last_error = LastError(allow_null=True, help_text="The error of the last failed attempt.")
    result = EventResult(
        allow_null=True,
        help_text=(
            "Null until completed: `processor` {name, version}, `signal_type`, `insight` (null "
            "or {kind, summary, score, next_action, reasons}) and `rollup` (what the event "
            "added to its record)."
        ),
    )
    processed_at = DateTime(allow_null=True)


class EventListQuery(serializers.Serializer):
    """The filters and page of GET /v1/events; the string filters are as long as the columns
    they match can be (ingest enforces the same widths)."""

    signal = QueryText(max_length=100, help_text="The signal's slug (unknown: empty list).")
    identity_type = QueryText(max_length=64, help_text="Exact match on `identity.type`.")
    identity_id = QueryText(max_length=255, help_text="Exact match on `identity.id`.")
    status = QueryChoice(list(EventStatus.values), help_text="Processing status.")
    reference = QueryText(max_length=255, help_text="Exact match.")
    schema_valid = QueryChoice(
        ["true", "false"],
        help_text=(
            "`false`: only events accepted although `data` failed its schema (a signal's `flag` "
            "enforcement); `true`: only the others."
        ),
    )
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
_AUTHENTICATION = ScopedApiKeyAuthentication()


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


# --- The document's operations ------------------------------------------------------------
_INGEST = extend_schema(
    operation_id="event_ingest",
    summary="Send one event",
    description=(
        "Validates the event against its signal's schema, stores it with its CRM record and "
        "queues it for processing. Checks run in a fixed order and the first failure answers. "
        "Spends one unit of the signal's per-minute budget."
    ),
    tags=["events"],
    request=EventRequestSerializer,
    examples=schema.request_examples(),
    parameters=[
        schema.IDEMPOTENCY_KEY,
        *schema.common_headers([200, 202, 400, 401, 404, 409, 413, 429, 503]),
        schema.response_header(
            "Location", schema.LOCATION, "The event.", codes=[200, 202], required=True
        ),
        schema.response_header(
            "Idempotent-Replayed",
            schema.string(enum=["true"]),
            "The answer is a replay of an earlier request with the same key.",
            codes=[200],
            required=True,
        ),
        *schema.rate_limit_headers(codes=[200, 202, 429], required=True),
        # Errors carry them when the request named a known signal.
        *schema.rate_limit_headers(codes=[400, 404, 409], required=False),
        schema.response_header(
            "Retry-After",
            {**schema.INT, "minimum": 1},
            "Seconds until the window resets.",
            codes=[429],
            required=True,
        ),
    ],
    responses={
        202: OpenApiResponse(
            response=EventAcceptedSerializer, description="Stored and queued for processing."
        ),
        200: OpenApiResponse(
            response=EventAcceptedSerializer,
            description=(
                "An idempotent replay: the same key and the same request as an event already "
                "stored. Nothing new is stored; `Idempotent-Replayed: true`."
            ),
        ),
        400: schema.error_response(
            schema.INGEST_400, (400, "signal is required", "signal_required")
        ),
        401: schema.unauthorized(),
        404: schema.error_response(
            schema.INGEST_404, (404, "Signal not found: no-such-signal", "signal_not_found")
        ),
        409: schema.error_response(schema.INGEST_409),
        413: schema.too_large("`BIGMIND_EVENT_MAX_BODY_BYTES`, 1 MiB by default"),
        429: schema.rate_limited(),
        503: schema.ingest_unavailable(),
        schema.URI_TOO_LONG: schema.uri_too_long(),
    },
)

_LIST = extend_schema(
    operation_id="event_list",
    summary="List events",
    description=(
        "The key's organization's events, newest first (`received_at`, then `id`), a page at "
        "a time. An empty parameter is the same as leaving it out. Pass `next_cursor` as "
        "`cursor`, with the same filters, for the next page; it is null on the last one."
    ),
    tags=["events"],
    parameters=[EventListQuery, *schema.LIST_HEADERS],
    responses={
        200: OpenApiResponse(
            response=EventSerializer(many=True), description="One page of events."
        ),
        400: schema.list_invalid(
            (400, "limit must be an integer from 1 to 100", "invalid_parameter")
        ),
        401: schema.unauthorized(),
        503: schema.unavailable(),
        schema.URI_TOO_LONG: schema.uri_too_long(),
    },
)

_GET = extend_schema(
    operation_id="event_get",
    summary="Get one event",
    description="The event in full: what was sent, when, and how far processing got.",
    tags=["events"],
    parameters=[
        schema.path_parameter(
            "event_id",
            "The event's UUID (canonical, upper case or without dashes). Anything else is a 404.",
            "01a21692-3109-7597-a3cd-e05f6e30a938",
            max_length=36,
        ),
        *schema.common_headers([200, 401, 404, 503]),
    ],
    responses={
        200: OpenApiResponse(response=EventSerializer, description="The event."),
        401: schema.unauthorized(),
        404: schema.error_response(
            "No such event in the key's organization, or not a UUID: `event_not_found`.",
            (404, "Event not found: abc", "event_not_found"),
        ),
        503: schema.unavailable(),
        schema.URI_TOO_LONG: schema.uri_too_long(),
    },
)


# --- Views ------------------------------------------------------------------------------------
_BOOLEANS = {"true": True, "false": False}


def event_list_answer(request: Request) -> Response:
    query = query_parse(EventListQuery, request)
    limit, cursor = query.pop("limit"), query.pop("cursor")
    query["schema_valid"] = _BOOLEANS.get(query["schema_valid"])
    client: ApiClient = request.user
    if query["signal"] is not None:
        client.signal_allowed_check(query["signal"])
    page = event_list(
        organization_id=client.organization_id,
        filters=EventFilters(**query),
        limit=limit,
        cursor=cursor,
        signals=client.signals,
    )
    return Response(
        success(EventSerializer(page.events, many=True).data, next_cursor=page.next_cursor)
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

    @_INGEST
    def post(self, request: Request) -> HttpResponse:
        return event_ingest_answer(request, request.user)

    @_LIST
    def get(self, request: Request) -> Response:
        return event_list_answer(request)


class EventDetailApi(ApiView):
    """GET /v1/events/<id>: one event of the key's organization, in full."""

    @_GET
    def get(self, request: Request, event_id: str) -> Response:
        event = event_get(
            organization_id=request.user.organization_id,
            event_id=event_id,
            signals=request.user.signals,
        )
        return Response(success(EventSerializer(event).data))

"""/v1/webhook-endpoints and /v1/webhook-deliveries: the key's organization's webhook endpoints
(create, list, read, change, delete, rotate the secret, send a test `ping`) and their deliveries
(list, retry). The rules are the services' (events_app/webhooks/); docs/webhooks.md is the prose."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.errors import Forbidden, NotFound
from bigmind.replicas import read_from_replica
from bigmind.strict_json import InvalidJson, json_body_parse
from events_app.api import schema
from events_app.api.common import (
    ApiView,
    QueryChoice,
    QueryCursor,
    QueryLimit,
    query_parse,
    request_body_read,
    success,
)
from events_app.api.fields import Boolean, Choice, Const, DateTime, Integer, PassedList, Text, Uuid
from events_app.ingest.auth import ApiClient
from events_app.models import (
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEventType,
)
from events_app.selectors import (
    WebhookDeliveryFilters,
    webhook_delivery_get,
    webhook_delivery_list,
    webhook_endpoint_get,
    webhook_endpoint_list,
    webhook_signal_slugs,
)
from events_app.webhooks.addresses import MAX_URL_LENGTH
from events_app.webhooks.endpoints import (
    MAX_SIGNALS,
    SUBSCRIBABLE,
    InvalidEndpoint,
    endpoint_create,
    endpoint_delete,
    endpoint_rotate_secret,
    endpoint_update,
)
from events_app.webhooks.sending import delivery_retry, ping_create
from signals_app.selectors import organization_get

# An endpoint's fields fit in a few KiB; the limit only keeps a huge body from being read.
MAX_BODY_BYTES = 64 * 1024
_FIELDS = ("url", "events", "signals", "description", "enabled")
_ENDPOINT_ID_EXAMPLE = "we_4Xb9TqL2mZ7a"
_DELIVERY_ID_EXAMPLE = "whevt_0193a1c2d3e47f5a8b9c0d1e2f3a4b5c"


# --- Shapes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EndpointAnswer:
    """What the API says of an endpoint: the endpoint, its signal filter by slug and, in the
    answers that create or rotate it only, the secret."""

    endpoint: WebhookEndpoint
    signals: list[str]
    secret: str = ""


def _answers(endpoints: list[WebhookEndpoint]) -> list[EndpointAnswer]:
    slugs = webhook_signal_slugs(endpoints)
    return [EndpointAnswer(endpoint, slugs[endpoint.pk]) for endpoint in endpoints]


def _answer(endpoint: WebhookEndpoint, secret: str = "") -> EndpointAnswer:
    return EndpointAnswer(endpoint, webhook_signal_slugs([endpoint])[endpoint.pk], secret)


class EmptyAsNull(Text):
    def to_representation(self, value: Any) -> Any:
        return value or None  # "none" is stored as ""


_EVENTS_HELP = (
    f'The webhook event types it wants ({", ".join(SUBSCRIBABLE)}), or `["*"]` for all. '
    "`ping` is sent by the test call only."
)
_SIGNALS_HELP = (
    f"Slugs of the organization's signals to deliver for (at most {MAX_SIGNALS}); empty for all."
)


class WebhookEndpointSerializer(serializers.Serializer):
    """A webhook endpoint. Its signing secret is never shown here: only in the answers that create the endpoint or rotate its secret."""  # noqa: E501

    id = Text(source="endpoint.public_id", example=_ENDPOINT_ID_EXAMPLE)
    url = Text(source="endpoint.url", example="https://example.com/hooks/bigmind")
    description = Text(source="endpoint.description")
    events = PassedList(source="endpoint.event_types", child=Text(), help_text=_EVENTS_HELP)
    signals = PassedList(child=Text(), help_text=_SIGNALS_HELP)
    enabled = Boolean(source="endpoint.enabled")
    disabled_reason = EmptyAsNull(
        source="endpoint.disabled_reason",
        allow_null=True,
        help_text="Why it was disabled for failing; null otherwise.",
    )
    failing_since = DateTime(
        source="endpoint.failing_since",
        allow_null=True,
        help_text="The first failure of the current run of failed deliveries; null when none.",
    )
    created_at = DateTime(source="endpoint.created_at")
    updated_at = DateTime(source="endpoint.updated_at")


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    """A webhook endpoint with its signing secret, shown this once."""

    secret = Text(
        help_text="The signing secret (`whsec_` + 32 base62 characters). Shown only here.",
        example="whsec_0123456789abcdefghijABCDEFGHIJkl",
        schema={"pattern": "^whsec_[0-9A-Za-z]{32}$"},
    )


class WebhookEndpointDeletedSerializer(serializers.Serializer):
    id = Text(example=_ENDPOINT_ID_EXAMPLE)
    deleted = Const(True)


class WebhookEndpointRequestSerializer(serializers.Serializer):
    """A webhook endpoint to create. Other fields are refused; the body is strict JSON (as on ingest)."""  # noqa: E501

    url = Text(
        max_length=MAX_URL_LENGTH,
        help_text=(
            "`https://` to a public address; no user name, password or fragment. Checked now, "
            "on every address the host resolves to, and again at each delivery."
        ),
        example="https://example.com/hooks/bigmind",
    )
    events = PassedList(child=Text(), min_length=1, help_text=_EVENTS_HELP)
    signals = PassedList(child=Text(), required=False, help_text=_SIGNALS_HELP)
    description = Text(required=False, allow_null=True, max_length=500, allow_blank=True)
    enabled = Boolean(required=False, help_text="True unless given.")


class WebhookEndpointUpdateSerializer(serializers.Serializer):
    """The fields to change; the others are left as they are. Enabling an endpoint disabled for failing clears `disabled_reason` and `failing_since`."""  # noqa: E501

    url = Text(required=False, max_length=MAX_URL_LENGTH)
    events = PassedList(child=Text(), required=False, min_length=1, help_text=_EVENTS_HELP)
    signals = PassedList(child=Text(), required=False, help_text=_SIGNALS_HELP)
    description = Text(required=False, allow_null=True, max_length=500, allow_blank=True)
    enabled = Boolean(required=False)


class WebhookDeliverySerializer(serializers.Serializer):
    """One webhook event for one endpoint, and how sending it went."""

    id = Text(
        source="webhook_event_id",
        help_text="The webhook event id: the body's `id` and `Bigmind-Webhook-Id`, on every try.",
        example=_DELIVERY_ID_EXAMPLE,
    )
    type = Choice(list(WebhookEventType.values))
    status = Choice(list(WebhookDeliveryStatus.values))
    attempts = Integer(min_value=0)
    last_status_code = Integer(
        allow_null=True, help_text="The HTTP status of the last attempt; null without one."
    )
    last_attempt_at = DateTime(allow_null=True)
    next_attempt_at = DateTime(allow_null=True, help_text="Null once it succeeded or failed.")
    created_at = DateTime()
    completed_at = DateTime(allow_null=True)
    event_id = Uuid(allow_null=True, help_text="The event it is about; null for `ping`.")
    last_error = EmptyAsNull(allow_null=True, help_text="Why the last attempt failed.")


class WebhookEndpointListQuery(serializers.Serializer):
    """The page of GET /v1/webhook-endpoints."""

    limit = QueryLimit(help_text="Page size.")
    cursor = QueryCursor()


class WebhookDeliveryListQuery(serializers.Serializer):
    """The filters and page of GET /v1/webhook-endpoints/<id>/deliveries."""

    status = QueryChoice(list(WebhookDeliveryStatus.values), help_text="Only this status.")
    type = QueryChoice(list(WebhookEventType.values), help_text="Only this type.")
    limit = QueryLimit(help_text="Page size.")
    cursor = QueryCursor()


# --- The request body -------------------------------------------------------------------------
def _fields(request: Request) -> dict[str, Any]:
    """The body as strict JSON: an object of the endpoint's fields and no other."""
    body = json_body_parse(request_body_read(request, limit=MAX_BODY_BYTES))
    if not isinstance(body, dict):
        raise InvalidJson("Request body must be a JSON object")
    unknown = sorted(name for name in body if name not in _FIELDS)
    if unknown:
        raise InvalidEndpoint(
            f"Unknown fields: {', '.join(name[:100] for name in unknown[:10])}",
            details=[{"field": name[:100], "message": "unknown field"} for name in unknown[:10]],
        )
    return body


def _subscription_check(client: ApiClient, signals: Any) -> None:
    """A key with a signal allow-list subscribes endpoints to allowed signals only: naming
    them, since an empty filter means every signal. Anything not a list of strings is left to
    the endpoint's own checks (400)."""
    if client.signals is None:
        return
    if signals is None or signals == []:
        raise Forbidden(
            "This API key has a signal allow-list: an endpoint it makes must name its signals "
            "in `signals` (an empty filter means every signal)",
            code="signal_not_allowed",
        )
    if isinstance(signals, list):
        for slug in signals:
            if isinstance(slug, str):
                client.signal_allowed_check(slug)


# --- The document -----------------------------------------------------------------------------
_ID = schema.path_parameter(
    "endpoint_id",
    "The endpoint's id (`we_` + 12 base62 characters). Anything else is a 404.",
    _ENDPOINT_ID_EXAMPLE,
    max_length=15,
)
_DELIVERY_ID = schema.path_parameter(
    "delivery_id",
    "The delivery's webhook event id (`whevt_` + 32 hex digits). Anything else is a 404.",
    _DELIVERY_ID_EXAMPLE,
    max_length=38,
)
_ENDPOINT_404 = schema.error_response(
    "No endpoint with that id in the key's organization: `webhook_endpoint_not_found`.",
    (404, "Webhook endpoint not found: we_4Xb9TqL2mZ7a", "webhook_endpoint_not_found"),
)
_BODY_400 = schema.error_response(
    "The body is not strict JSON or not an object (`invalid_json`), ended early "
    "(`body_incomplete`), or a field is wrong or unknown (`invalid_webhook_endpoint`, with "
    "`details` naming each field): a URL that is not `https://` to a public address, an "
    "unknown event type, a signal the organization does not have...",
    (400, "url: The URL must start with https://", "invalid_webhook_endpoint"),
)
_TOO_LARGE = schema.too_large("64 KiB")
_COMMON = {
    401: schema.unauthorized(),
    503: schema.unavailable(),
    schema.URI_TOO_LONG: schema.uri_too_long(),
}
_TAGS = ["webhooks"]


# --- Views ------------------------------------------------------------------------------------
class WebhookEndpointCollectionApi(ApiView):
    """/v1/webhook-endpoints: GET lists the organization's endpoints, POST creates one."""

    @extend_schema(
        operation_id="webhook_endpoint_list",
        summary="List webhook endpoints",
        description=(
            "The key's organization's webhook endpoints, newest first, a page at a time (like "
            "`GET /v1/events`). Secrets are never listed."
        ),
        tags=_TAGS,
        parameters=[WebhookEndpointListQuery, *schema.LIST_HEADERS],
        responses={
            200: OpenApiResponse(
                response=WebhookEndpointSerializer(many=True), description="One page."
            ),
            400: schema.list_invalid(
                (400, "limit must be an integer from 1 to 100", "invalid_parameter")
            ),
            **_COMMON,
        },
    )
    def get(self, request: Request) -> Response:
        query = query_parse(WebhookEndpointListQuery, request)
        page = webhook_endpoint_list(
            organization_id=request.user.organization_id,
            limit=query["limit"],
            cursor=query["cursor"],
            signals=request.user.signals,
        )
        data = WebhookEndpointSerializer(_answers(page.endpoints), many=True).data
        return Response(success(data, next_cursor=page.next_cursor))

    @extend_schema(
        operation_id="webhook_endpoint_create",
        summary="Create a webhook endpoint",
        description=(
            "A new endpoint, with its signing secret: shown in this answer only (and in a "
            "rotation's)."
        ),
        tags=_TAGS,
        request=WebhookEndpointRequestSerializer,
        # A literal public address: an example that needs no DNS (and `make api-fuzz` runs no
        # worker, so nothing is ever sent to it from there).
        examples=[
            OpenApiExample(
                "all events",
                value={"url": "https://93.184.215.14/hooks", "events": ["*"]},
                request_only=True,
            )
        ],
        parameters=schema.common_headers([201, 400, 401, 413, 503]),
        responses={
            201: OpenApiResponse(
                response=WebhookEndpointWithSecretSerializer,
                description="The endpoint, and its secret.",
            ),
            400: _BODY_400,
            413: _TOO_LARGE,
            **_COMMON,
        },
    )
    def post(self, request: Request) -> Response:
        fields = _fields(request)
        _subscription_check(request.user, fields.get("signals"))
        created = endpoint_create(
            organization=organization_get(organization_id=request.user.organization_id),
            url=fields.get("url"),
            events=fields.get("events"),
            signals=fields.get("signals"),
            description=fields.get("description"),
            enabled=fields.get("enabled", True),
        )
        data = WebhookEndpointWithSecretSerializer(_answer(created.endpoint, created.secret)).data
        return Response(success(data), status=201)


class WebhookEndpointDetailApi(ApiView):
    """/v1/webhook-endpoints/<id>: read, change or delete one endpoint."""

    @extend_schema(
        operation_id="webhook_endpoint_get",
        summary="Get a webhook endpoint",
        description="One endpoint, without its secret.",
        tags=_TAGS,
        parameters=[_ID, *schema.common_headers([200, 401, 404, 503])],
        responses={
            200: OpenApiResponse(response=WebhookEndpointSerializer, description="The endpoint."),
            404: _ENDPOINT_404,
            **_COMMON,
        },
    )
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        return Response(success(WebhookEndpointSerializer(_answer(endpoint)).data))

    @extend_schema(
        operation_id="webhook_endpoint_update",
        summary="Change a webhook endpoint",
        description="Changes the fields sent; the others stay as they are.",
        tags=_TAGS,
        request=WebhookEndpointUpdateSerializer,
        parameters=[_ID, *schema.common_headers([200, 400, 401, 404, 413, 503])],
        responses={
            200: OpenApiResponse(response=WebhookEndpointSerializer, description="The endpoint."),
            400: _BODY_400,
            404: _ENDPOINT_404,
            413: _TOO_LARGE,
            **_COMMON,
        },
    )
    def patch(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        fields = _fields(request)
        if "signals" in fields:
            _subscription_check(request.user, fields["signals"])
        endpoint = endpoint_update(endpoint, **fields)
        return Response(success(WebhookEndpointSerializer(_answer(endpoint)).data))

    @extend_schema(
        operation_id="webhook_endpoint_delete",
        summary="Delete a webhook endpoint",
        description=(
            "Deletes the endpoint and its deliveries; nothing more is sent to it. Answered in "
            "the envelope, like every answer of the API."
        ),
        tags=_TAGS,
        parameters=[_ID, *schema.common_headers([200, 401, 404, 503])],
        responses={
            200: OpenApiResponse(
                response=WebhookEndpointDeletedSerializer, description="It is gone."
            ),
            404: _ENDPOINT_404,
            **_COMMON,
        },
    )
    def delete(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        endpoint_delete(endpoint)
        return Response(success({"id": endpoint_id, "deleted": True}))


class WebhookEndpointRotateSecretApi(ApiView):
    """POST /v1/webhook-endpoints/<id>/rotate-secret: a new secret, shown this once."""

    @extend_schema(
        operation_id="webhook_endpoint_rotate_secret",
        summary="Rotate a webhook endpoint's secret",
        description=(
            "A new signing secret, shown in this answer only. The one it replaces keeps "
            "signing beside it for 24 hours, so receivers can switch without missing a delivery."
        ),
        tags=_TAGS,
        request=None,
        parameters=[_ID, *schema.common_headers([200, 401, 404, 503])],
        responses={
            200: OpenApiResponse(
                response=WebhookEndpointWithSecretSerializer,
                description="The endpoint, and its new secret.",
            ),
            404: _ENDPOINT_404,
            **_COMMON,
        },
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        rotated = endpoint_rotate_secret(endpoint)
        data = WebhookEndpointWithSecretSerializer(_answer(rotated.endpoint, rotated.secret)).data
        return Response(success(data))


class WebhookEndpointTestApi(ApiView):
    """POST /v1/webhook-endpoints/<id>/test: a `ping` delivery, sent like any other."""

    @extend_schema(
        operation_id="webhook_endpoint_test",
        summary="Send a test ping",
        description=(
            "Writes a `ping` delivery to the endpoint and queues it; it is sent, signed and "
            "retried like any other. A disabled endpoint is sent nothing: enable it first."
        ),
        tags=_TAGS,
        request=None,
        parameters=[_ID, *schema.common_headers([202, 401, 404, 409, 503])],
        responses={
            202: OpenApiResponse(
                response=WebhookDeliverySerializer, description="The ping, queued."
            ),
            404: _ENDPOINT_404,
            409: schema.error_response(
                "The endpoint is disabled: `webhook_endpoint_disabled`.",
                (
                    409,
                    "This webhook endpoint is disabled; enable it before sending it a test event",
                    "webhook_endpoint_disabled",
                ),
            ),
            **_COMMON,
        },
    )
    def post(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        delivery = ping_create(endpoint=endpoint)
        return Response(success(WebhookDeliverySerializer(delivery).data), status=202)


class WebhookDeliveryListApi(ApiView):
    """GET /v1/webhook-endpoints/<id>/deliveries: the endpoint's deliveries, newest first."""

    @extend_schema(
        operation_id="webhook_delivery_list",
        summary="List an endpoint's deliveries",
        description=(
            "The endpoint's deliveries, newest first (`created_at`, then id), a page at a time "
            "(like `GET /v1/events`), with how sending each went."
        ),
        tags=_TAGS,
        parameters=[
            _ID,
            WebhookDeliveryListQuery,
            *schema.common_headers([200, 400, 401, 404, 503]),
        ],
        responses={
            200: OpenApiResponse(
                response=WebhookDeliverySerializer(many=True), description="One page."
            ),
            400: schema.list_invalid(
                (400, "status must be one of pending, succeeded, failed", "invalid_parameter")
            ),
            404: _ENDPOINT_404,
            **_COMMON,
        },
    )
    # The endpoint may be one the client has just made (a 404 on the replica is tried on the
    # primary); its endpoints' own pages read from the primary, since the client writes them.
    @read_from_replica(primary_on=(NotFound,))
    def get(self, request: Request, endpoint_id: str) -> Response:
        endpoint = webhook_endpoint_get(
            organization_id=request.user.organization_id,
            endpoint_id=endpoint_id,
            signals=request.user.signals,
        )
        query = query_parse(WebhookDeliveryListQuery, request)
        page = webhook_delivery_list(
            endpoint=endpoint,
            filters=WebhookDeliveryFilters(status=query["status"], type=query["type"]),
            limit=query["limit"],
            cursor=query["cursor"],
            signals=request.user.signals,
        )
        data = WebhookDeliverySerializer(page.deliveries, many=True).data
        return Response(success(data, next_cursor=page.next_cursor))


class WebhookDeliveryRetryApi(ApiView):
    """POST /v1/webhook-deliveries/<id>/retry: send a delivery again now."""

    @extend_schema(
        operation_id="webhook_delivery_retry",
        summary="Retry a delivery",
        description=(
            "Sends the delivery again now, whatever its status, with the same id and body: a "
            "failed one gets another attempt, a succeeded one is sent again for a receiver that "
            "lost it. It is `pending` until that attempt's outcome."
        ),
        tags=_TAGS,
        request=None,
        parameters=[_DELIVERY_ID, *schema.common_headers([202, 401, 404, 503])],
        responses={
            202: OpenApiResponse(
                response=WebhookDeliverySerializer, description="The delivery, queued."
            ),
            404: schema.error_response(
                "No delivery with that id in the key's organization: `webhook_delivery_not_found`.",
                (
                    404,
                    f"Webhook delivery not found: {_DELIVERY_ID_EXAMPLE}",
                    "webhook_delivery_not_found",
                ),
            ),
            **_COMMON,
        },
    )
    def post(self, request: Request, delivery_id: str) -> Response:
        delivery: WebhookDelivery = webhook_delivery_get(
            organization_id=request.user.organization_id,
            delivery_id=delivery_id,
            signals=request.user.signals,
        )
        delivery = delivery_retry(delivery=delivery)
        return Response(success(WebhookDeliverySerializer(delivery).data), status=202)

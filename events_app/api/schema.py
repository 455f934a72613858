"""What the OpenAPI document of /v1 (drf-spectacular) shares around the resources' shapes.

Each resource module declares its shapes once, as serializers that both render its answers and
write `#/components/schemas`, and its operations with `@extend_schema` next to its views. This
module holds what they share: the error envelope's declaration, the error answers, the headers
(X-Request-ID, rate limits, Retry-After...), path parameters, request examples, the security
scheme, the OpenAPI links, and the postprocessing hook that puts each 2xx shape in the success
envelope.

What the document says is checked against the running app by `make api-fuzz` (schemathesis);
docs/api.md is the prose version of the same contract.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
)
from rest_framework import serializers

from events_app.api.fields import (
    DATE_TIME_EXAMPLE,
    Choice,
    Const,
    DateTime,
    Integer,
    PassedList,
    Text,
)
from events_app.api.scopes import openapi_forbidden_add
from events_app.ingest.auth import ApiKeyAuthentication

Schema = dict[str, Any]

DEMO_KEY_HINT = "sk_demo_local_only_not_for_production_000000"


def string(description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


DATE_TIME = string(format="date-time", example=DATE_TIME_EXAMPLE)


# --- Shapes -----------------------------------------------------------------------------------
# --- The error envelope ----------------------------------------------------------------------
# bigmind.errors renders it (the kernel, for every /v1 answer and Django's own 404 and 500);
# these serializers are its declaration for the document.
class SchemaViolationSerializer(serializers.Serializer):
    """One way `data` fails its JSON Schema."""

    path = Text(
        help_text="JSON path of the offending value; `$` is `data` itself.",
        example="$.duration_seconds",
    )
    message = Text(example="-5 is less than the minimum of 0")
    keyword = Text(help_text="The JSON Schema keyword that failed.", example="minimum")


class RateLimitExceededSerializer(serializers.Serializer):
    """Which budget refused a 429 and when it refills; the same values as the `X-RateLimit-Limit`, `X-RateLimit-Reset` and `Retry-After` headers."""  # noqa: E501

    signal = Text(help_text="The signal's slug.", example="visited-documentation-page")
    limit = Integer(min_value=1, help_text="Requests per window.", example=100)
    window_seconds = Choice([60], help_text="The window's length.")
    reset_at = DateTime(
        help_text="UTC time the window resets (as `X-RateLimit-Reset`).",
        example="2026-12-04T16:01:00Z",
    )
    retry_after = Integer(
        min_value=1, help_text="Seconds until then (as `Retry-After`).", example=12
    )


class FieldProblemSerializer(serializers.Serializer):
    """A field of the request body that is wrong (a webhook endpoint's, for instance)."""

    field = Text(help_text="The field's name.", example="url")
    message = Text(example="The URL must start with https://")


class ErrorDetailsField(PassedList):
    """`details` of an error: a list of violations, or the one budget that refused."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            child=PolymorphicProxySerializer(
                component_name="ErrorDetail",
                serializers=[
                    SchemaViolationSerializer,
                    RateLimitExceededSerializer,
                    FieldProblemSerializer,
                ],
                resource_type_field_name=None,
            ),
            help_text=(
                "Each violation of a `schema_validation_failed`; the budget that refused a "
                "`rate_limited` (one item); each wrong field of an `invalid_webhook_endpoint`."
            ),
            **kwargs,
        )


class ErrorSerializer(serializers.Serializer):
    """The error envelope of every non-2xx answer. `error` is for people, `code` (a stable word) for programs; `details` is there when there is a list to give."""  # noqa: E501

    success = Const(False)
    error = Text(help_text="What went wrong, in a sentence.", example="signal is required")
    code = Text(help_text="A stable machine-readable word.", example="signal_required")
    details = ErrorDetailsField(required=False)


def envelope(data: Schema, *, success: bool = True, **extra: Schema) -> Schema:
    """The success envelope around `data` (plus any extra top-level properties)."""
    return {
        "type": "object",
        "required": ["success", "data", *extra],
        "properties": {"success": {"type": "boolean", "enum": [success]}, "data": data, **extra},
    }


# --- Headers ----------------------------------------------------------------------------------
INT: Schema = {"type": "integer"}
_REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"


def response_header(
    name: str, schema: Schema, description: str, *, codes: list[int] | bool, required: bool
) -> OpenApiParameter:
    return OpenApiParameter(
        name=name,
        type=schema,
        location=OpenApiParameter.HEADER,
        description=description,
        response=codes,
        required=required,
    )


def rate_limit_headers(*, codes: list[int], required: bool) -> list[OpenApiParameter]:
    return [
        response_header(
            "X-RateLimit-Limit",
            {**INT, "minimum": 1},
            "The signal's budget per minute.",
            codes=codes,
            required=required,
        ),
        response_header(
            "X-RateLimit-Remaining",
            {**INT, "minimum": 0},
            "Requests left in this window.",
            codes=codes,
            required=required,
        ),
        response_header(
            "X-RateLimit-Reset",
            DATE_TIME,
            "ISO 8601 UTC time the window resets.",
            codes=codes,
            required=required,
        ),
    ]


def common_headers(codes: list[int]) -> list[OpenApiParameter]:
    """Headers of every operation: X-Request-ID both ways, WWW-Authenticate on 401 and
    Retry-After on 503. `codes`: every status the operation answers itself."""
    return [
        OpenApiParameter(
            name="X-Request-ID",
            type=string(pattern=_REQUEST_ID_PATTERN),
            location=OpenApiParameter.HEADER,
            required=False,
            description="Your id for this request, echoed back; otherwise the API makes one.",
        ),
        response_header(
            "X-Request-ID",
            string(pattern=_REQUEST_ID_PATTERN),
            "The client's X-Request-ID when it was sane, otherwise a new id.",
            codes=[*codes, URI_TOO_LONG],
            required=True,
        ),
        response_header(
            "WWW-Authenticate",
            string(enum=["Bearer"]),
            "The authentication scheme to use.",
            codes=[401],
            required=True,
        ),
        response_header(
            "Retry-After",
            {**INT, "minimum": 0},
            "Seconds to wait before retrying.",
            codes=[503],
            required=False,
        ),
    ]


IDEMPOTENCY_KEY = OpenApiParameter(
    name="Idempotency-Key",
    type=string(minLength=1, maxLength=255, pattern=r"^[!-~\u0080-\uffff][ -~\u0080-\uffff]*$"),
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Makes a retry safe: the same key with the same request answers 200 with the original "
        "event (`Idempotent-Replayed: true`); with a different request, 409. Or send the "
        "`idempotency_key` field."
    ),
)
LOCATION = string("`/v1/events/<id>`: where the event can be read.", example="/v1/events/01a2")


# --- Responses --------------------------------------------------------------------------------
def list_invalid(*examples: tuple[int, str, str]) -> OpenApiResponse:
    return error_response(
        "A parameter is wrong (`invalid_parameter`) or the cursor is not one this API handed "
        "out to this organization for this list (`invalid_cursor`).",
        *examples,
    )


def error_response(description: str, *examples: tuple[int, str, str]) -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorSerializer,
        description=description,
        examples=[
            OpenApiExample(
                code,
                value={"success": False, "error": message, "code": code},
                status_codes=[status],
                response_only=True,
            )
            for status, message, code in examples
        ],
    )


def rate_limited() -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorSerializer,
        description=(
            "The signal's budget for this minute is spent (`rate_limited`), with `Retry-After`; "
            "`details` names the signal, its limit, the window and when it resets."
        ),
        examples=[
            OpenApiExample(
                "rate_limited",
                value={
                    "success": False,
                    "error": "Rate limit exceeded",
                    "code": "rate_limited",
                    "details": [
                        {
                            "signal": "visited-documentation-page",
                            "limit": 100,
                            "window_seconds": 60,
                            "reset_at": "2026-12-04T16:01:00Z",
                            "retry_after": 12,
                        }
                    ],
                },
                status_codes=[429],
                response_only=True,
            )
        ],
    )


def unauthorized() -> OpenApiResponse:
    return OpenApiResponse(
        response=ErrorSerializer,
        description=(
            "Missing, malformed, unknown, revoked or expired API key (`missing_api_key`, "
            "`invalid_api_key`, `revoked_api_key`, `expired_api_key`), with "
            "`WWW-Authenticate: Bearer`."
        ),
    )


# gunicorn refuses a request line over `limit_request_line` (8190 bytes in bigmind/gunicorn_conf.py)
# itself, before the app sees it; bigmind.gunicorn_worker answers it in the envelope, with an
# X-Request-ID of its own. The documented maximum lengths of the parameters, percent-encoded,
# can add up to more than that.
URI_TOO_LONG = 414


def uri_too_long() -> OpenApiResponse:
    return error_response(
        "The URL is longer than the web server accepts (gunicorn's `limit_request_line`, 8190 "
        "bytes in the shipped configuration): answered by the server before the app, in the "
        "envelope (`uri_too_long`). A proxy in front may answer it first, with its own page "
        '(docs/api.md, "Answers outside the envelope").',
        (414, "URI Too Long: Request Line is too large (9022 > 8190)", "uri_too_long"),
    )


def unavailable() -> OpenApiResponse:
    return error_response(
        "A backing service (the database) is down: `service_unavailable`, with `Retry-After`."
    )


def ingest_unavailable() -> OpenApiResponse:
    return error_response(
        "Nothing was stored, retry after `Retry-After` seconds (with the same idempotency key). "
        "Either too many events are waiting to be processed (`overloaded`: backpressure, "
        "`BIGMIND_BACKPRESSURE_MAX_PENDING`, off by default; checked before anything else, so "
        "a batch is refused whole and an idempotent replay is refused too) or a backing "
        "service (the database) is down (`service_unavailable`).",
        (
            503,
            "Service overloaded: too many events are waiting to be processed; retry later",
            "overloaded",
        ),
        (
            503,
            "Service temporarily unavailable: the database cannot be reached",
            "service_unavailable",
        ),
    )


def too_large(limit: str) -> OpenApiResponse:
    return error_response(
        f"The body is over the size limit ({limit}); it is not read: `body_too_large`.",
    )


INGEST_400 = (
    "The body or a field is wrong: `invalid_json`, `signal_required`, `identity_required`, "
    "`invalid_field`, or `schema_validation_failed` with `details` listing each violation; "
    "or the body ended before its `Content-Length` or last chunk (`body_incomplete`)."
)
INGEST_404 = (
    "No active signal with that slug in the key's organization (`signal_not_found`), or no "
    "such schema version (`schema_version_not_found`)."
)
INGEST_409 = "The idempotency key was used before for a different request (`idempotency_conflict`)."

EVENT_EXAMPLE = {
    "signal": "visited-documentation-page",
    "version": "latest",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"page": "/docs/quickstart", "duration_seconds": 120},
    "timestamp": "2026-03-16T12:00:00Z",
    "reference": "evt-001",
}
STATE_EXAMPLE = {
    "signal": "health-state",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"state": "green"},
}
METRIC_EXAMPLE = {
    "signal": "api-calls",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"value": 3},
    "reference": "evt-002",
}


def request_examples() -> list[OpenApiExample]:
    return [
        OpenApiExample("page visit", value=EVENT_EXAMPLE, request_only=True),
        OpenApiExample("metric", value=METRIC_EXAMPLE, request_only=True),
        OpenApiExample("state", value=STATE_EXAMPLE, request_only=True),
    ]


# --- Per endpoint -----------------------------------------------------------------------------


def path_parameter(
    name: str, description: str, *examples: str, max_length: int
) -> OpenApiParameter:
    return OpenApiParameter(
        name=name,
        type=string(minLength=1, maxLength=max_length),
        location=OpenApiParameter.PATH,
        description=description,
        examples=[OpenApiExample(value, value=value) for value in examples],
    )


# The headers of the paged lists; their query parameters are the views' query serializers.
LIST_HEADERS = common_headers([200, 400, 401, 503])


# --- Rejections -------------------------------------------------------------------------------


# --- Authentication and finishing touches -----------------------------------------------------
class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer sk_...` as the document's one security scheme."""

    target_class = ApiKeyAuthentication
    match_subclasses = True  # ScopedApiKeyAuthentication, the views' class
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> Schema:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk_...",
            "description": (
                "An API key of your organization: `Authorization: Bearer sk_...`. With `make "
                f"run`, the demo key is `{DEMO_KEY_HINT}`."
            ),
        }


_EVENT_LINKS: Schema = {
    "GetEvent": {
        "operationId": "event_get",
        "parameters": {"event_id": "$response.body#/data/id"},
        "description": "The event just stored (or replayed).",
    },
    "GetRecord": {
        "operationId": "crm_record_get",
        "parameters": {
            "record_type": "$request.body#/identity/type",
            "record_id": "$request.body#/identity/id",
        },
        "description": "The CRM record the event is about.",
    },
    "GetSignal": {
        "operationId": "signal_get",
        "parameters": {"slug": "$request.body#/signal"},
        "description": "The event's signal.",
    },
}
_WEBHOOK_ENDPOINT_LINKS: Schema = {
    name: {
        "operationId": operation,
        "parameters": {"endpoint_id": "$response.body#/data/id"},
        "description": description,
    }
    for name, operation, description in (
        ("GetWebhookEndpoint", "webhook_endpoint_get", "The endpoint just made."),
        ("UpdateWebhookEndpoint", "webhook_endpoint_update", "Change it."),
        ("DeleteWebhookEndpoint", "webhook_endpoint_delete", "Delete it."),
        ("RotateWebhookSecret", "webhook_endpoint_rotate_secret", "Rotate its secret."),
        ("TestWebhookEndpoint", "webhook_endpoint_test", "Send it a ping."),
        ("ListWebhookDeliveries", "webhook_delivery_list", "Its deliveries."),
    )
}
# OpenAPI links (operationId -> status -> links): what a client, or schemathesis's stateful
# phase, can read next with the values of an answer.
LINKS: dict[str, dict[str, Schema]] = {
    "event_ingest": {"202": _EVENT_LINKS, "200": _EVENT_LINKS},
    "signal_list": {
        "200": {
            "GetFirstSignal": {
                "operationId": "signal_get",
                "parameters": {"slug": "$response.body#/data/0/slug"},
            },
            "GetFirstSignalLatestSchema": {
                "operationId": "schema_version_get",
                "parameters": {"slug": "$response.body#/data/0/slug", "version": "latest"},
            },
        }
    },
    "webhook_endpoint_create": {"201": _WEBHOOK_ENDPOINT_LINKS},
    "webhook_endpoint_list": {
        "200": {
            name.replace("Webhook", "FirstWebhook", 1): {
                **link,
                "parameters": {"endpoint_id": "$response.body#/data/0/id"},
            }
            for name, link in _WEBHOOK_ENDPOINT_LINKS.items()
        }
    },
    "webhook_endpoint_test": {
        "202": {
            "RetryPing": {
                "operationId": "webhook_delivery_retry",
                "parameters": {"delivery_id": "$response.body#/data/id"},
                "description": "Send the ping again.",
            }
        }
    },
    "signal_get": {
        "200": {
            "GetLatestSchema": {
                "operationId": "schema_version_get",
                "parameters": {"slug": "$response.body#/data/slug", "version": "latest"},
            }
        }
    },
}


def _shared_header(headers: Schema, name: str, header: Schema) -> Schema:
    """A `$ref` to `header` in `components/headers`, registered under a name of its own."""
    base = name if header.get("required") else f"{name}.optional"
    key, n = base, 1
    while key in headers and headers[key] != header:
        n += 1
        key = f"{base}.{n}"
    headers[key] = header
    return {"$ref": f"#/components/headers/{key}"}


def postprocess(result: Schema, generator: Any, request: Any, public: bool) -> Schema:
    """drf-spectacular hook: add the shapes and links above, share the response headers
    (X-Request-ID alone is on every answer) and mark every request body required."""
    components = result.setdefault("components", {})
    shared_headers = components.setdefault("headers", {})
    for path, path_item in result.get("paths", {}).items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict):
                continue
            openapi_forbidden_add(path, method, operation)
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            paged = any(
                parameter.get("in") == "query" and parameter.get("name") == "cursor"
                for parameter in operation.get("parameters", [])
            )
            for status, response in operation.get("responses", {}).items():
                if status.startswith("2"):
                    _envelope_wrap(response, success=status != "207", paged=paged)
                headers = response.get("headers", {})
                for name, header in headers.items():
                    headers[name] = _shared_header(shared_headers, name, header)
            for status, links in LINKS.get(operation.get("operationId", ""), {}).items():
                operation["responses"][status]["links"] = links
    _drop_enum_ids(result)
    _inline_nullable_refs(result, components["schemas"])
    return result


_NEXT_CURSOR: Schema = {"type": "string", "nullable": True, "description": "Null on the last page."}


def _envelope_wrap(response: Schema, *, success: bool, paged: bool) -> None:
    """A 2xx answer's declared shape is its `data`; the document shows it in the envelope, as
    the views answer it. 207 (some batch items refused) says `success: false`; a list that
    takes a `cursor` adds `next_cursor`."""
    for media in response.get("content", {}).values():
        data = media["schema"]
        if data.get("type") == "object" and "success" in data.get("properties", {}):
            continue  # declared with its envelope already
        extra = {"next_cursor": _NEXT_CURSOR} if paged else {}
        media["schema"] = envelope(data, success=success, **extra)


def _inline_nullable_refs(node: Any, schemas: dict[str, Schema]) -> None:
    """OpenAPI 3.0 ignores `nullable` beside a `$ref` (drf-spectacular writes a nullable nested
    serializer as `allOf: [$ref]` + `nullable`, which validators then refuse null for): such a
    property gets a copy of the component inline."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if (
                isinstance(value, dict)
                and value.get("nullable")
                and len(value.get("allOf", [])) == 1
                and "$ref" in value["allOf"][0]
            ):
                name = value["allOf"][0]["$ref"].rsplit("/", 1)[-1]
                inline = {**schemas[name], **{k: v for k, v in value.items() if k != "allOf"}}
                node[key] = inline
            _inline_nullable_refs(node[key], schemas)
    elif isinstance(node, list):
        for value in node:
            _inline_nullable_refs(value, schemas)


def _drop_enum_ids(node: Any) -> None:
    """drf-spectacular tags each enum for its enum hook, which this document does not use
    (an enum stays inline, where it is declared)."""
    if isinstance(node, dict):
        node.pop("x-spec-enum-id", None)
        for value in node.values():
            _drop_enum_ids(value)
    elif isinstance(node, list):
        for value in node:
            _drop_enum_ids(value)

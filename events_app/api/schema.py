"""The OpenAPI 3 description of /v1 (drf-spectacular), kept next to the views it describes.

The views build their JSON by hand (no serializers), so the shapes are written here as plain
OpenAPI schemas: `COMPONENTS` becomes `#/components/schemas`, and one `extend_schema` keyword
set per endpoint lists its request, parameters and every status it can answer, with the headers
that status carries. Each view carries a single `@extend_schema(**...)` naming its set.

What the document says is checked against the running app by `make api-fuzz` (schemathesis);
docs/api.md is the prose version of the same contract.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse

from events_app.ingest.auth import ApiKeyAuthentication
from events_app.models import EventStatus
from signals_app.models import Aggregation, Compatibility, Period, SignalType

Schema = dict[str, Any]

DEMO_KEY_HINT = "sk_demo_local_only_not_for_production_000000"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str = "", **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if description:
        schema["description"] = description
    return schema


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


_DATE_TIME = _string(format="date-time", example="2026-03-16T12:00:00Z")
_EVENT_STATUSES = list(EventStatus.values)
_FREE_OBJECT: Schema = {"type": "object", "additionalProperties": True}

# --- Shapes -----------------------------------------------------------------------------------
COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": (
            "The error envelope of every non-2xx answer. `error` is for people, `code` (a "
            "stable word) for programs; `details` is there when there is a list to give."
        ),
        "required": ["success", "error", "code"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "error": _string("What went wrong, in a sentence.", example="signal is required"),
            "code": _string("A stable machine-readable word.", example="signal_required"),
            "details": ref("ErrorDetails"),
        },
    },
    "ErrorDetails": {
        "type": "array",
        "description": (
            "Each violation of a `schema_validation_failed`; the budget that refused a "
            "`rate_limited` (one item)."
        ),
        "items": {"oneOf": [ref("SchemaViolation"), ref("RateLimitExceeded")]},
    },
    "RateLimitExceeded": {
        "type": "object",
        "description": (
            "Which budget refused a 429 and when it refills; the same values as the "
            "`X-RateLimit-Limit`, `X-RateLimit-Reset` and `Retry-After` headers."
        ),
        "required": ["signal", "limit", "window_seconds", "reset_at", "retry_after"],
        "properties": {
            "signal": _string("The signal's slug.", example="visited-documentation-page"),
            "limit": {
                "type": "integer",
                "minimum": 1,
                "description": "Requests per window.",
                "example": 100,
            },
            "window_seconds": {
                "type": "integer",
                "enum": [60],
                "description": "The window's length.",
            },
            "reset_at": _string(
                "UTC time the window resets (as `X-RateLimit-Reset`).",
                format="date-time",
                example="2026-12-04T16:01:00Z",
            ),
            "retry_after": {
                "type": "integer",
                "minimum": 1,
                "description": "Seconds until then (as `Retry-After`).",
                "example": 12,
            },
        },
    },
    "SchemaViolation": {
        "type": "object",
        "description": "One way `data` fails its JSON Schema.",
        "required": ["path", "message", "keyword"],
        "properties": {
            "path": _string(
                "JSON path of the offending value; `$` is `data` itself.",
                example="$.duration_seconds",
            ),
            "message": _string(example="-5 is less than the minimum of 0"),
            "keyword": _string("The JSON Schema keyword that failed.", example="minimum"),
        },
    },
    "Identity": {
        "type": "object",
        "description": "The CRM record the event is about.",
        "required": ["type", "id"],
        "properties": {
            "type": _string(
                "`account`, `contact`, `deal`, `lead` or a custom type of lowercase letters, "
                "digits and underscores.",
                pattern=r"^[a-z0-9_]{1,64}$",
                example="account",
            ),
            "id": _string(
                "The id in your CRM.", minLength=1, maxLength=255, example="001ABC000000123"
            ),
        },
    },
    "EventRequest": {
        "type": "object",
        "description": (
            "One event. Other fields are ignored; an optional field sent as null is the same "
            "as leaving it out. The body is parsed as strict JSON whatever "
            "the Content-Type (UTF-8, no NaN, no duplicate keys, no NUL characters, nesting "
            "at most 32 levels)."
        ),
        "required": ["signal", "identity"],
        "properties": {
            "signal": _string(
                "The signal's slug.", minLength=1, maxLength=100, example="api-calls"
            ),
            "version": {
                "description": 'A schema version number or `"latest"` (the default).',
                "oneOf": [
                    {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                    {"type": "string", "enum": ["latest"]},
                ],
            },
            "identity": ref("Identity"),
            "data": {
                **_FREE_OBJECT,
                "nullable": True,
                "description": "Checked against the signal's schema version; default `{}`.",
            },
            "timestamp": {
                **_DATE_TIME,
                "nullable": True,
                "description": (
                    "When it happened, ISO 8601; no offset means UTC; at most 24 hours in the "
                    "future. Default: the time of receipt."
                ),
            },
            "reference": _string("Your own reference, echoed back.", maxLength=255, nullable=True),
            "idempotency_key": _string(
                "Or the `Idempotency-Key` header; both given must be equal.",
                minLength=1,
                maxLength=255,
                nullable=True,
            ),
        },
    },
    "EventBatchRequest": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": ref("EventRequest"),
            },
        },
    },
    "EventAccepted": {
        "type": "object",
        "required": ["id", "signal_id", "schema_version", "status", "reference"],
        "properties": {
            "id": _string("UUID version 7.", format="uuid"),
            "signal_id": _string("The signal's public id.", example="sig_bFyqj0qg"),
            "schema_version": _nullable(
                {
                    "type": "integer",
                    "description": "The version `data` was checked against; null: no schema.",
                }
            ),
            "status": _string(
                "`pending` when new; a replay reports the stored event's current status.",
                enum=_EVENT_STATUSES,
            ),
            "reference": _nullable(_string()),
        },
    },
    "EventBatchItemAccepted": {
        "type": "object",
        "required": ["id", "signal_id", "schema_version", "status", "reference", "index"],
        "properties": {
            "id": _string(format="uuid"),
            "signal_id": _string(),
            "schema_version": _nullable({"type": "integer"}),
            "status": _string(enum=_EVENT_STATUSES),
            "reference": _nullable(_string()),
            "index": {"type": "integer", "minimum": 0},
            "replayed": {
                "type": "boolean",
                "enum": [True],
                "description": "Present when the item was an idempotent replay.",
            },
        },
    },
    "EventBatchItemRejected": {
        "type": "object",
        "required": ["status", "index", "reference", "error", "code", "status_code"],
        "properties": {
            "status": _string(enum=["rejected"]),
            "index": {"type": "integer", "minimum": 0},
            "reference": _nullable(_string()),
            "error": _string(example="Signal not found: no-such-signal"),
            "code": _string(example="signal_not_found"),
            "status_code": {
                "type": "integer",
                "description": "The status the item would have had sent alone.",
                "enum": [400, 404, 409, 413, 429],
            },
            "details": ref("ErrorDetails"),
        },
    },
    "EventBatchItem": {
        "description": "An accepted or a rejected item, in request order.",
        "oneOf": [ref("EventBatchItemAccepted"), ref("EventBatchItemRejected")],
    },
    "EventValidated": {
        "type": "object",
        "required": ["valid", "signal_id", "schema_version"],
        "properties": {
            "valid": {"type": "boolean", "enum": [True]},
            "signal_id": _string(),
            "schema_version": _nullable({"type": "integer"}),
        },
    },
    "Event": {
        "type": "object",
        "required": [
            "id",
            "signal_id",
            "signal",
            "schema_version",
            "identity",
            "data",
            "timestamp",
            "received_at",
            "reference",
            "idempotency_key",
            "status",
            "attempts",
            "last_error",
            "result",
            "processed_at",
        ],
        "properties": {
            "id": _string(format="uuid"),
            "signal_id": _string(),
            "signal": _string("The signal's slug (as it is now)."),
            "schema_version": _nullable({"type": "integer"}),
            "identity": ref("Identity"),
            "data": _FREE_OBJECT,
            "timestamp": {**_DATE_TIME, "description": "When it happened, UTC."},
            "received_at": {**_DATE_TIME, "description": "When the API stored it, UTC."},
            "reference": _nullable(_string()),
            "idempotency_key": _nullable(_string()),
            "status": _string(enum=_EVENT_STATUSES),
            "attempts": {"type": "integer", "minimum": 0},
            "last_error": _nullable(_string("The error of the last failed attempt.")),
            "result": _nullable(
                {
                    **_FREE_OBJECT,
                    "description": (
                        "Null until completed: `processor` {name, version}, `signal_type`, "
                        "`insight` (null or {kind, summary, score, next_action, reasons}) and "
                        "`rollup` (what the event added to its record)."
                    ),
                }
            ),
            "processed_at": _nullable(_DATE_TIME),
        },
    },
    "SchemaVersionRef": {
        "type": "object",
        "required": ["version", "created_at"],
        "properties": {"version": {"type": "integer", "minimum": 1}, "created_at": _DATE_TIME},
    },
    "Signal": {
        "type": "object",
        "required": [
            "signal_id",
            "slug",
            "name",
            "type",
            "description",
            "ai_instructions",
            "active",
            "rate_limit_per_minute",
            "rate_limit_is_override",
            "compatibility",
            "latest_version",
            "versions",
        ],
        "properties": {
            "signal_id": _string(example="sig_7XTK4W1f"),
            "slug": _string(example="api-calls"),
            "name": _string(),
            "type": _string(enum=list(SignalType.values)),
            "description": _string(),
            "ai_instructions": _string(),
            "active": {"type": "boolean"},
            "rate_limit_per_minute": {
                "type": "integer",
                "minimum": 1,
                "description": "The budget ingest applies (override or the type's default).",
            },
            "rate_limit_is_override": {"type": "boolean"},
            "compatibility": _string(enum=list(Compatibility.values)),
            "aggregation": _string("Metric signals only.", enum=list(Aggregation.values)),
            "period": _string("Metric signals only.", enum=list(Period.values)),
            "value_field": _string("Metric signals only."),
            "latest_version": _nullable({"type": "integer", "minimum": 1}),
            "versions": {"type": "array", "items": ref("SchemaVersionRef")},
        },
    },
    "SchemaVersion": {
        "type": "object",
        "required": ["signal_id", "slug", "version", "schema", "created_at"],
        "properties": {
            "signal_id": _string(),
            "slug": _string(),
            "version": {"type": "integer", "minimum": 1},
            "schema": {**_FREE_OBJECT, "description": "A JSON Schema, draft 2020-12."},
            "created_at": _DATE_TIME,
        },
    },
    "SignalEventCount": {
        "type": "object",
        "required": ["signal", "signal_id", "count", "last_event_at"],
        "properties": {
            "signal": _string("The signal's slug."),
            "signal_id": _string(),
            "count": {"type": "integer", "minimum": 1},
            "last_event_at": {**_DATE_TIME, "description": "The latest event `timestamp`."},
        },
    },
    "CrmRecord": {
        "type": "object",
        "required": [
            "type",
            "id",
            "first_seen_at",
            "last_seen_at",
            "event_count",
            "events_by_signal",
            "states",
            "aggregates",
            "engagement_score",
            "insights",
        ],
        "properties": {
            "type": _string(example="account"),
            "id": _string(example="001ABC000000123"),
            "first_seen_at": _DATE_TIME,
            "last_seen_at": _DATE_TIME,
            "event_count": {"type": "integer", "minimum": 0},
            "events_by_signal": {"type": "array", "items": ref("SignalEventCount")},
            "states": {
                "type": "array",
                "items": ref("RecordState"),
                "description": "The current state per state signal (newest event by timestamp).",
            },
            "aggregates": {
                "type": "array",
                "items": ref("MetricSeries"),
                "description": "Per metric signal, its latest 12 period buckets, newest first.",
            },
            "engagement_score": {
                "type": "number",
                "minimum": 0,
                "maximum": 100,
                "description": (
                    "Time-decayed engagement from `event` signals, 0-100, as of the request "
                    "(docs/operations.md explains the formula)."
                ),
            },
            "insights": {
                "type": "array",
                "items": ref("Insight"),
                "description": "The latest 10 insights, newest event first.",
            },
        },
    },
    "RecordState": {
        "type": "object",
        "required": ["signal", "signal_id", "value", "timestamp", "event_id", "updated_at"],
        "properties": {
            "signal": _string("The signal's slug."),
            "signal_id": _string(),
            "value": {**_FREE_OBJECT, "description": "The `data` of the newest event."},
            "timestamp": {**_DATE_TIME, "description": "That event's `timestamp`."},
            "event_id": _string(format="uuid"),
            "updated_at": _DATE_TIME,
        },
    },
    "MetricBucket": {
        "type": "object",
        "required": ["start", "value", "count", "sum", "min", "max"],
        "properties": {
            "start": {**_DATE_TIME, "description": "Start of the period, UTC."},
            "value": {"type": "number", "description": "The signal's aggregation of the bucket."},
            "count": {"type": "integer", "minimum": 1},
            "sum": {"type": "number"},
            "min": {"type": "number"},
            "max": {"type": "number"},
        },
    },
    "MetricSeries": {
        "type": "object",
        "required": ["signal", "signal_id", "aggregation", "period", "buckets"],
        "properties": {
            "signal": _string("The signal's slug."),
            "signal_id": _string(),
            "aggregation": _string(enum=["sum", "count", "avg", "min", "max"]),
            "period": _string(enum=["hour", "day", "week", "month"]),
            "buckets": {"type": "array", "items": ref("MetricBucket")},
        },
    },
    "Insight": {
        "type": "object",
        "required": [
            "event_id",
            "signal",
            "signal_id",
            "kind",
            "summary",
            "score",
            "next_action",
            "reasons",
            "processor",
            "occurred_at",
            "created_at",
        ],
        "properties": {
            "event_id": _string(format="uuid"),
            "signal": _string("The signal's slug."),
            "signal_id": _string(),
            "kind": _string(enum=["event", "metric_unusual", "state_change"]),
            "summary": _string("One line."),
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
            "next_action": _string(),
            "reasons": {"type": "array", "items": _string()},
            "processor": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": _string(), "version": _string()},
            },
            "occurred_at": {**_DATE_TIME, "description": "The event's `timestamp`."},
            "created_at": _DATE_TIME,
        },
    },
}


def envelope(data: Schema, *, success: bool = True, **extra: Schema) -> Schema:
    """The success envelope around `data` (plus any extra top-level properties)."""
    return {
        "type": "object",
        "required": ["success", "data", *extra],
        "properties": {"success": {"type": "boolean", "enum": [success]}, "data": data, **extra},
    }


# --- Headers ----------------------------------------------------------------------------------
_INT: Schema = {"type": "integer"}
_REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"


def _response_header(
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


def _rate_limit_headers(*, codes: list[int], required: bool) -> list[OpenApiParameter]:
    return [
        _response_header(
            "X-RateLimit-Limit",
            {**_INT, "minimum": 1},
            "The signal's budget per minute.",
            codes=codes,
            required=required,
        ),
        _response_header(
            "X-RateLimit-Remaining",
            {**_INT, "minimum": 0},
            "Requests left in this window.",
            codes=codes,
            required=required,
        ),
        _response_header(
            "X-RateLimit-Reset",
            _DATE_TIME,
            "ISO 8601 UTC time the window resets.",
            codes=codes,
            required=required,
        ),
    ]


def _common_headers(codes: list[int]) -> list[OpenApiParameter]:
    """Headers of every operation: X-Request-ID both ways, WWW-Authenticate on 401 and
    Retry-After on 503. `codes`: every status the operation answers itself."""
    return [
        OpenApiParameter(
            name="X-Request-ID",
            type=_string(pattern=_REQUEST_ID_PATTERN),
            location=OpenApiParameter.HEADER,
            required=False,
            description="Your id for this request, echoed back; otherwise the API makes one.",
        ),
        _response_header(
            "X-Request-ID",
            _string(pattern=_REQUEST_ID_PATTERN),
            "The client's X-Request-ID when it was sane, otherwise a new id.",
            codes=[*codes, URI_TOO_LONG],
            required=True,
        ),
        _response_header(
            "WWW-Authenticate",
            _string(enum=["Bearer"]),
            "The authentication scheme to use.",
            codes=[401],
            required=True,
        ),
        _response_header(
            "Retry-After",
            {**_INT, "minimum": 0},
            "Seconds to wait before retrying.",
            codes=[503],
            required=False,
        ),
    ]


_IDEMPOTENCY_KEY = OpenApiParameter(
    name="Idempotency-Key",
    type=_string(minLength=1, maxLength=255, pattern=r"^[!-~\u0080-\uffff][ -~\u0080-\uffff]*$"),
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Makes a retry safe: the same key with the same request answers 200 with the original "
        "event (`Idempotent-Replayed: true`); with a different request, 409. Or send the "
        "`idempotency_key` field."
    ),
)
_LOCATION = _string("`/v1/events/<id>`: where the event can be read.", example="/v1/events/01a2")


# --- Responses --------------------------------------------------------------------------------
def _error(description: str, *examples: tuple[int, str, str]) -> OpenApiResponse:
    return OpenApiResponse(
        response=ref("Error"),
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


def _rate_limited() -> OpenApiResponse:
    return OpenApiResponse(
        response=ref("Error"),
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


def _unauthorized() -> OpenApiResponse:
    return OpenApiResponse(
        response=ref("Error"),
        description=(
            "Missing, malformed, unknown or revoked API key (`missing_api_key`, "
            "`invalid_api_key`, `revoked_api_key`), with `WWW-Authenticate: Bearer`."
        ),
    )


# gunicorn refuses a request line over `limit_request_line` (8190 bytes in bigmind/gunicorn_conf.py)
# itself, before the app sees it; bigmind.gunicorn_worker answers it in the envelope, with an
# X-Request-ID of its own. The documented maximum lengths of the parameters, percent-encoded,
# can add up to more than that.
URI_TOO_LONG = 414


def _uri_too_long() -> OpenApiResponse:
    return _error(
        "The URL is longer than the web server accepts (gunicorn's `limit_request_line`, 8190 "
        "bytes in the shipped configuration): answered by the server before the app, in the "
        "envelope (`uri_too_long`). A proxy in front may answer it first, with its own page "
        '(docs/api.md, "Answers outside the envelope").',
        (414, "URI Too Long: Request Line is too large (9022 > 8190)", "uri_too_long"),
    )


def _unavailable() -> OpenApiResponse:
    return _error(
        "A backing service (the database) is down: `service_unavailable`, with `Retry-After`."
    )


def _ingest_unavailable() -> OpenApiResponse:
    return _error(
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


def _too_large(limit: str) -> OpenApiResponse:
    return _error(
        f"The body is over the size limit ({limit}); it is not read: `body_too_large`.",
    )


_INGEST_400 = (
    "The body or a field is wrong: `invalid_json`, `signal_required`, `identity_required`, "
    "`invalid_field`, or `schema_validation_failed` with `details` listing each violation; "
    "or the body ended before its `Content-Length` or last chunk (`body_incomplete`)."
)
_INGEST_404 = (
    "No active signal with that slug in the key's organization (`signal_not_found`), or no "
    "such schema version (`schema_version_not_found`)."
)
_INGEST_409 = (
    "The idempotency key was used before for a different request (`idempotency_conflict`)."
)

_EVENT_EXAMPLE = {
    "signal": "visited-documentation-page",
    "version": "latest",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"page": "/docs/quickstart", "duration_seconds": 120},
    "timestamp": "2026-03-16T12:00:00Z",
    "reference": "evt-001",
}
_STATE_EXAMPLE = {
    "signal": "health-state",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"state": "green"},
}
_METRIC_EXAMPLE = {
    "signal": "api-calls",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {"value": 3},
    "reference": "evt-002",
}


def _request_examples() -> list[OpenApiExample]:
    return [
        OpenApiExample("page visit", value=_EVENT_EXAMPLE, request_only=True),
        OpenApiExample("metric", value=_METRIC_EXAMPLE, request_only=True),
        OpenApiExample("state", value=_STATE_EXAMPLE, request_only=True),
    ]


# --- Per endpoint -----------------------------------------------------------------------------
EVENT_INGEST: dict[str, Any] = {
    "operation_id": "event_ingest",
    "summary": "Send one event",
    "description": (
        "Validates the event against its signal's schema, stores it with its CRM record and "
        "queues it for processing. Checks run in a fixed order and the first failure answers. "
        "Spends one unit of the signal's per-minute budget."
    ),
    "tags": ["events"],
    "request": {
        "application/json": ref("EventRequest"),
    },
    "examples": _request_examples(),
    "parameters": [
        _IDEMPOTENCY_KEY,
        *_common_headers([200, 202, 400, 401, 404, 409, 413, 429, 503]),
        _response_header("Location", _LOCATION, "The event.", codes=[200, 202], required=True),
        _response_header(
            "Idempotent-Replayed",
            _string(enum=["true"]),
            "The answer is a replay of an earlier request with the same key.",
            codes=[200],
            required=True,
        ),
        *_rate_limit_headers(codes=[200, 202, 429], required=True),
        # Errors carry them when the request named a known signal.
        *_rate_limit_headers(codes=[400, 404, 409], required=False),
        _response_header(
            "Retry-After",
            {**_INT, "minimum": 1},
            "Seconds until the window resets.",
            codes=[429],
            required=True,
        ),
    ],
    "responses": {
        202: OpenApiResponse(
            response=envelope(ref("EventAccepted")),
            description="Stored and queued for processing.",
        ),
        200: OpenApiResponse(
            response=envelope(ref("EventAccepted")),
            description=(
                "An idempotent replay: the same key and the same request as an event already "
                "stored. Nothing new is stored; `Idempotent-Replayed: true`."
            ),
        ),
        400: _error(_INGEST_400, (400, "signal is required", "signal_required")),
        401: _unauthorized(),
        404: _error(_INGEST_404, (404, "Signal not found: no-such-signal", "signal_not_found")),
        409: _error(_INGEST_409),
        413: _too_large("`BIGMIND_EVENT_MAX_BODY_BYTES`, 1 MiB by default"),
        429: _rate_limited(),
        503: _ingest_unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

EVENT_BATCH: dict[str, Any] = {
    "operation_id": "event_batch",
    "summary": "Send up to 100 events",
    "description": (
        "Each item goes through exactly the checks of `POST /v1/events` and succeeds or fails "
        "on its own; `data` lists the items in request order. Each item spends one unit of its "
        "own signal's budget; the `X-RateLimit-*` headers describe the most constrained signal. "
        "Idempotency per item, by its `idempotency_key` field only."
    ),
    "tags": ["events"],
    "request": {"application/json": ref("EventBatchRequest")},
    "examples": [
        OpenApiExample(
            "three events",
            value={"events": [_EVENT_EXAMPLE, _METRIC_EXAMPLE, _STATE_EXAMPLE]},
            request_only=True,
        )
    ],
    "parameters": [
        *_common_headers([202, 207, 400, 401, 413, 503]),
        *_rate_limit_headers(codes=[202], required=True),
        # Absent when no item named a known signal.
        *_rate_limit_headers(codes=[207], required=False),
    ],
    "responses": {
        202: OpenApiResponse(
            response=envelope({"type": "array", "items": ref("EventBatchItemAccepted")}),
            description="Every item was accepted (replays count as accepted).",
        ),
        207: OpenApiResponse(
            response=envelope({"type": "array", "items": ref("EventBatchItem")}, success=False),
            description=(
                "At least one item was rejected; accepted items were stored all the same."
            ),
        ),
        400: _error(
            'The body is not JSON (`invalid_json`) or not `{"events": [...]}` with 1 to 100 '
            "items (`invalid_batch`), or it ended before its `Content-Length` or last chunk "
            "(`body_incomplete`). Nothing is stored.",
            (400, "events must not be empty", "invalid_batch"),
        ),
        401: _unauthorized(),
        413: _too_large("`BIGMIND_BATCH_MAX_BODY_BYTES`, 5 MiB by default"),
        503: _ingest_unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

EVENT_VALIDATE: dict[str, Any] = {
    "operation_id": "event_validate",
    "summary": "Check an event without sending it",
    "description": (
        "Every check of `POST /v1/events` except storing and rate limiting: an invalid event "
        "gets exactly the answer ingest would give. Spends no budget (the `X-RateLimit-*` "
        "headers report it as it is)."
    ),
    "tags": ["events"],
    "request": {"application/json": ref("EventRequest")},
    "examples": _request_examples(),
    "parameters": [
        _IDEMPOTENCY_KEY,
        *_common_headers([200, 400, 401, 404, 409, 413, 503]),
        *_rate_limit_headers(codes=[200], required=True),
        *_rate_limit_headers(codes=[400, 404, 409], required=False),
    ],
    "responses": {
        200: OpenApiResponse(
            response=envelope(ref("EventValidated")), description="The event would be accepted."
        ),
        400: _error(_INGEST_400),
        401: _unauthorized(),
        404: _error(_INGEST_404),
        409: _error(_INGEST_409),
        413: _too_large("`BIGMIND_EVENT_MAX_BODY_BYTES`, 1 MiB by default"),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}


def _path(name: str, description: str, *examples: str, max_length: int) -> OpenApiParameter:
    return OpenApiParameter(
        name=name,
        type=_string(minLength=1, maxLength=max_length),
        location=OpenApiParameter.PATH,
        description=description,
        examples=[OpenApiExample(value, value=value) for value in examples],
    )


# The headers of the paged lists; their query parameters are the views' query serializers.
LIST_HEADERS = _common_headers([200, 400, 401, 503])

EVENT_LIST: dict[str, Any] = {
    "operation_id": "event_list",
    "summary": "List events",
    "description": (
        "The key's organization's events, newest first (`received_at`, then `id`), a page at "
        "a time. An empty parameter is the same as leaving it out. Pass `next_cursor` as "
        "`cursor`, with the same filters, for the next page; it is null on the last one."
    ),
    "tags": ["events"],
    "responses": {
        200: OpenApiResponse(
            response=envelope(
                {"type": "array", "items": ref("Event")},
                next_cursor=_nullable(_string("Null on the last page.")),
            ),
            description="One page of events.",
        ),
        400: _error(
            "A parameter is wrong (`invalid_parameter`) or the cursor is not one this API "
            "handed out to this organization for this list (`invalid_cursor`).",
            (400, "limit must be an integer from 1 to 100", "invalid_parameter"),
        ),
        401: _unauthorized(),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

EVENT_GET: dict[str, Any] = {
    "operation_id": "event_get",
    "summary": "Get one event",
    "description": "The event in full: what was sent, when, and how far processing got.",
    "tags": ["events"],
    "parameters": [
        _path(
            "event_id",
            "The event's UUID (canonical, upper case or without dashes). Anything else is a 404.",
            "01a21692-3109-7597-a3cd-e05f6e30a938",
            max_length=36,
        ),
        *_common_headers([200, 401, 404, 503]),
    ],
    "responses": {
        200: OpenApiResponse(response=envelope(ref("Event")), description="The event."),
        401: _unauthorized(),
        404: _error(
            "No such event in the key's organization, or not a UUID: `event_not_found`.",
            (404, "Event not found: abc", "event_not_found"),
        ),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

_SLUG = _path("slug", "The signal's slug.", "api-calls", max_length=100)
_SIGNAL_404 = _error(
    "No signal with that slug in the key's organization: `signal_not_found`.",
    (404, "Signal not found: no-such-signal", "signal_not_found"),
)

SIGNAL_LIST: dict[str, Any] = {
    "operation_id": "signal_list",
    "summary": "List signals",
    "description": "Every signal of the key's organization, inactive ones too, by slug.",
    "tags": ["signals"],
    "parameters": _common_headers([200, 401, 503]),
    "responses": {
        200: OpenApiResponse(
            response=envelope({"type": "array", "items": ref("Signal")}),
            description="The signals.",
        ),
        401: _unauthorized(),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

SIGNAL_GET: dict[str, Any] = {
    "operation_id": "signal_get",
    "summary": "Get one signal",
    "description": "One signal, active or not (ingest still refuses inactive ones).",
    "tags": ["signals"],
    "parameters": [_SLUG, *_common_headers([200, 401, 404, 503])],
    "responses": {
        200: OpenApiResponse(response=envelope(ref("Signal")), description="The signal."),
        401: _unauthorized(),
        404: _SIGNAL_404,
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

SCHEMA_VERSION_GET: dict[str, Any] = {
    "operation_id": "schema_version_get",
    "summary": "Get a signal's JSON Schema",
    "description": "The JSON Schema (draft 2020-12) of one version of a signal's `data`.",
    "tags": ["signals"],
    "parameters": [
        _SLUG,
        _path(
            "version",
            "A version number or `latest`; anything else is a 404.",
            "latest",
            "1",
            max_length=10,
        ),
        *_common_headers([200, 401, 404, 503]),
    ],
    "responses": {
        200: OpenApiResponse(response=envelope(ref("SchemaVersion")), description="The schema."),
        401: _unauthorized(),
        404: _error(
            "No such signal (`signal_not_found`, checked first) or version "
            "(`schema_version_not_found`).",
            (
                404,
                "Schema version 3 not found for signal api-calls",
                "schema_version_not_found",
            ),
        ),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}

CRM_RECORD_GET: dict[str, Any] = {
    "operation_id": "crm_record_get",
    "summary": "Get a CRM record's profile",
    "description": (
        "The record events are about (`identity.type` + `identity.id`): first and last seen, "
        "event counts per signal; current states, metric aggregates per period, engagement "
        "score and latest insights, as the processing pipeline has built them."
    ),
    "tags": ["records"],
    "parameters": [
        _path("record_type", "`identity.type`.", "account", max_length=64),
        _path(
            "record_id",
            "`identity.id`, percent-encoded; it may contain `/` (everything after the type is "
            "the id).",
            "001ABC000000123",
            max_length=255,
        ),
        *_common_headers([200, 401, 404, 503]),
    ],
    "responses": {
        200: OpenApiResponse(response=envelope(ref("CrmRecord")), description="The profile."),
        401: _unauthorized(),
        404: _error(
            "No such record in the key's organization: `record_not_found`.",
            (404, "Record not found: account/123", "record_not_found"),
        ),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}


# --- Rejections -------------------------------------------------------------------------------
_REJECTION_REASONS = ["schema_validation_failed", "signal_not_found"]
COMPONENTS["Rejection"] = {
    "type": "object",
    "description": (
        "A request refused for a schema violation or an unknown signal (one batch item counts "
        "as one request), as the API answered it."
    ),
    "required": [
        "id",
        "signal",
        "reason",
        "error",
        "details",
        "body",
        "body_truncated",
        "body_bytes",
        "identity",
        "received_at",
        "replayed_event_id",
        "replayed_at",
    ],
    "properties": {
        "id": _string(format="uuid"),
        "signal": _string("The `signal` as sent (empty when it was not a string)."),
        "reason": _string("The `code` the API answered with.", enum=_REJECTION_REASONS),
        "error": _string(
            "The exact `error` the API answered with.",
            example="Signal not found: no-such-signal",
        ),
        "details": {
            "type": "array",
            "items": ref("SchemaViolation"),
            "description": "The violations (`schema_validation_failed`); empty otherwise.",
        },
        "body": _string(
            "The request body as sent (a batch item: the item, re-encoded as compact JSON), "
            "cut to `BIGMIND_REJECTION_BODY_MAX_BYTES` (16 KiB by default) at a UTF-8 "
            "character boundary."
        ),
        "body_truncated": {"type": "boolean", "description": "Whether `body` was cut."},
        "body_bytes": {
            "type": "integer",
            "minimum": 0,
            "description": "Size of the body as sent, in bytes.",
        },
        # Inline, not a $ref: OpenAPI 3.0 ignores `nullable` beside a `$ref`.
        "identity": _nullable(
            {**COMPONENTS["Identity"], "description": "The event's identity, when it had one."}
        ),
        "received_at": {**_DATE_TIME, "description": "When the API refused it, UTC."},
        "replayed_event_id": _nullable(
            _string("The event stored when staff replayed it after a fix.", format="uuid")
        ),
        "replayed_at": _nullable(_DATE_TIME),
    },
}

REJECTION_LIST: dict[str, Any] = {
    "operation_id": "rejection_list",
    "summary": "List rejected events",
    "description": (
        "Requests of the key's organization refused for a schema violation "
        "(`schema_validation_failed`) or an unknown signal (`signal_not_found`), by "
        "`POST /v1/events` or per item by `POST /v1/events/batch`: what was sent and what the "
        "API answered. Newest first (`received_at`, then `id`), a page at a time, like "
        "`GET /v1/events`. At most 60 are kept per organization and minute (the rest are "
        "counted only) and for 14 days (both configurable, docs/operations.md)."
    ),
    "tags": ["events"],
    "responses": {
        200: OpenApiResponse(
            response=envelope(
                {"type": "array", "items": ref("Rejection")},
                next_cursor=_nullable(_string("Null on the last page.")),
            ),
            description="One page of rejections.",
        ),
        400: _error(
            "A parameter is wrong (`invalid_parameter`) or the cursor is not one this API "
            "handed out to this organization for this list (`invalid_cursor`).",
            (
                400,
                "reason must be one of schema_validation_failed, signal_not_found",
                "invalid_parameter",
            ),
        ),
        401: _unauthorized(),
        503: _unavailable(),
        URI_TOO_LONG: _uri_too_long(),
    },
}


# --- Authentication and finishing touches -----------------------------------------------------
class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer sk_...` as the document's one security scheme."""

    target_class = ApiKeyAuthentication
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
    components.setdefault("schemas", {}).update(COMPONENTS)
    shared_headers = components.setdefault("headers", {})
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            if "requestBody" in operation:
                operation["requestBody"]["required"] = True
            for response in operation.get("responses", {}).values():
                headers = response.get("headers", {})
                for name, header in headers.items():
                    headers[name] = _shared_header(shared_headers, name, header)
            for status, links in LINKS.get(operation.get("operationId", ""), {}).items():
                operation["responses"][status]["links"] = links
    _drop_enum_ids(result)
    return result


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

"""POST /v1/events/validate: every check of ingest, nothing stored, no budget spent."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from events_app.api import schema
from events_app.api.common import ApiView, request_body_read, success
from events_app.api.events import EventRequestSerializer
from events_app.api.fields import Boolean, Const, Integer, PassedList, Text
from events_app.ingest.services import event_validate


class EventValidatedSerializer(serializers.Serializer):
    valid = Const(True, help_text="The event would be accepted.")
    signal_id = Text()
    schema_version = Integer(allow_null=True)
    schema_valid = Boolean(
        help_text=(
            "False: `data` fails the schema, and the event would be accepted only because its "
            "signal's enforcement is `flag` (stored with `schema_valid: false`)."
        )
    )
    violations = PassedList(
        child=schema.SchemaViolationSerializer(),
        allow_null=True,
        help_text="What `data` fails, as a 400 would list it; null when it passes.",
    )


_VALIDATED = EventValidatedSerializer()


_VALIDATE = extend_schema(
    operation_id="event_validate",
    summary="Check an event without sending it",
    description=(
        "Every check of `POST /v1/events` except storing and rate limiting: an invalid event "
        "gets exactly the answer ingest would give. Spends no budget (the `X-RateLimit-*` "
        "headers report it as it is). Under a signal's `flag` enforcement, data failing its "
        "schema is answered 200 with `schema_valid: false` and its `violations`, as ingest "
        "would accept it."
    ),
    tags=["events"],
    request=EventRequestSerializer,
    examples=schema.request_examples(),
    parameters=[
        schema.IDEMPOTENCY_KEY,
        *schema.common_headers([200, 400, 401, 404, 409, 413, 503]),
        *schema.rate_limit_headers(codes=[200], required=True),
        *schema.rate_limit_headers(codes=[400, 404, 409], required=False),
    ],
    responses={
        200: OpenApiResponse(
            response=EventValidatedSerializer, description="The event would be accepted."
        ),
        400: schema.error_response(schema.INGEST_400),
        401: schema.unauthorized(),
        404: schema.error_response(schema.INGEST_404),
        409: schema.error_response(schema.INGEST_409),
        413: schema.too_large("`BIGMIND_EVENT_MAX_BODY_BYTES`, 1 MiB by default"),
        503: schema.unavailable(),
        schema.URI_TOO_LONG: schema.uri_too_long(),
    },
)


class EventValidateApi(ApiView):
    """POST /v1/events/validate: every check of ingest, nothing stored, no budget spent."""

    @_VALIDATE
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_EVENT_MAX_BODY_BYTES)
        result = event_validate(
            client=request.user,
            raw_body=raw,
            idempotency_header=request.META.get("HTTP_IDEMPOTENCY_KEY"),
        )
        data = _VALIDATED.to_representation(
            {
                "signal_id": result.signal.public_id,
                "schema_version": result.schema.version,
                "schema_valid": result.schema.valid,
                "violations": result.schema.violations,
            }
        )
        return Response(success(data), headers=result.rate.headers())

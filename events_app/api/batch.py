"""POST /v1/events/batch: up to 100 events; each item succeeds or fails on its own."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from events_app.api import schema
from events_app.api.common import ApiView, request_body_read
from events_app.api.events import (
    EventAcceptedSerializer,
    EventRequestSerializer,
    event_public_data,
)
from events_app.api.fields import Choice, Const, Integer, Text
from events_app.ingest.batch import events_ingest_batch


class EventBatchRequestSerializer(serializers.Serializer):
    # The document's declaration of what events_app/ingest/batch.py checks by hand.
    events = serializers.ListField(
        child=EventRequestSerializer(),
        min_length=1,
        max_length=settings.BIGMIND_BATCH_MAX_EVENTS,
    )


class EventBatchItemAcceptedSerializer(EventAcceptedSerializer):
    index = Integer(min_value=0)
    replayed = Const(
        True, required=False, help_text="Present when the item was an idempotent replay."
    )


class EventBatchItemRejectedSerializer(serializers.Serializer):
    status = Const("rejected")
    index = Integer(min_value=0)
    reference = Text(allow_null=True)
    error = Text(source="error.message", example="Signal not found: no-such-signal")
    code = Text(source="error.code", example="signal_not_found")
    status_code = Choice(
        [400, 403, 404, 409, 413, 429],
        source="error.status_code",
        help_text="The status the item would have had sent alone.",
    )
    details = schema.ErrorDetailsField(source="error.details", required=False)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if data["details"] is None:
            del data["details"]
        return data


BATCH_ITEM_LIST = PolymorphicProxySerializer(
    component_name="EventBatchItem",
    serializers=[EventBatchItemAcceptedSerializer, EventBatchItemRejectedSerializer],
    resource_type_field_name=None,
    many=True,
)
_REJECTED_ITEM = EventBatchItemRejectedSerializer()


def batch_item_data(item: Any) -> dict[str, Any]:
    """One item of the answer, accepted or rejected, in the shape declared above."""
    if item.error is None:
        # By hand on the hot path, as event_public_data (a test pins it to the serializer).
        data = event_public_data(item.event, signal_public_id=item.signal.public_id)
        data["index"] = item.index
        if item.replayed:
            data["replayed"] = True
        return data
    reference = item.payload.get("reference") if isinstance(item.payload, dict) else None
    return _REJECTED_ITEM.to_representation(
        {
            "index": item.index,
            "reference": reference if isinstance(reference, str) else None,
            "error": item.error,
        }
    )


_BATCH = extend_schema(
    operation_id="event_batch",
    summary="Send up to 100 events",
    description=(
        "Each item goes through exactly the checks of `POST /v1/events` and succeeds or fails "
        "on its own; `data` lists the items in request order. Each item spends one unit of its "
        "own signal's budget; the `X-RateLimit-*` headers describe the most constrained signal. "
        "Idempotency per item, by its `idempotency_key` field only."
    ),
    tags=["events"],
    request=EventBatchRequestSerializer,
    examples=[
        OpenApiExample(
            "three events",
            value={"events": [schema.EVENT_EXAMPLE, schema.METRIC_EXAMPLE, schema.STATE_EXAMPLE]},
            request_only=True,
        )
    ],
    parameters=[
        *schema.common_headers([202, 207, 400, 401, 413, 503]),
        *schema.rate_limit_headers(codes=[202], required=True),
        # Absent when no item named a known signal.
        *schema.rate_limit_headers(codes=[207], required=False),
    ],
    responses={
        202: OpenApiResponse(
            response=EventBatchItemAcceptedSerializer(many=True),
            description="Every item was accepted (replays count as accepted).",
        ),
        207: OpenApiResponse(
            response=BATCH_ITEM_LIST,
            description=(
                "At least one item was rejected; accepted items were stored all the same."
            ),
        ),
        400: schema.error_response(
            'The body is not JSON (`invalid_json`) or not `{"events": [...]}` with 1 to 100 '
            "items (`invalid_batch`), or it ended before its `Content-Length` or last chunk "
            "(`body_incomplete`). Nothing is stored.",
            (400, "events must not be empty", "invalid_batch"),
        ),
        401: schema.unauthorized(),
        413: schema.too_large("`BIGMIND_BATCH_MAX_BODY_BYTES`, 5 MiB by default"),
        503: schema.ingest_unavailable(),
        schema.URI_TOO_LONG: schema.uri_too_long(),
    },
)


class EventBatchApi(ApiView):
    """POST /v1/events/batch: up to 100 events; each item succeeds or fails on its own."""

    @_BATCH
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_BATCH_MAX_BODY_BYTES)
        result = events_ingest_batch(client=request.user, raw_body=raw)
        all_accepted = result.all_accepted
        return Response(
            {"success": all_accepted, "data": [batch_item_data(item) for item in result.items]},
            status=202 if all_accepted else 207,
            headers=result.rate.headers() if result.rate else None,
        )

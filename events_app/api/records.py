"""GET /v1/records/<type>/<id>: a CRM record's profile, as the processing pipeline built it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.errors import NotFound
from bigmind.replicas import read_from_replica
from events_app.api import schema
from events_app.api.common import ApiView, success
from events_app.api.fields import Choice, DateTime, FreeObject, Integer, Number, Text, Uuid
from events_app.models import InsightKind
from events_app.selectors import MetricSeries, crm_record_profile
from signals_app.models import Aggregation, Period

_BUCKET_VALUES = ("sum", "count", "min", "max")


class SignalEventCountSerializer(serializers.Serializer):
    signal = Text(help_text="The signal's slug.")
    signal_id = Text()
    count = Integer(min_value=1)
    last_event_at = DateTime(help_text="The latest event `timestamp`.")


class RecordStateSerializer(serializers.Serializer):
    signal = Text(source="signal.slug", help_text="The signal's slug.")
    signal_id = Text(source="signal.public_id")
    value = FreeObject(help_text="The `data` of the newest event.")
    timestamp = DateTime(help_text="That event's `timestamp`.")
    event_id = Uuid()
    updated_at = DateTime()


class BucketValue(Number):
    """The bucket's value under its series's aggregation (in the serializer's context)."""

    def get_attribute(self, instance: Any) -> Any:
        aggregation = self.context["aggregation"]
        if aggregation == "avg":
            return instance.sum / instance.count if instance.count else None
        return getattr(instance, aggregation) if aggregation in _BUCKET_VALUES else None


class MetricBucketSerializer(serializers.Serializer):
    start = DateTime(source="bucket_start", help_text="Start of the period, UTC.")
    value = BucketValue(help_text="The signal's aggregation of the bucket.")
    count = Integer(min_value=1)
    sum = Number()
    min = Number()
    max = Number()


class MetricSeriesSerializer(serializers.Serializer):
    signal = Text(source="signal.slug", help_text="The signal's slug.")
    signal_id = Text(source="signal.public_id")
    aggregation = Choice(list(Aggregation.values), source="signal.aggregation")
    period = Choice(list(Period.values), source="signal.period")
    buckets = serializers.SerializerMethodField()

    @extend_schema_field(MetricBucketSerializer(many=True))
    def get_buckets(self, series: MetricSeries) -> Any:
        context = {"aggregation": series.signal.aggregation}
        return MetricBucketSerializer(series.buckets, many=True, context=context).data


class ProcessorSerializer(serializers.Serializer):
    name = Text(source="processor")
    version = Text(source="processor_version")


class InsightSerializer(serializers.Serializer):
    event_id = Uuid()
    signal = Text(source="signal.slug", help_text="The signal's slug.")
    signal_id = Text(source="signal.public_id")
    kind = Choice(list(InsightKind.values))
    summary = Text(help_text="One line.")
    score = Integer(min_value=0, max_value=100)
    next_action = Text()
    reasons = serializers.ListField(child=Text())
    processor = ProcessorSerializer(source="*")
    occurred_at = DateTime(help_text="The event's `timestamp`.")
    created_at = DateTime()


class CrmRecordSerializer(serializers.Serializer):
    type = Text(source="record.type", example="account")
    id = Text(source="record.external_id", example="001ABC000000123")
    first_seen_at = DateTime(source="record.first_seen_at")
    last_seen_at = DateTime(source="record.last_seen_at")
    event_count = Integer(min_value=0)
    events_by_signal = SignalEventCountSerializer(many=True)
    states = RecordStateSerializer(
        many=True,
        help_text="The current state per state signal (newest event by timestamp).",
    )
    aggregates = MetricSeriesSerializer(
        many=True, help_text="Per metric signal, its latest 12 period buckets, newest first."
    )
    engagement_score = Number(
        help_text=(
            "Time-decayed engagement from `event` signals, 0-100, as of the request "
            "(docs/operations.md explains the formula)."
        ),
        schema={"minimum": 0, "maximum": 100},
    )
    insights = InsightSerializer(many=True, help_text="The latest 10 insights, newest event first.")


class CrmRecordDetailApi(ApiView):
    """GET /v1/records/<type>/<id>: a CRM record's profile; the id may contain '/'."""

    @extend_schema(
        operation_id="crm_record_get",
        summary="Get a CRM record's profile",
        description=(
            "The record events are about (`identity.type` + `identity.id`): first and last "
            "seen, event counts per signal; current states, metric aggregates per period, "
            "engagement score and latest insights, as the processing pipeline has built them."
        ),
        tags=["records"],
        parameters=[
            schema.path_parameter("record_type", "`identity.type`.", "account", max_length=64),
            schema.path_parameter(
                "record_id",
                "`identity.id`, percent-encoded; it may contain `/` (everything after the type "
                "is the id).",
                "001ABC000000123",
                max_length=255,
            ),
            *schema.common_headers([200, 401, 404, 503]),
        ],
        responses={
            200: OpenApiResponse(response=CrmRecordSerializer, description="The profile."),
            401: schema.unauthorized(),
            404: schema.error_response(
                "No such record in the key's organization: `record_not_found`.",
                (404, "Record not found: account/123", "record_not_found"),
            ),
            503: schema.unavailable(),
            schema.URI_TOO_LONG: schema.uri_too_long(),
        },
    )
    @read_from_replica(primary_on=(NotFound,))
    def get(self, request: Request, record_type: str, record_id: str) -> Response:
        profile = crm_record_profile(
            organization_id=request.user.organization_id,
            type=record_type,
            external_id=record_id,
            signals=request.user.signals,
        )
        return Response(success(CrmRecordSerializer(profile).data))

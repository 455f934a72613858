"""GET /v1/records/<type>/<id>: a CRM record's profile, as the processing pipeline built it."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.api_time import iso_utc
from events_app.api import schema
from events_app.api.common import ApiView, success
from events_app.models import Insight, MetricAggregate
from events_app.selectors import CrmRecordProfile, crm_record_profile


def crm_record_data(profile: CrmRecordProfile) -> dict[str, Any]:
    record = profile.record
    return {
        "type": record.type,
        "id": record.external_id,
        "first_seen_at": iso_utc(record.first_seen_at),
        "last_seen_at": iso_utc(record.last_seen_at),
        "event_count": profile.event_count,
        "events_by_signal": [
            {
                "signal": item.signal,
                "signal_id": item.signal_id,
                "count": item.count,
                "last_event_at": iso_utc(item.last_event_at),
            }
            for item in profile.events_by_signal
        ],
        "states": [
            {
                "signal": state.signal.slug,
                "signal_id": state.signal.public_id,
                "value": state.value,
                "timestamp": iso_utc(state.timestamp),
                "event_id": str(state.event_id),
                "updated_at": iso_utc(state.updated_at),
            }
            for state in profile.states
        ],
        "aggregates": [
            {
                "signal": series.signal.slug,
                "signal_id": series.signal.public_id,
                "aggregation": series.signal.aggregation,
                "period": series.signal.period,
                "buckets": [
                    bucket_data(bucket, series.signal.aggregation) for bucket in series.buckets
                ],
            }
            for series in profile.aggregates
        ],
        "engagement_score": profile.engagement_score,
        "insights": [insight_data(insight) for insight in profile.insights],
    }


def bucket_data(bucket: MetricAggregate, aggregation: str) -> dict[str, Any]:
    values = {
        "sum": bucket.sum,
        "count": bucket.count,
        "avg": bucket.sum / bucket.count if bucket.count else None,
        "min": bucket.min,
        "max": bucket.max,
    }
    return {
        "start": iso_utc(bucket.bucket_start),
        "value": values.get(aggregation),
        "count": bucket.count,
        "sum": bucket.sum,
        "min": bucket.min,
        "max": bucket.max,
    }


def insight_data(insight: Insight) -> dict[str, Any]:
    return {
        "event_id": str(insight.event_id),
        "signal": insight.signal.slug,
        "signal_id": insight.signal.public_id,
        "kind": insight.kind,
        "summary": insight.summary,
        "score": insight.score,
        "next_action": insight.next_action,
        "reasons": insight.reasons,
        "processor": {"name": insight.processor, "version": insight.processor_version},
        "occurred_at": iso_utc(insight.occurred_at),
        "created_at": iso_utc(insight.created_at),
    }


class CrmRecordDetailApi(ApiView):
    """GET /v1/records/<type>/<id>: a CRM record's profile; the id may contain '/'."""

    @extend_schema(**schema.CRM_RECORD_GET)
    def get(self, request: Request, record_type: str, record_id: str) -> Response:
        profile = crm_record_profile(
            organization_id=request.user.organization_id, type=record_type, external_id=record_id
        )
        return Response(success(crm_record_data(profile)))

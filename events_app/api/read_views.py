"""The read side of /v1: events, signals and their schemas, CRM records.

Thin views: parse the path and query, call one selector, shape the answer. The key's
organization scopes every read; another organization's objects answer as not found.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bigmind.api_time import iso_utc, iso_utc_text
from bigmind.errors import BadRequest
from events_app.api import schema
from events_app.api.views import EventIngestApi
from events_app.models import Event, EventStatus, Insight, MetricAggregate
from events_app.selectors import (
    CrmRecordProfile,
    EventFilters,
    crm_record_profile,
    event_get,
    event_list,
)
from signals_app.models import SchemaVersion, Signal, SignalType
from signals_app.selectors import schema_version_get, signal_get, signal_list, signal_rate_limit

EVENT_LIST_DEFAULT_LIMIT = 50
EVENT_LIST_MAX_LIMIT = 100
# The longest value each string filter can match (the column widths, as ingest enforces them).
_FILTER_MAX_LENGTHS = {
    "signal": 100,
    "identity_type": 64,
    "identity_id": 255,
    "reference": 255,
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


def _invalid(message: str) -> BadRequest:
    return BadRequest(message, code="invalid_parameter")


# --- Events -----------------------------------------------------------------------------------
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


def _query_text(request: Request, name: str) -> str | None:
    """A query parameter; absent and empty are the same (no filter)."""
    value = request.query_params.get(name)
    if not value:
        return None
    if "\x00" in value:
        # Nothing stored holds NUL, and PostgreSQL refuses it even as a parameter.
        raise _invalid(f"{name} must not contain a NUL character")
    max_length = _FILTER_MAX_LENGTHS.get(name)
    if max_length is not None and len(value) > max_length:
        raise _invalid(f"{name} must be at most {max_length} characters")
    return value


def _query_datetime(request: Request, name: str) -> datetime | None:
    value = _query_text(request, name)
    if value is None:
        return None
    message = (
        f"{name} must be an ISO 8601 date-time, e.g. 2026-03-16T12:00:00Z "
        f"(percent-encode a '+' offset as %2B)"
    )
    if len(value) > 64:
        raise _invalid(message)
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # no offset means UTC, as on ingest
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise _invalid(message) from exc


def _query_limit(request: Request) -> int:
    value = request.query_params.get("limit")
    if not value:
        return EVENT_LIST_DEFAULT_LIMIT
    message = f"limit must be an integer from 1 to {EVENT_LIST_MAX_LIMIT}"
    if not (value.isascii() and value.isdigit()) or len(value) > 3:
        raise _invalid(message)
    limit = int(value)
    if not 1 <= limit <= EVENT_LIST_MAX_LIMIT:
        raise _invalid(message)
    return limit


def _event_filters(request: Request) -> EventFilters:
    status = _query_text(request, "status")
    if status is not None and status not in EventStatus.values:
        raise _invalid(f"status must be one of {', '.join(EventStatus.values)}")
    return EventFilters(
        signal=_query_text(request, "signal"),
        identity_type=_query_text(request, "identity_type"),
        identity_id=_query_text(request, "identity_id"),
        status=status,
        reference=_query_text(request, "reference"),
        since=_query_datetime(request, "since"),
        until=_query_datetime(request, "until"),
    )


class EventDetailApi(APIView):
    """GET /v1/events/<id>: one event of the key's organization, in full."""

    @extend_schema(**schema.EVENT_GET)
    def get(self, request: Request, event_id: str) -> Response:
        event = event_get(organization_id=request.user.organization_id, event_id=event_id)
        return Response({"success": True, "data": event_full_data(event)})


class EventListApi(APIView):
    """GET /v1/events: the key's organization's events, filtered, newest first, by cursor."""

    @extend_schema(**schema.EVENT_LIST)
    def get(self, request: Request) -> Response:
        filters = _event_filters(request)
        limit = _query_limit(request)
        cursor = request.query_params.get("cursor") or None
        page = event_list(
            organization_id=request.user.organization_id,
            filters=filters,
            limit=limit,
            cursor=cursor,
        )
        return Response(
            {
                "success": True,
                "data": [event_full_data(event) for event in page.events],
                "next_cursor": page.next_cursor,
            }
        )


class EventCollectionApi(EventIngestApi, EventListApi):
    """/v1/events: POST ingests one event, GET lists them."""


# --- Signals ----------------------------------------------------------------------------------
def signal_data(signal: Signal) -> dict[str, Any]:
    rate_limit, overridden = signal_rate_limit(signal=signal)
    # Prefetched, ascending: no query per signal.
    versions = list(signal.schema_versions.all())
    data: dict[str, Any] = {
        "signal_id": signal.public_id,
        "slug": signal.slug,
        "name": signal.name,
        "type": signal.type,
        "description": signal.description,
        "ai_instructions": signal.ai_instructions,
        "active": signal.active,
        "rate_limit_per_minute": rate_limit,
        "rate_limit_is_override": overridden,
        "compatibility": signal.compatibility,
    }
    if signal.type == SignalType.METRIC:
        data["aggregation"] = signal.aggregation
        data["period"] = signal.period
        data["value_field"] = signal.value_field
    data["latest_version"] = versions[-1].version if versions else None
    data["versions"] = [
        {"version": version.version, "created_at": iso_utc(version.created_at)}
        for version in versions
    ]
    return data


def schema_version_data(version: SchemaVersion) -> dict[str, Any]:
    return {
        "signal_id": version.signal.public_id,
        "slug": version.signal.slug,
        "version": version.version,
        "schema": version.schema,
        "created_at": iso_utc(version.created_at),
    }


class SignalListApi(APIView):
    """GET /v1/signals: every signal of the key's organization, inactive ones included."""

    @extend_schema(**schema.SIGNAL_LIST)
    def get(self, request: Request) -> Response:
        signals = signal_list(organization_id=request.user.organization_id)
        return Response({"success": True, "data": [signal_data(signal) for signal in signals]})


class SignalDetailApi(APIView):
    """GET /v1/signals/<slug>: one signal, inactive or not."""

    @extend_schema(**schema.SIGNAL_GET)
    def get(self, request: Request, slug: str) -> Response:
        signal = signal_get(organization_id=request.user.organization_id, slug=slug)
        return Response({"success": True, "data": signal_data(signal)})


class SchemaVersionDetailApi(APIView):
    """GET /v1/signals/<slug>/schemas/<n|latest>: the JSON Schema itself."""

    @extend_schema(**schema.SCHEMA_VERSION_GET)
    def get(self, request: Request, slug: str, version: str) -> Response:
        found = schema_version_get(
            organization_id=request.user.organization_id, slug=slug, version=version
        )
        return Response({"success": True, "data": schema_version_data(found)})


# --- CRM records ------------------------------------------------------------------------------
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
                    _bucket_data(bucket, series.signal.aggregation) for bucket in series.buckets
                ],
            }
            for series in profile.aggregates
        ],
        "engagement_score": profile.engagement_score,
        "insights": [insight_data(insight) for insight in profile.insights],
    }


def _bucket_data(bucket: MetricAggregate, aggregation: str) -> dict[str, Any]:
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


class CrmRecordDetailApi(APIView):
    """GET /v1/records/<type>/<id>: a CRM record's profile; the id may contain '/'."""

    @extend_schema(**schema.CRM_RECORD_GET)
    def get(self, request: Request, record_type: str, record_id: str) -> Response:
        profile = crm_record_profile(
            organization_id=request.user.organization_id, type=record_type, external_id=record_id
        )
        return Response({"success": True, "data": crm_record_data(profile)})

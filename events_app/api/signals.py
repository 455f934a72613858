"""/v1/signals, /v1/signals/<slug> and /v1/signals/<slug>/schemas/<version>: the key's
organization's signals and their JSON Schemas, inactive signals included."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.api_time import iso_utc
from events_app.api import schema
from events_app.api.common import ApiView, success
from signals_app.models import SchemaVersion, Signal, SignalType
from signals_app.selectors import schema_version_get, signal_get, signal_list, signal_rate_limit


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


class SignalListApi(ApiView):
    """GET /v1/signals: every signal of the key's organization, inactive ones included."""

    @extend_schema(**schema.SIGNAL_LIST)
    def get(self, request: Request) -> Response:
        signals = signal_list(organization_id=request.user.organization_id)
        return Response(success([signal_data(signal) for signal in signals]))


class SignalDetailApi(ApiView):
    """GET /v1/signals/<slug>: one signal, inactive or not."""

    @extend_schema(**schema.SIGNAL_GET)
    def get(self, request: Request, slug: str) -> Response:
        signal = signal_get(organization_id=request.user.organization_id, slug=slug)
        return Response(success(signal_data(signal)))


class SchemaVersionDetailApi(ApiView):
    """GET /v1/signals/<slug>/schemas/<n|latest>: the JSON Schema itself."""

    @extend_schema(**schema.SCHEMA_VERSION_GET)
    def get(self, request: Request, slug: str, version: str) -> Response:
        found = schema_version_get(
            organization_id=request.user.organization_id, slug=slug, version=version
        )
        return Response(success(schema_version_data(found)))

"""/v1/signals, /v1/signals/<slug> and /v1/signals/<slug>/schemas/<version>: the key's
organization's signals and their JSON Schemas, inactive signals included."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.errors import NotFound
from bigmind.replicas import read_from_replica
from events_app.api import schema
from events_app.api.common import ApiView, success
from events_app.api.fields import Boolean, Choice, DateTime, FreeObject, Integer, Text
from signals_app.models import (
    Aggregation,
    Compatibility,
    Enforcement,
    Period,
    SchemaVersion,
    Signal,
    SignalType,
)
from signals_app.selectors import schema_version_get, signal_get, signal_list, signal_rate_limit


@dataclass(frozen=True)
class SignalAnswer:
    """What the API says of a signal: the signal, its effective budget and its versions."""

    signal: Signal
    rate_limit_per_minute: int
    rate_limit_is_override: bool
    versions: list[SchemaVersion]  # ascending

    @classmethod
    def of(cls, signal: Signal) -> SignalAnswer:
        rate_limit, overridden = signal_rate_limit(signal=signal)
        # Prefetched by the selectors: no query per signal.
        versions = list(signal.schema_versions.all())
        return cls(signal, rate_limit, overridden, versions)

    @property
    def latest_version(self) -> int | None:
        return self.versions[-1].version if self.versions else None


class SchemaVersionRefSerializer(serializers.Serializer):
    version = Integer(min_value=1)
    created_at = DateTime()


_METRIC_ONLY = ("aggregation", "period", "value_field")


class RedactionRuleSerializer(serializers.Serializer):
    path = Text(help_text="A JSON Pointer into data.", example="/email")
    mode = Choice(["drop", "hash"])


class SignalSerializer(serializers.Serializer):
    signal_id = Text(source="signal.public_id", example="sig_7XTK4W1f")
    slug = Text(source="signal.slug", example="api-calls")
    name = Text(source="signal.name")
    type = Choice(list(SignalType.values), source="signal.type")
    description = Text(source="signal.description")
    ai_instructions = Text(source="signal.ai_instructions")
    active = Boolean(source="signal.active")
    rate_limit_per_minute = Integer(
        min_value=1, help_text="The budget ingest applies (override or the type's default)."
    )
    rate_limit_is_override = Boolean()
    compatibility = Choice(list(Compatibility.values), source="signal.compatibility")
    enforcement = Choice(
        list(Enforcement.values),
        source="signal.enforcement",
        help_text="reject: data failing the schema is a 400; flag: it is accepted, marked "
        "schema_valid false with its violations.",
    )
    redact = RedactionRuleSerializer(
        many=True,
        source="signal.redact",
        help_text="Applied to data before it is stored or logged; validation sees the original.",
    )
    aggregation = Choice(
        list(Aggregation.values),
        source="signal.aggregation",
        required=False,
        help_text="Metric signals only.",
    )
    period = Choice(
        list(Period.values),
        source="signal.period",
        required=False,
        help_text="Metric signals only.",
    )
    value_field = Text(
        source="signal.value_field", required=False, help_text="Metric signals only."
    )
    latest_version = Integer(allow_null=True, min_value=1)
    versions = SchemaVersionRefSerializer(many=True)

    def to_representation(self, instance: SignalAnswer) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        if instance.signal.type != SignalType.METRIC:
            for name in _METRIC_ONLY:
                del data[name]
        return data


class SchemaVersionSerializer(serializers.Serializer):
    signal_id = Text(source="signal.public_id")
    slug = Text(source="signal.slug")
    version = Integer(min_value=1)
    schema = FreeObject(help_text="A JSON Schema, draft 2020-12.")
    created_at = DateTime()


_SLUG = schema.path_parameter("slug", "The signal's slug.", "api-calls", max_length=100)


class SignalListApi(ApiView):
    """GET /v1/signals: every signal of the key's organization, inactive ones included."""

    @extend_schema(
        operation_id="signal_list",
        summary="List signals",
        description="Every signal of the key's organization, inactive ones too, by slug.",
        tags=["signals"],
        parameters=schema.common_headers([200, 401, 503]),
        responses={
            200: OpenApiResponse(response=SignalSerializer(many=True), description="The signals."),
            401: schema.unauthorized(),
            503: schema.unavailable(),
            schema.URI_TOO_LONG: schema.uri_too_long(),
        },
    )
    @read_from_replica()
    def get(self, request: Request) -> Response:
        signals = signal_list(
            organization_id=request.user.organization_id, slugs=request.user.signals
        )
        answers = [SignalAnswer.of(signal) for signal in signals]
        return Response(success(SignalSerializer(answers, many=True).data))


class SignalDetailApi(ApiView):
    """GET /v1/signals/<slug>: one signal, inactive or not."""

    @extend_schema(
        operation_id="signal_get",
        summary="Get one signal",
        description="One signal, active or not (ingest still refuses inactive ones).",
        tags=["signals"],
        parameters=[_SLUG, *schema.common_headers([200, 401, 404, 503])],
        responses={
            200: OpenApiResponse(response=SignalSerializer, description="The signal."),
            401: schema.unauthorized(),
            404: schema.error_response(
                "No signal with that slug in the key's organization: `signal_not_found`.",
                (404, "Signal not found: no-such-signal", "signal_not_found"),
            ),
            503: schema.unavailable(),
            schema.URI_TOO_LONG: schema.uri_too_long(),
        },
    )
    @read_from_replica(primary_on=(NotFound,))
    def get(self, request: Request, slug: str) -> Response:
        signal = signal_get(
            organization_id=request.user.organization_id, slug=slug, slugs=request.user.signals
        )
        return Response(success(SignalSerializer(SignalAnswer.of(signal)).data))


class SchemaVersionDetailApi(ApiView):
    """GET /v1/signals/<slug>/schemas/<n|latest>: the JSON Schema itself."""

    @extend_schema(
        operation_id="schema_version_get",
        summary="Get a signal's JSON Schema",
        description="The JSON Schema (draft 2020-12) of one version of a signal's `data`.",
        tags=["signals"],
        parameters=[
            _SLUG,
            schema.path_parameter(
                "version",
                "A version number or `latest`; anything else is a 404.",
                "latest",
                "1",
                max_length=10,
            ),
            *schema.common_headers([200, 401, 404, 503]),
        ],
        responses={
            200: OpenApiResponse(response=SchemaVersionSerializer, description="The schema."),
            401: schema.unauthorized(),
            404: schema.error_response(
                "No such signal (`signal_not_found`, checked first) or version "
                "(`schema_version_not_found`).",
                (
                    404,
                    "Schema version 3 not found for signal api-calls",
                    "schema_version_not_found",
                ),
            ),
            503: schema.unavailable(),
            schema.URI_TOO_LONG: schema.uri_too_long(),
        },
    )
    @read_from_replica(primary_on=(NotFound,))
    def get(self, request: Request, slug: str, version: str) -> Response:
        found = schema_version_get(
            organization_id=request.user.organization_id,
            slug=slug,
            version=version,
            slugs=request.user.signals,
        )
        return Response(success(SchemaVersionSerializer(found).data))

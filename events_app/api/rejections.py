"""GET /v1/rejections: the key's organization's refused events (schema violations and unknown
signals), newest first, a page at a time; events_app/ingest/rejections.py keeps them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.replicas import read_from_replica
from events_app.api import schema
from events_app.api.common import (
    ApiView,
    QueryChoice,
    QueryCursor,
    QueryDateTime,
    QueryLimit,
    QueryText,
    query_parse,
    success,
)
from events_app.api.events import IdentitySerializer
from events_app.api.fields import Boolean, Choice, DateTime, Integer, PassedList, Text, Uuid
from events_app.ingest.auth import ApiClient
from events_app.ingest.rejections import RejectionFilters, rejection_list
from events_app.models import RejectionReason


class RejectionSerializer(serializers.Serializer):
    """A request refused for a schema violation or an unknown signal (one batch item counts as one request), as the API answered it."""  # noqa: E501

    id = Uuid()
    signal = Text(
        source="signal_slug", help_text="The `signal` as sent (empty when it was not a string)."
    )
    reason = Choice(list(RejectionReason.values), help_text="The `code` the API answered with.")
    error = Text(
        source="message",
        help_text="The exact `error` the API answered with.",
        example="Signal not found: no-such-signal",
    )
    details = PassedList(
        source="violations",
        child=schema.SchemaViolationSerializer(),
        help_text=(
            "The violations (`schema_validation_failed`), a redacted value shown as "
            "`<redacted>`; empty otherwise."
        ),
    )
    body = Text(
        help_text=(
            "The request body as sent (a batch item: the item, re-encoded as compact JSON; "
            "for a signal with redaction rules, re-encoded with its `data` redacted), cut to "
            "`BIGMIND_REJECTION_BODY_MAX_BYTES` (16 KiB by default) at a UTF-8 character "
            "boundary."
        )
    )
    body_truncated = Boolean(help_text="Whether `body` was cut.")
    body_bytes = Integer(min_value=0, help_text="Size of the body as sent, in bytes.")
    identity = IdentitySerializer(
        source="*", allow_null=True, help_text="The event's identity, when it had one."
    )
    received_at = DateTime(help_text="When the API refused it, UTC.")
    replayed_event_id = Uuid(
        allow_null=True, help_text="The event stored when staff replayed it after a fix."
    )
    replayed_at = DateTime(allow_null=True)

    def to_representation(self, instance: Any) -> dict[str, Any]:
        data: dict[str, Any] = super().to_representation(instance)
        # A refused request may have had no (usable) identity: null, not two empty strings.
        if not (instance.identity_type and instance.identity_id):
            data["identity"] = None
        return data


class RejectionListQuery(serializers.Serializer):
    """The filters and page of GET /v1/rejections."""

    signal = QueryText(max_length=100, help_text="Exact match on the `signal` sent.")
    reason = QueryChoice(list(RejectionReason.values), help_text="The refusal's `code`.")
    since = QueryDateTime(
        help_text=(
            "Refused at or after it. ISO 8601 (a date alone is midnight UTC; no offset means "
            "UTC; percent-encode `+` as `%2B`)."
        )
    )
    until = QueryDateTime(help_text="Refused before it (exclusive). Same forms.")
    limit = QueryLimit(help_text="Page size.")
    cursor = QueryCursor()


class RejectionListApi(ApiView):
    """GET /v1/rejections: refused events of the key's organization, newest first, by cursor."""

    @extend_schema(
        operation_id="rejection_list",
        summary="List rejected events",
        description=(
            "Requests of the key's organization refused for a schema violation "
            "(`schema_validation_failed`) or an unknown signal (`signal_not_found`), by "
            "`POST /v1/events` or per item by `POST /v1/events/batch`: what was sent and what "
            "the API answered. Newest first (`received_at`, then `id`), a page at a time, like "
            "`GET /v1/events`. At most 60 are kept per organization and minute (the rest are "
            "counted only) and for 14 days (both configurable, docs/operations.md)."
        ),
        tags=["events"],
        parameters=[RejectionListQuery, *schema.LIST_HEADERS],
        responses={
            200: OpenApiResponse(
                response=RejectionSerializer(many=True), description="One page of rejections."
            ),
            400: schema.list_invalid(
                (
                    400,
                    "reason must be one of schema_validation_failed, signal_not_found",
                    "invalid_parameter",
                )
            ),
            401: schema.unauthorized(),
            503: schema.unavailable(),
            schema.URI_TOO_LONG: schema.uri_too_long(),
        },
    )
    @read_from_replica()
    def get(self, request: Request) -> Response:
        query = query_parse(RejectionListQuery, request)
        limit, cursor = query.pop("limit"), query.pop("cursor")
        client: ApiClient = request.user
        if query["signal"] is not None:
            client.signal_allowed_check(query["signal"])
        page = rejection_list(
            organization_id=client.organization_id,
            filters=RejectionFilters(**query),
            limit=limit,
            cursor=cursor,
            signals=client.signals,
        )
        return Response(
            success(
                RejectionSerializer(page.rejections, many=True).data,
                next_cursor=page.next_cursor,
            )
        )

"""GET /v1/rejections: the key's organization's refused events (schema violations and unknown
signals), newest first, a page at a time; events_app/ingest/rejections.py keeps them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.api_time import iso_utc
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
from events_app.ingest.rejections import RejectionFilters, rejection_list
from events_app.models import RejectedEvent, RejectionReason


def rejection_data(rejection: RejectedEvent) -> dict[str, Any]:
    identity = None
    if rejection.identity_type and rejection.identity_id:
        identity = {"type": rejection.identity_type, "id": rejection.identity_id}
    return {
        "id": str(rejection.id),
        "signal": rejection.signal_slug,
        "reason": rejection.reason,
        "error": rejection.message,
        "details": rejection.violations,
        "body": rejection.body,
        "body_truncated": rejection.body_truncated,
        "body_bytes": rejection.body_bytes,
        "identity": identity,
        "received_at": iso_utc(rejection.received_at),
        "replayed_event_id": (
            str(rejection.replayed_event_id) if rejection.replayed_event_id else None
        ),
        "replayed_at": iso_utc(rejection.replayed_at),
    }


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

    @extend_schema(**schema.REJECTION_LIST, parameters=[RejectionListQuery, *schema.LIST_HEADERS])
    def get(self, request: Request) -> Response:
        query = query_parse(RejectionListQuery, request)
        limit, cursor = query.pop("limit"), query.pop("cursor")
        page = rejection_list(
            organization_id=request.user.organization_id,
            filters=RejectionFilters(**query),
            limit=limit,
            cursor=cursor,
        )
        return Response(
            success(
                [rejection_data(rejection) for rejection in page.rejections],
                next_cursor=page.next_cursor,
            )
        )

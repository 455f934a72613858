"""GET /v1/rejections: the key's organization's refused events (schema violations and unknown
signals), newest first, a page at a time; events_app/ingest/rejections.py keeps them."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bigmind.api_time import iso_utc
from events_app.api import schema
from events_app.api.read_views import (
    _invalid,
    _query_datetime,
    _query_limit,
    _query_text,
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


def _rejection_filters(request: Request) -> RejectionFilters:
    reason = _query_text(request, "reason")
    if reason is not None and reason not in RejectionReason.values:
        raise _invalid(f"reason must be one of {', '.join(RejectionReason.values)}")
    return RejectionFilters(
        signal=_query_text(request, "signal"),
        reason=reason,
        since=_query_datetime(request, "since"),
        until=_query_datetime(request, "until"),
    )


class RejectionListApi(APIView):
    """GET /v1/rejections: refused events of the key's organization, newest first, by cursor."""

    @extend_schema(**schema.REJECTION_LIST)
    def get(self, request: Request) -> Response:
        filters = _rejection_filters(request)
        limit = _query_limit(request)
        cursor = request.query_params.get("cursor") or None
        page = rejection_list(
            organization_id=request.user.organization_id,
            filters=filters,
            limit=limit,
            cursor=cursor,
        )
        return Response(
            {
                "success": True,
                "data": [rejection_data(rejection) for rejection in page.rejections],
                "next_cursor": page.next_cursor,
            }
        )

"""POST /v1/events/validate: every check of ingest, nothing stored, no budget spent."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from events_app.api import schema
from events_app.api.common import ApiView, request_body_read, success
from events_app.ingest.services import event_validate


class EventValidateApi(ApiView):
    """POST /v1/events/validate: every check of ingest, nothing stored, no budget spent."""

    @extend_schema(**schema.EVENT_VALIDATE)
    def post(self, request: Request) -> Response:
        raw = request_body_read(request, limit=settings.BIGMIND_EVENT_MAX_BODY_BYTES)
        result = event_validate(
            client=request.user,
            raw_body=raw,
            idempotency_header=request.META.get("HTTP_IDEMPOTENCY_KEY"),
        )
        data = {
            "valid": True,
            "signal_id": result.signal.public_id,
            "schema_version": result.schema_version,
        }
        return Response(success(data), headers=result.rate.headers())

from __future__ import annotations

import re
import threading
from typing import Any

from django.http import HttpResponseBase
from django.urls import path, re_path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularSwaggerView,
    SpectacularYAMLAPIView,
)
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from bigmind.errors import handler404
from events_app.api.read_views import (
    CrmRecordDetailApi,
    EventCollectionApi,
    EventDetailApi,
    SchemaVersionDetailApi,
    SignalDetailApi,
    SignalListApi,
)
from events_app.api.rejection_views import RejectionListApi
from events_app.api.views import EventBatchApi, EventValidateApi

# drf-spectacular loads its extensions lazily during the first schema generation, and that is
# not thread-safe: two first requests in one threaded worker made one of them a 500
# (docs/fuzzing.md). One generation at a time per process; the document is small.
_SCHEMA_LOCK = threading.Lock()


class _JsonErrors:
    """The document views render with their own renderer (YAML, the OpenAPI media type, an
    HTML template): their errors (405, 406...) and OPTIONS would come out in it. Everything
    but the document itself is JSON in the envelope, as on every other /v1 path (SPEC §2)."""

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if isinstance(response, Response) and (
            response.status_code >= 400 or request.method not in ("GET", "HEAD")
        ):
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc,no-any-return]


class OpenApiJsonApi(_JsonErrors, SpectacularJSONAPIView):
    @extend_schema(exclude=True)  # the document is not an operation of itself
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with _SCHEMA_LOCK:
            return super().get(request, *args, **kwargs)


class OpenApiYamlApi(_JsonErrors, SpectacularYAMLAPIView):
    @extend_schema(exclude=True)
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with _SCHEMA_LOCK:
            return super().get(request, *args, **kwargs)


class ApiDocsPage(_JsonErrors, SpectacularSwaggerView):
    pass


_ROUTES = [
    path("events", EventCollectionApi.as_view(), name="event-ingest"),
    path("events/batch", EventBatchApi.as_view(), name="event-batch"),
    path("events/validate", EventValidateApi.as_view(), name="event-validate"),
    # --- write routes (batch, validate) above; read routes below ---
    # `path`, not `str` or `uuid`: a malformed id such as "../x" must reach the view and get
    # the event's own 404, not the catch-all's.
    path("events/<path:event_id>", EventDetailApi.as_view(), name="event-detail"),
    path("rejections", RejectionListApi.as_view(), name="rejection-list"),
    path("signals", SignalListApi.as_view(), name="signal-list"),
    path("signals/<str:slug>", SignalDetailApi.as_view(), name="signal-detail"),
    path(
        "signals/<str:slug>/schemas/<str:version>",
        SchemaVersionDetailApi.as_view(),
        name="schema-version-detail",
    ),
    # A CRM id is the customer's string and may contain '/': it takes the rest of the path.
    path(
        "records/<str:record_type>/<path:record_id>",
        CrmRecordDetailApi.as_view(),
        name="record-detail",
    ),
    # The OpenAPI document and its docs page: no API key needed (SPECTACULAR_SETTINGS).
    path("openapi.json", OpenApiJsonApi.as_view(), name="openapi-json"),
    path("openapi.yaml", OpenApiYamlApi.as_view(), name="openapi-yaml"),
    path("docs", ApiDocsPage.as_view(url_name="openapi-json"), name="api-docs"),
]
# A route with a trailing slash is not the route: 404 `not_found`, naming the path without it
# (bigmind.errors.handler404). First, so that `events/<path:event_id>` does not take
# "batch/" for an event id and answer a POST to /v1/events/batch/ with 405.
_FIXED_ROUTES = "|".join(
    re.escape(str(route.pattern)) for route in _ROUTES if "<" not in str(route.pattern)
)
urlpatterns = [
    re_path(rf"^(?:{_FIXED_ROUTES})/+$", handler404, name="trailing-slash"),
    *_ROUTES,
    # Unknown /v1 paths answer in the envelope even with DEBUG on (Django's debug 404 is HTML).
    re_path(r"^.*$", handler404),
]

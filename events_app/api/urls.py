from __future__ import annotations

import threading
from typing import Any

from django.urls import path, re_path
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularSwaggerView,
    SpectacularYAMLAPIView,
)

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


class OpenApiJsonApi(SpectacularJSONAPIView):
    @extend_schema(exclude=True)  # the document is not an operation of itself
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with _SCHEMA_LOCK:
            return super().get(request, *args, **kwargs)


class OpenApiYamlApi(SpectacularYAMLAPIView):
    @extend_schema(exclude=True)
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with _SCHEMA_LOCK:
            return super().get(request, *args, **kwargs)


urlpatterns = [
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
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi-json"), name="api-docs"),
    # Unknown /v1 paths answer in the envelope even with DEBUG on (Django's debug 404 is HTML).
    re_path(r"^.*$", handler404),
]

"""/v1/openapi.json, /v1/openapi.yaml and /v1/docs: the OpenAPI document (drf-spectacular,
from the resource modules' declarations and events_app/api/schema.py) and its docs page. No API
key is needed to read them (SPECTACULAR_SETTINGS)."""

from __future__ import annotations

import threading
from typing import Any

from django.http import HttpResponseBase
from drf_spectacular.utils import extend_schema
from drf_spectacular.views import (
    SpectacularJSONAPIView,
    SpectacularSwaggerView,
    SpectacularYAMLAPIView,
)
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

# drf-spectacular loads its extensions lazily during the first schema generation, and that is
# not thread-safe: two first requests in one threaded worker made one of them a 500
# (docs/fuzzing.md). One generation at a time per process; the document is small.
SCHEMA_LOCK = threading.Lock()


def json_errors(request: Request, response: HttpResponseBase) -> None:
    """The document views render with their own renderer (YAML, the OpenAPI media type, an
    HTML template): their errors (405, 406...) and OPTIONS would come out in it. Everything
    but the document itself is JSON in the envelope, as on every other /v1 path (SPEC §2)."""
    if isinstance(response, Response) and (
        response.status_code >= 400 or request.method not in ("GET", "HEAD")
    ):
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = JSONRenderer.media_type


class _JsonErrors:
    """Mixed into the three document views: their errors and OPTIONS answer in the envelope."""

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        json_errors(request, response)
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


class _OneGenerationAtATime(_JsonErrors):
    """The two document views: generation under SCHEMA_LOCK."""

    @extend_schema(exclude=True)  # the document is not an operation of itself
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with SCHEMA_LOCK:
            return super().get(request, *args, **kwargs)  # type: ignore[misc]


class OpenApiJsonApi(_OneGenerationAtATime, SpectacularJSONAPIView):
    pass


class OpenApiYamlApi(_OneGenerationAtATime, SpectacularYAMLAPIView):
    pass


class ApiDocsPage(_JsonErrors, SpectacularSwaggerView):
    pass

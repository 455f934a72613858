"""What OPTIONS answers on the API's DRF views (REST_FRAMEWORK's DEFAULT_METADATA_CLASS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework.metadata import BaseMetadata
from rest_framework.request import Request

if TYPE_CHECKING:  # DRF imports this module while it defines APIView
    from rest_framework.views import APIView


class EnvelopeMetadata(BaseMetadata):
    """The methods of the path, in the envelope (SPEC §2: every answer under /v1 is), beside
    the `Allow` header DRF puts on every answer. DRF's own metadata was a bare object
    (`name`, `renders`, `parses`) outside the envelope."""

    def determine_metadata(self, request: Request, view: APIView) -> dict[str, Any]:
        return {"success": True, "data": {"methods": list(view.allowed_methods)}}

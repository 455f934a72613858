from __future__ import annotations

from typing import Any

from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request


class JsonOnlyNegotiation(BaseContentNegotiation):
    """The API speaks JSON only: answer JSON whatever the Accept header says.

    DRF's default negotiation parses Accept on every request (measurable on the ingest path)
    and answers 406 to a client that asked for something else; a JSON answer serves it better.
    """

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        renderer = renderers[0]
        return renderer, renderer.media_type

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.contrib.auth.middleware import (
    AuthenticationMiddleware as DjangoAuthenticationMiddleware,
)
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as DjangoSessionMiddleware
from django.http import HttpRequest, HttpResponse

# A client-sent id is echoed only if it is short and harmless in a log line or a header.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class RequestIdMiddleware:
    """Give every request an id (the client's X-Request-ID when sane) and echo it back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _SAFE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


# The JSON API: authenticated by API key on every request, no cookies, no session, no
# messages (SPEC §2). The browser middleware below does nothing for it but cost CPU. The
# benchmark's bare views (bigmind/bench.py, routed only with BIGMIND_BENCHMARK_ENDPOINTS) are
# baselines for the API, so they get the API's middleware, no more and no less.
API_PATH_PREFIXES = ("/v1/", "/bench/")


class _BrowserOnly:
    """Run this Django middleware for the admin and other browser pages, not for the API.

    Measured by scripts/bench_middleware.py (docs/benchmarks.md, "What each middleware
    costs"): sessions, auth and messages cost about 26 µs per API request, of which messages
    (a cookie and a session storage built and updated per request) are the most. An API
    request never reads `request.session` or Django's `request.user` (DRF's
    ApiKeyAuthentication sets the client as the user), and never adds a message. Subclasses
    keep Django's classes, so the admin's system checks (admin.E408-E410) still find them.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info.startswith(API_PATH_PREFIXES):
            return self.get_response(request)  # type: ignore[attr-defined,no-any-return]
        return super().__call__(request)  # type: ignore[misc,no-any-return]


class SessionMiddleware(_BrowserOnly, DjangoSessionMiddleware):
    """Django's, for browser pages only (`_BrowserOnly`)."""


class AuthenticationMiddleware(_BrowserOnly, DjangoAuthenticationMiddleware):
    """Django's, for browser pages only (`_BrowserOnly`)."""


class MessageMiddleware(_BrowserOnly, DjangoMessageMiddleware):
    """Django's, for browser pages only (`_BrowserOnly`)."""

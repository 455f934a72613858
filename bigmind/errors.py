"""Domain errors and the one place that renders them.

Services raise an `ApplicationError` (or a subclass) carrying the HTTP status, a stable `code`
and the message. `exception_handler` renders every error of the API, ours and DRF's, as the
envelope `{"success": false, "error": ..., "code": ..., "details": [...]}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class ApplicationError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details
        self.headers: dict[str, str] = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, code=self.code, details=self.details)


class BadRequest(ApplicationError):
    status_code = 400
    code = "bad_request"


class Unauthorized(ApplicationError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApplicationError):
    status_code = 403
    code = "forbidden"


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(ApplicationError):
    status_code = 413
    code = "body_too_large"


class RateLimited(ApplicationError):
    status_code = 429
    code = "rate_limited"


class ServiceUnavailable(ApplicationError):
    status_code = 503
    code = "service_unavailable"


def error_envelope(
    message: str, *, code: str | None = None, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if code:
        body["code"] = code
    if details is not None:
        body["details"] = details
    return body


def _drf_message(data: Any) -> str:
    """Flatten DRF's error payloads (a string, list or dict of lists) into one sentence."""
    if isinstance(data, dict):
        if "detail" in data:
            return _drf_message(data["detail"])
        return "; ".join(f"{key}: {_drf_message(value)}" for key, value in data.items())
    if isinstance(data, list):
        return "; ".join(_drf_message(item) for item in data)
    return str(data)


def as_application_error(exc: Exception) -> ApplicationError | None:
    """The ApplicationError an exception answers as, or None for one that is not ours (a bug,
    or DRF's own): a database outage is a 503, not a 500."""
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or refusing connections: an outage, not a bug. Say so in the
        # envelope with a hint to retry, instead of a bare 500.
        logger.error("database unavailable", exc_info=exc)
        return ServiceUnavailable(
            "Service temporarily unavailable: the database cannot be reached",
            headers={"Retry-After": "5"},
        )
    return exc if isinstance(exc, ApplicationError) else None


def error_headers(exc: ApplicationError) -> dict[str, str]:
    headers = dict(exc.headers)
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return headers


# DRF's JSONRenderer settings (UNICODE_JSON, STRICT_JSON, COMPACT_JSON); one encoder, made once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """JSON exactly as DRF's JSONRenderer writes it (compact, UTF-8, U+2028/9 escaped), for the
    views that answer without DRF (events_app/api/events.py: POST /v1/events)."""
    text = _ENCODER.encode(data)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").encode()


def json_response(data: Any, *, status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json_bytes(data)
    response = HttpResponse(body, status=status, content_type="application/json")
    response["Content-Length"] = str(len(body))
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # Imported here: rest_framework.views reads the API settings, which import our
    # authentication class, which imports this module.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    error = as_application_error(exc)
    if error is not None:
        set_rollback()
        return Response(error.envelope(), status=error.status_code, headers=error_headers(error))

    # DRF's own handler keeps WWW-Authenticate, Retry-After and the rollback; we only reshape.
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = None
    if isinstance(exc, drf_exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else None
    elif isinstance(exc, Http404):
        code = "not_found"
    response.data = error_envelope(_drf_message(response.data), code=code)
    return response


# Django-level handlers, so even a URL that matches no view answers in the envelope. Compact
# JSON with a Content-Length (json_response), like every other answer of the API: an error
# raised before CommonMiddleware (DisallowedHost) never gets one added.
API_PREFIX = "/v1/"


def is_api_path(request: HttpRequest) -> bool:
    path = request.path_info
    return path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/")


def _not_found_message(request: HttpRequest) -> str:
    path = request.path
    if path.endswith("/") and len(path) > 1:
        # /v1/events/ or /v1/events/batch/: the route exists without the slash. Say so; a
        # redirect would lose a POST's body (and APPEND_SLASH adds slashes, not removes them).
        from django.urls import Resolver404, resolve

        bare = path.rstrip("/")
        try:
            match = resolve(request.path_info.rstrip("/"))
        except Resolver404:
            match = None
        if match is not None and match.func is not handler404:
            return f"Not found: {path} (API paths have no trailing slash: {bare})"
    return f"Not found: {path}"


# Exempt from CSRF: it answers every unknown /v1 path, to every method, and a POST there was
# refused with Django's HTML "CSRF verification failed" page instead of this 404 (issue #12).
@csrf_exempt
def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return json_response(error_envelope(_not_found_message(request), code="not_found"), status=404)


def handler500(request: HttpRequest) -> HttpResponse:
    return json_response(error_envelope("Internal server error", code="internal_error"), status=500)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's own refusals before any view: a Host not in ALLOWED_HOSTS, a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE, too many query or form fields (SuspiciousOperation)."""
    from django.core.exceptions import (
        DisallowedHost,
        RequestDataTooBig,
        TooManyFieldsSent,
        TooManyFilesSent,
    )

    if isinstance(exception, RequestDataTooBig):
        error: ApplicationError = PayloadTooLarge(
            f"Request body is too large: the limit is {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes"
        )
    elif isinstance(exception, DisallowedHost):
        error = BadRequest(
            "Bad request: the Host header names no host of this service", code="invalid_host"
        )
    elif isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        error = BadRequest(
            "Bad request: too many query or form fields "
            f"(the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS})",
            code="too_many_fields",
        )
    else:
        error = BadRequest("Bad request")
    return json_response(error.envelope(), status=error.status_code)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not is_api_path(request):  # the admin and the browser pages keep Django's page
        from django.views.defaults import permission_denied

        return permission_denied(request, exception or PermissionDenied())
    return json_response(error_envelope("Forbidden", code="forbidden"), status=403)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW. Every /v1 view is exempt (the API takes no cookie); should a
    refusal reach a /v1 path all the same, it is in the envelope. The admin's forms keep
    Django's page."""
    if not is_api_path(request):
        from django.views.csrf import csrf_failure as django_csrf_failure

        return django_csrf_failure(request, reason)
    return json_response(error_envelope("Forbidden", code="forbidden"), status=403)

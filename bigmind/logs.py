"""Structured logs: one JSON object per line, one line per request and per Celery task.

`LOG_FORMAT=json` (the default) renders every record with `JsonFormatter`; `LOG_FORMAT=plain`
(`make run`) keeps the one-line text format for humans. The request line is written by
`RequestLogMiddleware` (logger `bigmind.request`), the task line by bigmind/worker_signals.py
(logger `bigmind.task`). What goes into them comes from a context variable that the middleware
(or the task signal) opens and the services fill in as they learn things (`log_context_update`):
the signal, the event ids. Nothing reads a request body or an Authorization header here, so
neither a payload nor an API key can reach a log line through this module.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject

from bigmind.errors import handler404
from bigmind.metrics import http_request_observe

request_logger = logging.getLogger("bigmind.request")

# The fields of the request or task being handled in this thread (or asyncio task).
_context: ContextVar[dict[str, Any] | None] = ContextVar("bigmind_log_context", default=None)

# Event ids kept in one log line; a drained or batch task may touch hundreds.
MAX_EVENT_IDS = 100


def log_context_begin(**fields: Any) -> Token[dict[str, Any] | None]:
    return _context.set(dict(fields))


def log_context_end(token: Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


def log_context() -> dict[str, Any] | None:
    """The open context, or None outside a request or task (then updates are dropped)."""
    return _context.get()


def log_context_update(**fields: Any) -> None:
    context = _context.get()
    if context is not None:
        context.update(fields)


def log_context_add_events(event_ids: Iterable[Any], *, outcome: str | None = None) -> None:
    """Note events this request or task touched (and, in a task, what became of each)."""
    context = _context.get()
    if context is None:
        return
    ids: list[str] = context.setdefault("event_ids", [])
    for event_id in event_ids:
        if len(ids) < MAX_EVENT_IDS:
            ids.append(str(event_id))
        context["event_count"] = context.get("event_count", 0) + 1
        if outcome is not None:
            outcomes: dict[str, int] = context.setdefault("event_outcomes", {})
            outcomes[outcome] = outcomes.get(outcome, 0) + 1


def log_context_add_to_set(name: str, value: str | None, *, limit: int = 20) -> None:
    """Add a value (a signal or organization slug) to a small list without repeats."""
    context = _context.get()
    if context is None or value is None:
        return
    values: list[str] = context.setdefault(name, [])
    if value not in values and len(values) < limit:
        values.append(value)


# --- Formatting --------------------------------------------------------------------------------

# Attributes every LogRecord has: not "extra" fields.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
# Django's loggers attach the HttpRequest (django.request) or the client socket (django.server)
# as `request`; its repr is harmless today, but a request object has no business in a log line.
_NEVER_DUMPED = frozenset({"request"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then every `extra` field.

    Written here rather than taken from python-json-logger: it is twenty lines, and owning it
    lets us drop the request object Django attaches. `ensure_ascii` keeps lone surrogates
    and control characters from a client escaped instead of breaking the line or the stream.
    """

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, tz=UTC)
        line: dict[str, Any] = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in _NEVER_DUMPED or key.startswith("_"):
                continue
            line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=True)


class ContextFilter(logging.Filter):
    """Stamp every record written during a request or task with its request id and task id,
    so a warning deep in a service can be tied to its request line."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _context.get()
        if context is not None:
            for key in ("request_id", "task_id"):
                value = context.get(key)
                if value is not None and not hasattr(record, key):
                    setattr(record, key, value)
        return True


# --- Organization slugs ------------------------------------------------------------------------


# The request line names an API client's organization by slug, but the client only carries its
# id. The app that owns organizations gives the way from one to the other (signals_app's
# AppConfig.ready()), so that the kernel imports no app; until then the line has the id alone.
def _no_slug(organization_id: int | None) -> str | None:
    return None


_organization_slug: Callable[[int | None], str | None] = _no_slug


def organization_slug_resolver_set(resolver: Callable[[int | None], str | None]) -> None:
    global _organization_slug
    _organization_slug = resolver


# --- The request line --------------------------------------------------------------------------

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_ERROR_BODY_MAX = 16 * 1024
UNMATCHED_ROUTE = "<unmatched>"
# Files under STATIC_URL (the admin's and the docs page's CSS, JS, images), answered by WhiteNoise
# before URL resolution: one route label for all of them instead of `<unmatched>`.
STATIC_ROUTE = "/static/<path:path>"
# What the services may note for the request line (events_app.metrics' ingest hooks).
_NOTED = ("signal", "signal_type", "signals", "event_ids", "event_count", "rejected_items")


def request_method_label(request: HttpRequest) -> str:
    # Any token is a valid HTTP method: an unknown one must not become a new metric series.
    method = request.method or ""
    return method if method in _METHODS else "OTHER"


def response_error_code(response: HttpResponse) -> str | None:
    """The envelope's `code` of an error answer: DRF responses keep their data; Django-level
    ones (the 404 and 500 handlers, the probes) are small JSON bodies read back."""
    data = getattr(response, "data", None)
    if (
        data is None
        and not response.streaming
        and response.get("Content-Type", "").startswith("application/json")
        and len(response.content) <= _ERROR_BODY_MAX
    ):
        try:
            data = json.loads(response.content)
        except ValueError:
            return None
    if isinstance(data, dict):
        code = data.get("code")
        if isinstance(code, str) and _CODE.fullmatch(code):
            return code
    return None


def _api_client(request: HttpRequest) -> Any:
    # DRF sets request.user to the API client on the underlying HttpRequest. Anything else
    # there is Django's lazy session user (the admin): never evaluate it (a query) for a log.
    user = request.__dict__.get("user")
    if user is None or isinstance(user, SimpleLazyObject):
        return None
    return user if hasattr(user, "api_key_id") else None


class RequestLogMiddleware:
    """One JSON line per request (logger `bigmind.request`) and the HTTP metrics.

    Fields: request_id, method, route (the URL pattern), status, duration_ms, outcome (`ok`,
    `refused` for 4xx, `error` for 5xx), code (the envelope's error code), organization
    (slug) and organization_id, api_key_id, and what the services noted: signal,
    signal_type (POST /v1/events), signals and rejected_items (a batch), event_ids (at most
    100) and event_count. Placed right after RequestIdMiddleware so that it
    times and sees everything below it. The probe paths (bigmind/health.py) are answered
    before it and are neither logged nor counted.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._observe = http_request_observe
        self._not_found = handler404
        self._static_prefix = _static_path_prefix()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        token = log_context_begin(request_id=getattr(request, "request_id", None))
        try:
            response = self.get_response(request)
            try:
                self._finish(request, response, time.perf_counter() - started)
            except Exception:  # the log line must never cost the client its answer
                request_logger.exception("could not write the request log line")
            return response
        finally:
            log_context_end(token)

    def _finish(self, request: HttpRequest, response: HttpResponse, elapsed: float) -> None:
        context = log_context() or {}
        method = request_method_label(request)
        # The URL pattern that answered ("/v1/events/<path:event_id>"), never the raw path.
        match = getattr(request, "resolver_match", None)
        static = False
        if match is None or match.func is self._not_found:
            route, url_name = UNMATCHED_ROUTE, None
            if self._static_prefix and request.path.startswith(self._static_prefix):
                route, static = STATIC_ROUTE, True
        else:
            route, url_name = "/" + str(match.route), match.url_name
        status = response.status_code
        code = response_error_code(response) if status >= 400 else None
        self._observe(
            method=method, route=route, url_name=url_name, status=status, code=code, seconds=elapsed
        )
        client = _api_client(request)
        line: dict[str, Any] = {
            "request_id": context.get("request_id"),
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": round(elapsed * 1000, 2),
            "outcome": "ok" if status < 400 else ("refused" if status < 500 else "error"),
        }
        if code is not None:
            line["code"] = code
        if client is not None:
            organization_id = getattr(client, "organization_id", None)
            line["organization_id"] = organization_id
            line["organization"] = _organization_slug(organization_id)
            line["api_key_id"] = getattr(client, "api_key_id", None)
        for key in _NOTED:
            if key in context:
                line[key] = context[key]
        # A static file served (or not modified) is logged at DEBUG: a page of the admin loads
        # a dozen of them, which made a third of the log of an admin session (issue #12); the
        # metrics still count them. A refused or failed one (4xx, 5xx) stays at INFO.
        level = logging.DEBUG if static and status < 400 else logging.INFO
        # The message repeats the essentials for LOG_FORMAT=plain, which prints no extras.
        request_logger.log(
            level, "%s %s %s %.1fms", method, route, status, elapsed * 1000, extra=line
        )


def _static_path_prefix() -> str | None:
    """The path under which this app serves static files ("/static/"), or None when
    STATIC_URL is another host's (a CDN): then no request here is a static file's."""
    from urllib.parse import urlsplit

    from django.conf import settings

    url = urlsplit(str(settings.STATIC_URL or ""))
    if url.scheme or url.netloc or not url.path:
        return None
    return "/" + url.path.strip("/") + "/"


class ServerRequestLineFilter(logging.Filter):
    """Drops the request lines of Django's development server (logger `django.server`,
    `manage.py runserver`): RequestLogMiddleware writes one line per request already, and a
    second made every request two lines (issue #12). Its other messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        # WSGIRequestHandler.log_message: "%s" %s %s with (request line, status, size).
        return not (
            getattr(record, "status_code", None) is not None
            and isinstance(record.args, tuple)
            and len(record.args) == 3
        )

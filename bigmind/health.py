"""GET /healthz, GET /readyz, and the middleware that answers them (and /metrics) first.

- /healthz: the process answers; it touches no dependency, so a database outage never gets a
  healthy web process restarted by its supervisor.
- /readyz: the database, the cache and the broker, checked at once in threads, each given
  BIGMIND_READYZ_TIMEOUT_SECONDS; 200 with each check's result, or 503 naming the ones that
  failed. A load balancer takes an instance out of rotation on 503.

`ProbeMiddleware` sits right after RequestIdMiddleware, before everything that could refuse or
redirect a probe: host validation (a load balancer or Kubernetes probes with an IP as Host),
SSL redirects, sessions, CSRF, authentication. There is no rate limit and nothing is cached
(`Cache-Control: no-store`). Error details stay in the server's log: the answer names only the
kind of error, since /readyz is unauthenticated.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from bigmind.errors import error_envelope

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    duration_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "ok": self.ok, "duration_ms": self.duration_ms}
        if self.error is not None:
            body["error"] = self.error
        return body


def database_check() -> None:
    from django.db import DEFAULT_DB_ALIAS, connections

    # A connection of its own, closed after: this runs in a pool thread, where nothing would
    # ever close a thread-local one (Django closes connections at the end of requests).
    wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with wrapper.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        wrapper.close()


def cache_check() -> None:
    from django.core.cache import cache

    # A key of its own each time: two probes at once, or several web processes, never see
    # each other's value, and a stale value left by a broken write cannot pass for a fresh one.
    key = f"readyz:{uuid.uuid4().hex}"
    value = uuid.uuid4().hex
    cache.set(key, value, timeout=30)
    if cache.get(key) != value:
        raise RuntimeError("the cache did not return the value just written")
    cache.delete(key)


def broker_check() -> None:
    url = settings.CELERY_BROKER_URL
    timeout = settings.BIGMIND_READYZ_TIMEOUT_SECONDS
    if url.startswith("filesystem://"):
        # The embedded broker is folders: they must exist and be writable by this process.
        options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            folder = str(options.get(key) or "")
            if folder and not (os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK)):
                raise OSError(f"broker folder {key} is missing or not writable")
        return
    from bigmind.celery import app

    # The app's transport and options (TLS, the Redis transport options), with short timeouts.
    with app.connection_for_write(
        url,
        connect_timeout=timeout,
        transport_options={"socket_connect_timeout": timeout, "socket_timeout": timeout},
    ) as conn:
        # No retry: a probe must answer now; its caller probes again.
        conn.ensure_connection(max_retries=0, reraise_as_library_errors=False, timeout=timeout)


CHECKS: dict[str, Callable[[], None]] = {
    "database": database_check,
    "cache": cache_check,
    "broker": broker_check,
}

# One thread per check at most: a check that hangs (an unreachable host dropping packets) is
# still running when the next probe comes, which then waits on that same run instead of
# starting another, so hung probes cannot pile up threads. `_running` is a plain dict, not a
# cache: an entry is the run in flight and must stay until it ends, whatever its age.
_executor: ThreadPoolExecutor | None = None
_executor_pid: int | None = None
_running: dict[str, Future[CheckResult]] = {}
_lock = threading.Lock()


def _timed(name: str, check: Callable[[], None]) -> CheckResult:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:
        logger.warning("readyz: %s check failed: %s: %s", name, type(exc).__name__, exc)
        return CheckResult(name, False, _ms(started), type(exc).__name__)
    return CheckResult(name, True, _ms(started))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _submit(name: str, check: Callable[[], None]) -> Future[CheckResult]:
    global _executor, _executor_pid
    # A pool made before a fork (gunicorn --preload) has no threads in the child.
    if _executor is None or _executor_pid != os.getpid():
        _executor = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="readyz")
        _executor_pid = os.getpid()
        _running.clear()
    running = _running.get(name)
    if running is not None and not running.done():
        return running
    future = _running[name] = _executor.submit(_timed, name, check)
    return future


# The last answer and when it was taken (time.monotonic()): /readyz is unauthenticated and opens
# a database connection per check, so a flood of probes reuses one answer per
# BIGMIND_READYZ_CACHE_SECONDS instead of opening a connection each.
_last: tuple[float, list[CheckResult]] | None = None


def readiness_checks_run() -> list[CheckResult]:
    global _last
    memo = settings.BIGMIND_READYZ_CACHE_SECONDS
    with _lock:
        if memo > 0 and _last is not None and time.monotonic() - _last[0] < memo:
            return _last[1]
    results = _checks_run()
    with _lock:
        _last = (time.monotonic(), results)
    return results


def readiness_memo_clear() -> None:
    global _last
    with _lock:
        _last = None


def _checks_run() -> list[CheckResult]:
    timeout = settings.BIGMIND_READYZ_TIMEOUT_SECONDS
    started = time.perf_counter()
    with _lock:
        futures = {name: _submit(name, check) for name, check in CHECKS.items()}
    results = []
    for name, future in futures.items():
        remaining = max(0.0, timeout - (time.perf_counter() - started))
        try:
            results.append(future.result(timeout=remaining))
        except FutureTimeout:
            logger.warning("readyz: %s check gave no answer within %.1f s", name, timeout)
            results.append(CheckResult(name, False, _ms(started), "timeout"))
    return results


def _no_store(response: HttpResponse) -> HttpResponse:
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _no_store(JsonResponse({"success": True, "data": {"status": "ok"}}))


def readyz(request: HttpRequest) -> HttpResponse:
    results = readiness_checks_run()
    checks = [result.as_dict() for result in results]
    failed = [result.name for result in results if not result.ok]
    if not failed:
        body = {"success": True, "data": {"status": "ready", "checks": checks}}
        return _no_store(JsonResponse(body))
    body = error_envelope(
        f"Not ready: {', '.join(failed)} unavailable", code="not_ready", details=checks
    )
    return _no_store(JsonResponse(body, status=503, headers={"Retry-After": "5"}))


def _probe_views() -> dict[str, Callable[[HttpRequest], HttpResponse]]:
    from bigmind.metrics import metrics_view

    return {"/healthz": healthz, "/readyz": readyz, "/metrics": metrics_view}


class ProbeMiddleware:
    """Answers /healthz, /readyz and /metrics before the rest of the stack (see the module)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.views = _probe_views()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        view = self.views.get(request.path_info)
        if view is None:
            return self.get_response(request)
        if view is not self.views["/metrics"] and request.method not in ("GET", "HEAD"):
            return JsonResponse(
                error_envelope("Method not allowed", code="method_not_allowed"),
                status=405,
                headers={"Allow": "GET, HEAD"},
            )
        return view(request)

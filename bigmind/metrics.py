"""Prometheus metrics: the registry, the HTTP and Celery task metrics, and how they are served.

Every metric is listed with its labels in docs/operations.md ("Metrics"). Counting is a counter
increment on the hot path, never I/O. The kernel owns only what any app has (HTTP requests,
Celery tasks); the domain metrics (events accepted, rejected, completed; the backlog) are
events_app's (events_app/metrics.py), which plugs into two hooks here from its
`AppConfig.ready()`, so that this module imports no app: `http_refusal_observer_register` (count
the refusals of one of its routes, from the answer) and `scrape_collector_register` (numbers
computed by a query when the web's /metrics is scraped, bounded).

Several processes: gunicorn runs several web workers and Celery's prefork pool several children,
each with its own memory. With PROMETHEUS_MULTIPROC_DIR set (before this module is first
imported: prometheus_client reads it then), every process writes its samples to files there and
a scrape adds them up (`multiprocess.MultiProcessCollector`). Each gunicorn master and each
Celery worker needs its own empty directory: `gunicorn_on_starting` and the worker's
`worker_init` (bigmind/worker_signals.py) empty it, `gunicorn_child_exit` and
`worker_process_shutdown` tell prometheus_client a process is gone.

Protection: /metrics (and the worker's metrics port) answers only a client whose address, and
every address a proxy says it forwarded for, is in BIGMIND_METRICS_ALLOWED_NETWORKS (default:
loopback), or one that sends `Authorization: Bearer <BIGMIND_METRICS_TOKEN>`; anyone else gets a
403 in the JSON envelope.
"""

from __future__ import annotations

import glob
import hmac
import ipaddress
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import Collector

from bigmind.errors import error_envelope

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- The metrics -------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "bigmind_http_requests",
    "HTTP requests answered, by URL pattern (never the raw path), method and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "bigmind_http_request_duration_seconds",
    "Time to answer an HTTP request, by URL pattern and method.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WORKER_TASKS = Counter(
    "bigmind_worker_tasks",
    "Celery tasks by name and outcome (success, failure, retry, revoked, rejected, unknown).",
    ["task", "outcome"],
)
WORKER_TASK_DURATION = Histogram(
    "bigmind_worker_task_duration_seconds",
    "Time a Celery task ran, by name.",
    ["task"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)

# Read replicas (bigmind/replicas.py): counted only where DATABASE_REPLICA_URLS is set.
REPLICA_READS = Counter(
    "bigmind_replica_reads",
    "Replica-read scopes (read API requests, admin list pages), by the database that served them.",
    ["database"],
)
REPLICA_FALLBACKS = Counter(
    "bigmind_replica_fallbacks",
    "Reads run again on the primary after their replica's answer, by reason.",
    ["reason"],
)
REPLICA_CHECKS = Counter(
    "bigmind_replica_checks",
    "Replica health verdicts (healthy, lagging, down, not_in_recovery), by replica.",
    ["database", "verdict"],
)

# --- Counting hooks (called by the middleware; the apps plug in their own) --------------------

# (method, status, envelope code) of a refused answer (status >= 400) of one route.
RefusalObserver = Callable[[str, int, str | None], None]
_refusal_observers: dict[str, RefusalObserver] = {}
# Made at each scrape of the web's /metrics (never the worker's: every worker repeating a
# query-backed number would multiply its queries).
_scrape_collectors: list[Callable[[], Collector]] = []


def http_refusal_observer_register(url_name: str, observer: RefusalObserver) -> None:
    """Call `observer` for every refused answer of the route named `url_name` (an app counts
    its own refusals by its own metrics; events_app: the ingest endpoints). Idempotent."""
    _refusal_observers[url_name] = observer


def scrape_collector_register(factory: Callable[[], Collector]) -> None:
    """Add `factory()` to every scrape of the web's /metrics. Idempotent."""
    if factory not in _scrape_collectors:
        _scrape_collectors.append(factory)


@lru_cache(maxsize=4096)
def metric_child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set (of bounded count: methods,
    route patterns, statuses, signal types) instead of on every request: `labels()` takes the
    metric's lock and builds its key each time (about 2% of an ingest request's CPU, py-spy).
    The child stays valid: prometheus_client never drops one unless told to (`remove`,
    `clear`, which this code never calls), and a child's multiprocess value re-opens its file
    after a fork."""
    return metric.labels(*labels)


def http_request_observe(
    *,
    method: str,
    route: str,
    url_name: str | None,
    status: int,
    code: str | None,
    seconds: float,
) -> None:
    """One answered request (bigmind.logs.RequestLogMiddleware); `url_name` is its URL's name."""
    metric_child(HTTP_REQUESTS, method, route, str(status)).inc()
    metric_child(HTTP_DURATION, method, route).observe(seconds)
    if status < 400 or url_name is None:
        return
    observer = _refusal_observers.get(url_name)
    if observer is not None:
        observer(method, status, code)


class _Forward(Collector):
    """This process's own registry, inside a per-scrape registry."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def metrics_text(*, scrape_collectors: bool) -> bytes:
    """The exposition text: every process's samples in multiprocess mode, else this one's;
    with `scrape_collectors`, the registered scrape-time collectors too (the web's only)."""
    # auto_describe off: registering must not run the collectors (the backlog's queries).
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    if scrape_collectors:
        for factory in _scrape_collectors:
            registry.register(factory())
    return generate_latest(registry)


# --- Who may read them -------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in spec)


def _address_allowed(text: str, networks: tuple[Any, ...]) -> bool:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[::1]:1234"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "1.2.3.4:1234"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def metrics_access_allowed(meta: Mapping[str, Any]) -> bool:
    """`meta`: Django's request.META or a WSGI environ (the same keys).

    A proxy in front (nginx on the same machine connects from 127.0.0.1) must not make every
    client look local: every address in X-Forwarded-For and X-Real-IP must be allowed too,
    and a `Forwarded` header (whose syntax we do not parse) never passes the network test.
    Adding such headers can only make a client less trusted, so they cannot be forged to gain.
    """
    token = settings.BIGMIND_METRICS_TOKEN
    if token:
        scheme, _, value = str(meta.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode("utf-8", "surrogatepass"), token.encode()
        ):
            return True
    networks = _networks(tuple(settings.BIGMIND_METRICS_ALLOWED_NETWORKS))
    if not networks or meta.get("HTTP_FORWARDED"):
        return False
    addresses = [str(meta.get("REMOTE_ADDR", ""))]
    for header in ("HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP"):
        if meta.get(header):
            addresses += str(meta[header]).split(",")
    return all(_address_allowed(address, networks) for address in addresses)


_FORBIDDEN_MESSAGE = (
    "Metrics are not available to this client: connect from an allowed network or send "
    "the metrics token"
)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics (answered by bigmind.health.ProbeMiddleware, before host validation)."""
    if request.method not in ("GET", "HEAD"):
        return JsonResponse(
            error_envelope("Method not allowed", code="method_not_allowed"),
            status=405,
            headers={"Allow": "GET, HEAD"},
        )
    if not metrics_access_allowed(request.META):
        return JsonResponse(error_envelope(_FORBIDDEN_MESSAGE, code="forbidden"), status=403)
    response = HttpResponse(metrics_text(scrape_collectors=True), content_type=CONTENT_TYPE_LATEST)
    response["Cache-Control"] = "no-store"
    return response


# --- Multiprocess housekeeping (gunicorn's config and the Celery worker call these) ------------


def multiprocess_dir_reset() -> None:
    """Empty PROMETHEUS_MULTIPROC_DIR (creating it) before the other processes write to it:
    files of an earlier run would be added to this one's, and a recycled pid would reuse them.

    This process's own files stay: it may already have opened them (a Celery worker's main
    process imports the task modules, and with them the metrics, before `worker_init`), and
    what it counted into an unlinked file would be lost.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    os.makedirs(path, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for name in glob.glob(os.path.join(path, "*.db")):
        if not name.endswith(own):
            os.remove(name)


def gunicorn_on_starting(server: Any) -> None:
    """gunicorn's `on_starting` hook: `on_starting = bigmind.metrics.gunicorn_on_starting`."""
    multiprocess_dir_reset()


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn's `child_exit` hook: `child_exit = bigmind.metrics.gunicorn_child_exit`."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(worker.pid)


# --- The Celery worker's metrics endpoint --------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return  # a scrape every few seconds is not worth a log line


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _worker_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    if path not in ("/metrics", "/"):
        body = json.dumps(error_envelope("Not found", code="not_found")).encode()
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [body]
    if not metrics_access_allowed(environ):
        body = json.dumps(error_envelope(_FORBIDDEN_MESSAGE, code="forbidden")).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json")])
        return [body]
    # The backlog (a scrape-time collector) is the web's to report: every worker repeating it
    # would multiply the queries.
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
    return [metrics_text(scrape_collectors=False)]


def worker_metrics_server_start(*, port: int, addr: str) -> WSGIServer:
    """Serve /metrics from a daemon thread of the Celery worker's main process."""
    server = make_server(addr, port, _worker_app, _ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server

"""Prometheus metrics: what they are, how they are counted, and how they are served.

Every metric is listed with its labels in docs/operations.md ("Metrics"). Counting is a counter
increment on the hot path, never I/O; the one number that needs a query, the backlog of
pending events, is computed when /metrics is scraped (`BacklogCollector`, bounded).

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
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
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
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bigmind.errors import error_envelope
from bigmind.logs import (
    log_context,
    log_context_add_events,
    log_context_add_to_set,
    log_context_update,
)

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
EVENTS_ACCEPTED = Counter(
    "bigmind_events_accepted",
    "Events stored by POST /v1/events and /v1/events/batch (idempotent replays excluded).",
    ["signal_type"],
)
EVENTS_REJECTED = Counter(
    "bigmind_events_rejected",
    "Ingest requests (or batch items) refused, by the error's `code`; rate limiting excluded.",
    ["reason"],
)
EVENTS_RATE_LIMITED = Counter(
    "bigmind_events_rate_limited",
    "Ingest requests (or batch items) refused with 429 because the signal's budget was spent.",
    ["signal_type"],
)
EVENTS_COMPLETED = Counter(
    "bigmind_events_completed", "Events processed to `completed`.", ["signal_type"]
)
EVENTS_FAILED = Counter(
    "bigmind_events_failed", "Events processed to `failed` (for good).", ["signal_type"]
)
EVENTS_RETRIED = Counter(
    "bigmind_events_retried",
    "Processing attempts that failed transiently and were scheduled again.",
)
PROCESSING_LATENCY = Histogram(
    "bigmind_event_processing_latency_seconds",
    "From an event's arrival (received_at) to its first completion, retries included.",
    ["signal_type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
)
INGEST_GROUP_ROWS = Histogram(
    "bigmind_ingest_group_rows",
    "Events stored per group commit of POST /v1/events (one statement and commit each).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INGEST_GROUP_SECONDS = Histogram(
    "bigmind_ingest_group_seconds",
    "Time to store and commit one group of POST /v1/events rows.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
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

# URL names of the ingest endpoints whose refusals are counted from their answers.
_INGEST_ROUTES = {"event-ingest": {"POST"}, "event-batch": {"POST"}}


def _label(value: str | None) -> str:
    return value or "unknown"


# --- Counting hooks (called by the middleware, the ingest services and the pipeline) -----------


@lru_cache(maxsize=4096)
def _child(metric: Any, *labels: str) -> Any:
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
    _child(HTTP_REQUESTS, method, route, str(status)).inc()
    _child(HTTP_DURATION, method, route).observe(seconds)
    methods = _INGEST_ROUTES.get(url_name or "")
    if status < 400 or methods is None or method not in methods:
        return
    # A refusal of the whole request (one event, or a batch refused whole): counted once.
    # Refused items of an accepted batch are counted by `ingest_batch_observe`.
    if status == 429:
        signal_type = (log_context() or {}).get("signal_type")  # noted by the ingest service
        EVENTS_RATE_LIMITED.labels(_label(signal_type)).inc()
    else:
        EVENTS_REJECTED.labels(code or f"http_{status}").inc()


def ingest_signal_seen(signal: Any) -> None:
    """POST /v1/events resolved its signal (a SignalRef): name it in the request's log line."""
    log_context_update(signal=signal.slug, signal_type=signal.type)


def ingest_event_stored(*, signal: Any, event_id: Any, replayed: bool) -> None:
    if not replayed:
        _child(EVENTS_ACCEPTED, signal.type).inc()
    log_context_add_events([event_id])


def ingest_group_committed(rows: int, seconds: float) -> None:
    """The ingest writer committed a group (events_app/ingest/group_commit.py)."""
    INGEST_GROUP_ROWS.observe(rows)
    INGEST_GROUP_SECONDS.observe(seconds)


def ingest_batch_observe(items: Iterable[Any]) -> None:
    """Count a batch's items (events_app.ingest.batch._Item) and note them in the log line."""
    accepted: Tally[str] = Tally()
    rate_limited: Tally[str] = Tally()
    rejected: Tally[str] = Tally()
    event_ids = []
    for item in items:
        signal = item.signal
        if item.error is None:
            if item.event is not None:
                event_ids.append(item.event.id)
            if not item.replayed and signal is not None:
                accepted[signal.type] += 1
            if signal is not None:
                log_context_add_to_set("signals", signal.slug)
        elif item.error.code == "rate_limited":
            rate_limited[_label(signal.type if signal is not None else None)] += 1
        else:
            rejected[item.error.code] += 1
    for signal_type, count in accepted.items():
        EVENTS_ACCEPTED.labels(signal_type).inc(count)
    for signal_type, count in rate_limited.items():
        EVENTS_RATE_LIMITED.labels(signal_type).inc(count)
    for reason, count in rejected.items():
        EVENTS_REJECTED.labels(reason).inc(count)
    log_context_add_events(event_ids)
    if rejected or rate_limited:
        log_context_update(rejected_items=sum(rejected.values()) + sum(rate_limited.values()))


def event_completed(*, event: Any, signal: Any, at: datetime) -> None:
    """The pipeline committed an event as `completed` (events_app/pipeline/processing.py)."""
    from bigmind.logs import organization_slug

    EVENTS_COMPLETED.labels(signal.type).inc()
    # Only a first completion measures the pipeline: a reprocessed event arrived long ago.
    if event.processed_at is None:
        PROCESSING_LATENCY.labels(signal.type).observe(
            max(0.0, (at - event.received_at).total_seconds())
        )
    log_context_add_events([event.id], outcome="completed")
    log_context_add_to_set("signals", signal.slug)
    log_context_add_to_set("organizations", organization_slug(event.organization_id))


def events_completed(*, signal: Any, events: Sequence[Any], at: datetime) -> None:
    """Several events of one signal committed as `completed` together (a chunk): one counter
    increment; a latency observation for each first completion."""
    from bigmind.logs import organization_slug

    if not events:
        return
    EVENTS_COMPLETED.labels(signal.type).inc(len(events))
    latency = PROCESSING_LATENCY.labels(signal.type)
    for event in events:
        # Only a first completion measures the pipeline: a reprocessed event arrived long ago.
        if event.processed_at is None:
            latency.observe(max(0.0, (at - event.received_at).total_seconds()))
    log_context_add_events([event.id for event in events], outcome="completed")
    log_context_add_to_set("signals", signal.slug)
    for organization_id in {event.organization_id for event in events}:
        log_context_add_to_set("organizations", organization_slug(organization_id))


def event_retry_scheduled(*, event_id: Any) -> None:
    EVENTS_RETRIED.inc()
    log_context_add_events([event_id], outcome="retry")


def event_failed(*, event: Any, signal: Any) -> None:
    """The pipeline committed an event as `failed` (events_app/pipeline/processing.py)."""
    from bigmind.logs import organization_slug

    EVENTS_FAILED.labels(signal.type).inc()
    log_context_add_events([event.id], outcome="failed")
    log_context_add_to_set("signals", signal.slug)
    log_context_add_to_set("organizations", organization_slug(event.organization_id))


# --- The backlog, computed at scrape time ------------------------------------------------------


class BacklogCollector(Collector):
    """Pending and processing events now, each count stopping at BIGMIND_METRICS_BACKLOG_CAP,
    and the age of the oldest pending event: three queries on the (status, received_at) index."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db import DatabaseError
        from django.utils import timezone

        from events_app.models import Event, EventStatus

        cap = settings.BIGMIND_METRICS_BACKLOG_CAP
        up = GaugeMetricFamily(
            "bigmind_events_backlog_query_ok",
            "1 if the backlog could be read from the database at this scrape, else 0.",
        )
        try:
            counts = {
                status: Event.objects.filter(status=status).values("pk")[:cap].count()
                for status in (EventStatus.PENDING, EventStatus.PROCESSING)
            }
            oldest = (
                Event.objects.filter(status=EventStatus.PENDING)
                .order_by("received_at")
                .values_list("received_at", flat=True)
                .first()
            )
        except DatabaseError as exc:
            logger.warning("metrics: could not count the backlog: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        backlog = GaugeMetricFamily(
            "bigmind_events_backlog",
            f"Events waiting now, by status; each count stops at the cap ({cap}).",
            labels=["status"],
        )
        for status, count in counts.items():
            backlog.add_metric([str(status)], count)
        yield backlog
        age = GaugeMetricFamily(
            "bigmind_events_oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none is pending).",
        )
        age.add_metric(
            [], max(0.0, (timezone.now() - oldest).total_seconds()) if oldest is not None else 0.0
        )
        yield age


class _Forward(Collector):
    """This process's own registry, inside a per-scrape registry."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def metrics_text(*, backlog: bool) -> bytes:
    """The exposition text: every process's samples in multiprocess mode, else this one's."""
    # auto_describe off: registering must not run the collectors (the backlog's queries).
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_Forward())
    if backlog:
        registry.register(BacklogCollector())
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
    response = HttpResponse(metrics_text(backlog=True), content_type=CONTENT_TYPE_LATEST)
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
    # The backlog is the web's to report: every worker repeating it would multiply the queries.
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
    return [metrics_text(backlog=False)]


def worker_metrics_server_start(*, port: int, addr: str) -> WSGIServer:
    """Serve /metrics from a daemon thread of the Celery worker's main process."""
    server = make_server(addr, port, _worker_app, _ThreadingServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server

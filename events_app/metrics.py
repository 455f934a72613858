"""The data plane's metrics: events accepted, refused, rate limited, completed and failed, the
ingest group commits, and the backlog read when /metrics is scraped.

Names and labels are listed in docs/operations.md ("Metrics"). The registry, /metrics and the
HTTP and task metrics are the kernel's (bigmind/metrics.py); `metrics_hooks_register` (called by
`EventsAppConfig.ready()`) plugs this module into it. Counting is a counter increment, never
I/O; the hooks below also note what they count in the request's or task's log line
(bigmind.logs).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bigmind import metrics as kernel_metrics
from bigmind.logs import (
    log_context,
    log_context_add_events,
    log_context_add_to_set,
    log_context_update,
)
from bigmind.metrics import metric_child
from events_app.models import Event, EventStatus
from signals_app.selectors import organization_slug

logger = logging.getLogger(__name__)

# --- The metrics -------------------------------------------------------------------------------

EVENTS_ACCEPTED = Counter(
    "bigmind_events_accepted",
    "Events stored by POST /v1/events and /v1/events/batch (idempotent replays excluded).",
    ["signal_type"],
)
EVENTS_SCHEMA_INVALID = Counter(
    "bigmind_events_schema_invalid",
    "Events accepted although `data` failed its schema (the signal's `flag` enforcement), by "
    "organization and signal slug; idempotent replays excluded.",
    ["organization", "signal"],
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

# URL names of the ingest endpoints (POST only) whose refusals are counted from their answers.
WEBHOOK_ATTEMPTS = Counter(
    "bigmind_webhook_deliveries",
    "Webhook delivery attempts by what they left the delivery: succeeded, retrying, failed.",
    ["type", "outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "bigmind_webhook_delivery_duration_seconds",
    "One webhook attempt, from connecting to the receiver's answer (10 s at most).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WEBHOOK_LATENCY = Histogram(
    "bigmind_webhook_delivery_latency_seconds",
    "From a delivery's writing (its cause committed) to its success, retries included.",
    ["type"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0),
)

_INGEST_ROUTES = ("event-ingest", "event-batch")


def _label(value: str | None) -> str:
    return value or "unknown"


# --- Counting hooks (called by the ingest services, the pipeline and the kernel) ---------------


def ingest_refusal_observe(method: str, status: int, code: str | None) -> None:
    """A refused answer of an ingest endpoint (bigmind.metrics.http_request_observe).

    A refusal of the whole request (one event, or a batch refused whole) is counted once here;
    refused items of an accepted batch are counted by `ingest_batch_observe`."""
    if method != "POST":
        return
    if status == 429:
        signal_type = (log_context() or {}).get("signal_type")  # noted by the ingest service
        EVENTS_RATE_LIMITED.labels(_label(signal_type)).inc()
    else:
        EVENTS_REJECTED.labels(code or f"http_{status}").inc()


def ingest_signal_seen(signal: Any) -> None:
    """POST /v1/events resolved its signal (a SignalRef): name it in the request's log line."""
    log_context_update(signal=signal.slug, signal_type=signal.type)


def _schema_invalid_child(signal: Any) -> Any:
    # Labelled by slugs, which people read; the organization's slug is cached per process (the
    # request's log line has already looked it up).
    organization = _label(organization_slug(signal.organization_id))
    return metric_child(EVENTS_SCHEMA_INVALID, organization, signal.slug)


def ingest_event_stored(
    *, signal: Any, event_id: Any, replayed: bool, schema_valid: bool = True
) -> None:
    if not replayed:
        metric_child(EVENTS_ACCEPTED, signal.type).inc()
        if not schema_valid:
            _schema_invalid_child(signal).inc()
            log_context_update(schema_valid=False)
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
    invalid: Tally[Any] = Tally()  # by SignalRef
    event_ids = []
    for item in items:
        signal = item.signal
        if item.error is None:
            if item.event is not None:
                event_ids.append(item.event.id)
            if not item.replayed and signal is not None:
                accepted[signal.type] += 1
                if not item.schema.valid:
                    invalid[signal] += 1
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
    for signal, count in invalid.items():
        _schema_invalid_child(signal).inc(count)
    log_context_add_events(event_ids)
    if invalid:
        log_context_update(schema_invalid_items=sum(invalid.values()))
    if rejected or rate_limited:
        log_context_update(rejected_items=sum(rejected.values()) + sum(rate_limited.values()))


def event_completed(*, event: Any, signal: Any, at: datetime) -> None:
    """The pipeline committed an event as `completed` (events_app/pipeline/processing.py)."""
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
    EVENTS_FAILED.labels(signal.type).inc()
    log_context_add_events([event.id], outcome="failed")
    log_context_add_to_set("signals", signal.slug)
    log_context_add_to_set("organizations", organization_slug(event.organization_id))


# --- The backlog, computed at scrape time ------------------------------------------------------


class BacklogCollector(Collector):
    """Pending and processing events now, each count stopping at BIGMIND_METRICS_BACKLOG_CAP,
    and the age of the oldest pending event: three queries on the (status, received_at) index."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
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


def webhook_attempted(*, type: str, outcome: str, seconds: float, since_created: float) -> None:
    """One webhook attempt, recorded: its outcome, its duration, and (on success) the
    delivery's latency from its writing."""
    metric_child(WEBHOOK_ATTEMPTS, type, outcome).inc()
    WEBHOOK_ATTEMPT_SECONDS.observe(seconds)
    if outcome == "succeeded":
        metric_child(WEBHOOK_LATENCY, type).observe(max(0.0, since_created))


def metrics_hooks_register() -> None:
    """Plug the ingest refusal counts and the backlog into the kernel's metrics (from
    `EventsAppConfig.ready()`, in every process that sets Django up)."""
    for url_name in _INGEST_ROUTES:
        kernel_metrics.http_refusal_observer_register(url_name, ingest_refusal_observe)
    kernel_metrics.scrape_collector_register(BacklogCollector)

"""What the pipeline establishes about an event before asking the processor anything."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Count

from events_app.models import Event, Insight, MetricAggregate, RecordState
from events_app.pipeline.processors import PermanentProcessingError, RecordContext
from signals_app.models import Signal

# A metric value is compared with this many earlier periods, and only once this many exist.
HISTORY_PERIODS = 8
HISTORY_MIN_PERIODS = 3
# How far outside the earlier range, in widths of that range, a value must lie to be unusual.
UNUSUAL_MARGIN = 0.5
RECENT_INSIGHTS = 5
# Metric values beyond this magnitude fail: sums of float64 integers stay exact up to 2^53
# (about 9e15), and no bucket can overflow to infinity.
METRIC_VALUE_LIMIT = 1e15


def bucket_start(timestamp: datetime, period: str) -> datetime:
    """The start of the UTC period holding `timestamp` (weeks start on Monday, as in ISO 8601)."""
    at = timestamp.astimezone(UTC)
    if period == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    raise PermanentProcessingError(f"Signal has no valid metric period: {period!r}")


def metric_value(*, data: dict[str, Any], value_field: str) -> float:
    field = value_field or "value"
    if field not in data:
        raise PermanentProcessingError(f"Metric value field '{field}' is missing from data")
    raw = data[field]
    # bool is an int in Python, but `true` is not a number in JSON.
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise PermanentProcessingError(
            f"Metric value field '{field}' must be a number, got {type(raw).__name__}"
        )
    try:
        value = float(raw)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or abs(value) > METRIC_VALUE_LIMIT:
        raise PermanentProcessingError(
            f"Metric value field '{field}' is out of range (at most {METRIC_VALUE_LIMIT:g} "
            "in magnitude)"
        )
    return value


@dataclass(frozen=True)
class MetricHistory:
    low: float
    high: float
    periods: int


def metric_history(
    *, crm_record_id: int, signal_id: int, period: str, before: datetime
) -> MetricHistory | None:
    """Lowest and highest value seen in the earlier periods, if there are enough of them."""
    rows = list(
        MetricAggregate.objects.filter(
            crm_record_id=crm_record_id, signal_id=signal_id, period=period, bucket_start__lt=before
        )
        .order_by("-bucket_start")
        .values_list("min", "max")[:HISTORY_PERIODS]
    )
    if len(rows) < HISTORY_MIN_PERIODS:
        return None
    return MetricHistory(
        low=min(row[0] for row in rows), high=max(row[1] for row in rows), periods=len(rows)
    )


def metric_unusual(*, value: float, history: MetricHistory | None) -> dict[str, Any] | None:
    """The facts of an unusual value, or None when it is within (or there is no) usual range."""
    if history is None:
        return None
    low, high = history.low, history.high
    span = max(high - low, abs(high) * 0.1, abs(low) * 0.1, 1e-9)
    if value > high + UNUSUAL_MARGIN * span:
        direction = "above"
    elif value < low - UNUSUAL_MARGIN * span:
        direction = "below"
    else:
        return None
    return {
        "value": value,
        "low": low,
        "high": high,
        "periods": history.periods,
        "direction": direction,
    }


def record_state_current(*, crm_record_id: int, signal_id: int) -> RecordState | None:
    return RecordState.objects.filter(crm_record_id=crm_record_id, signal_id=signal_id).first()


def state_is_newer(*, event: Event, state: RecordState | None) -> bool:
    if state is None:
        return True
    return (event.timestamp, event.id) > (state.timestamp, state.event_id)


def record_context(*, event: Event, signal: Signal, full: bool) -> RecordContext:
    """The record as it was before this event; `full` adds states and recent insights."""
    try:
        since = event.timestamp - timedelta(days=7)
    except OverflowError:  # a timestamp in the first week of year 1
        since = datetime.min.replace(tzinfo=UTC)
    counts = dict(
        Event.objects.filter(
            crm_record_id=event.crm_record_id,
            timestamp__gte=since,
            timestamp__lt=event.timestamp,
        )
        .order_by()
        .values_list("signal_id")
        .annotate(n=Count("id"))
    )
    states: dict[str, Any] = {}
    insights: list[dict[str, Any]] = []
    if full:
        states = dict(
            RecordState.objects.filter(crm_record_id=event.crm_record_id).values_list(
                "signal__slug", "value"
            )
        )
        insights = [
            {
                "signal": row["signal__slug"],
                "summary": row["summary"],
                "score": row["score"],
                "occurred_at": row["occurred_at"].isoformat(),
            }
            for row in Insight.objects.filter(crm_record_id=event.crm_record_id)
            .exclude(event_id=event.id)
            .order_by("-occurred_at")
            .values("signal__slug", "summary", "score", "occurred_at")[:RECENT_INSIGHTS]
        ]
    return RecordContext(
        signal_events_7d=counts.get(signal.pk, 0),
        events_7d=sum(counts.values()),
        states=states,
        recent_insights=insights,
    )

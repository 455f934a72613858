"""What the pipeline establishes about events before asking the processor anything.

Each question is asked once for a whole chunk of events (one query each): the earlier metric
buckets, the current record states, the 7-day event counts. events_app/pipeline/plan.py folds
the answers over the chunk's events in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from django.db import connection
from django.utils import timezone

from bigmind.api_time import iso_utc
from events_app import dialect
from events_app.models import MAX_FUTURE_SKEW, Insight, RecordState
from events_app.pipeline.processors import PermanentProcessingError

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


# (crm_record_id, signal_id, period, bucket_start): the earlier buckets of this bucket.
HistoryKey = tuple[int, int, str, datetime]
# (bucket_start, min, max) of one bucket.
Bucket = tuple[datetime, float, float]


def metric_histories(*, keys: list[HistoryKey]) -> dict[HistoryKey, list[Bucket]]:
    """For each key, up to HISTORY_PERIODS buckets before it, newest first; one query."""
    if not keys:
        return {}
    source, params = dialect.rows(
        [
            ("k", "integer"),
            ("rec", "bigint"),
            ("sig", "bigint"),
            ("per", "text"),
            ("before", "timestamptz"),
        ],
        [
            (index, record, signal, period, before)
            for index, (record, signal, period, before) in enumerate(keys)
        ],
    )
    match = (
        'a."crm_record_id" = v."rec" AND a."signal_id" = v."sig" AND a."period" = v."per" '
        'AND a."bucket_start" < v."before"'
    )
    sql = dialect.metric_histories_sql(source=source, match=match, periods=HISTORY_PERIODS)
    found: dict[HistoryKey, list[Bucket]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for index, start, low, high in cursor.fetchall():
            found.setdefault(keys[index], []).append((dialect.datetime_read(start), low, high))
    for buckets in found.values():
        buckets.sort(reverse=True)
    return found


def metric_history_of(buckets: list[Bucket]) -> MetricHistory | None:
    """The range of the newest HISTORY_PERIODS buckets, if there are enough of them."""
    newest = sorted(buckets, reverse=True)[:HISTORY_PERIODS]
    if len(newest) < HISTORY_MIN_PERIODS:
        return None
    return MetricHistory(
        low=min(b[1] for b in newest), high=max(b[2] for b in newest), periods=len(newest)
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


@dataclass(frozen=True)
class StateRow:
    """A record's current state for one signal: the data of the newest event, and that event."""

    value: Any
    timestamp: datetime
    event_id: UUID


# (crm_record_id, signal_id)
Pair = tuple[int, int]


def record_states_sql(pairs: list[Pair], *, lock: bool) -> tuple[str, list[Any]]:
    """The current states of these pairs; `lock` (PostgreSQL): FOR UPDATE, in key order, so
    two transactions locking overlapping pairs queue instead of deadlocking."""
    table = RecordState._meta.db_table
    source, params = dialect.rows([("rec", "bigint"), ("sig", "bigint")], pairs)
    sql = f"""
        SELECT s."crm_record_id", s."signal_id", s."value", CAST(s."timestamp" AS text),
               s."event_id"
        FROM "{table}" s JOIN {source} ON s."crm_record_id" = v."rec" AND s."signal_id" = v."sig"
    """  # noqa: S608
    if lock:
        sql += dialect.for_update_in_key_order('s."crm_record_id", s."signal_id"', "s")
    return sql, params


def record_states_read(sql: str, params: list[Any]) -> dict[Pair, StateRow]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {
            (record, signal): StateRow(
                value=dialect.json_read(value),
                timestamp=dialect.datetime_read(timestamp),
                event_id=dialect.uuid_read(event_id),
            )
            for record, signal, value, timestamp, event_id in cursor.fetchall()
        }


def record_states_current(*, pairs: list[Pair]) -> dict[Pair, StateRow]:
    """The stored states of these (record, signal) pairs; a pair without one is absent."""
    if not pairs:
        return {}
    return record_states_read(*record_states_sql(pairs, lock=False))


# (crm_record_id, since, until): events of the record with since <= timestamp < until.
CountKey = tuple[int, datetime, datetime]


# How far ahead of a worker's clock a web node's may be (received_at comes from the web node's).
RECEIVED_CLOCK_SLACK = timedelta(hours=1)


def _before(timestamp: datetime, span: timedelta) -> datetime:
    try:
        return timestamp - span
    except OverflowError:  # a timestamp at the very start of year 1
        return datetime.min.replace(tzinfo=UTC)


def seven_days_before(timestamp: datetime) -> datetime:
    return _before(timestamp, timedelta(days=7))


def event_counts(*, keys: list[CountKey]) -> dict[CountKey, dict[int, int]]:
    """Per key, the number of events by signal id; one query on the (record, timestamp) index.

    Every stored event counts, whatever its status: what the record did, not what was processed.
    """
    if not keys:
        return {}
    # The partitions (received_at) that can hold such events: none was received more than
    # MAX_FUTURE_SKEW before its timestamp, nor after now (give or take the clocks of the web
    # nodes: RECEIVED_CLOCK_SLACK). PostgreSQL skips the others for each key.
    latest = timezone.now() + RECEIVED_CLOCK_SLACK
    source, params = dialect.rows(
        [("k", "integer"), ("rec", "bigint"), ("since", "timestamptz"), ("until", "timestamptz")],
        [(index, record, since, until) for index, (record, since, until) in enumerate(keys)],
    )
    # Bounded per key (pruned at run time, for each key) and by the bounds of all the keys as
    # constants (pruned when planning: the partitions out of every key's range are not even
    # planned, nor opened once per key).
    earliest = _before(min(since for _, since, _ in keys), MAX_FUTURE_SKEW)
    per_key = dialect.at_least_before('e."received_at"', 'v."since"', MAX_FUTURE_SKEW)
    match = (
        'e."crm_record_id" = v."rec" AND e."timestamp" >= v."since" AND e."timestamp" < v."until"'
        f' AND {per_key} AND e."received_at" BETWEEN %s AND %s'
    )
    sql = dialect.event_counts_sql(source=source, match=match)
    counts: dict[CountKey, dict[int, int]] = {key: {} for key in keys}
    bounds = [dialect.datetime_value(earliest), dialect.datetime_value(latest)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *bounds])
        for index, signal_id, count in cursor.fetchall():
            counts[keys[index]][signal_id] = count
    return counts


def record_states_and_insights(
    *, crm_record_id: int, event_id: UUID
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The record's current states by signal slug, and its latest insights (not this event's):
    the fuller context a processor with `wants_context` gets (two queries per event)."""
    states = dict(
        RecordState.objects.filter(crm_record_id=crm_record_id).values_list("signal__slug", "value")
    )
    insights = [
        {
            "signal": row["signal__slug"],
            "summary": row["summary"],
            "score": row["score"],
            "occurred_at": iso_utc(row["occurred_at"]),
        }
        for row in Insight.objects.filter(crm_record_id=crm_record_id)
        .exclude(event_id=event_id)
        .order_by("-occurred_at")
        .values("signal__slug", "summary", "score", "occurred_at")[:RECENT_INSIGHTS]
    ]
    return states, insights

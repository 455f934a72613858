"""Rollups of CRM records, written only inside the transaction that completes a chunk of events.

Each write takes the whole chunk at once (`rows` of events_app/dialect.py): one upsert for
every metric bucket the chunk adds to, one statement each for new and replaced states, one
upsert for the insights, one update for the engagement sums. Rows are written in key order, so
two workers whose chunks touch the same rows take their locks in the same order and queue
instead of deadlocking: record states, then metric buckets, then CRM records, always in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any
from uuid import UUID

from django.db import connection

from events_app import dialect
from events_app.models import CrmRecord, EventTransition, Insight, MetricAggregate, RecordState
from events_app.pipeline.facts import Pair, StateRow, record_states_read, record_states_sql

# (crm_record_id, signal_id, period, bucket_start) -> (count, sum, min, max) this chunk adds.
MetricDeltas = dict[tuple[int, int, str, datetime], tuple[int, float, float, float]]


def metric_aggregates_add(*, deltas: MetricDeltas, now: datetime) -> None:
    """Add each bucket's values in one upsert; concurrent workers never lose one.

    The chunk's values are summed per bucket first: one statement cannot update a row twice.
    """
    if not deltas:
        return
    table = MetricAggregate._meta.db_table
    least, greatest = dialect.least_greatest()
    source, params = dialect.rows(
        [
            ("rec", "bigint"),
            ("sig", "bigint"),
            ("per", "text"),
            ("start", "timestamptz"),
            ("n", "bigint"),
            ("total", "float8"),
            ("low", "float8"),
            ("high", "float8"),
        ],
        [
            (record, signal, period, start, n, total, low, high)
            for (record, signal, period, start), (n, total, low, high) in sorted(deltas.items())
        ],
    )
    # `WHERE true`: SQLite's parser needs it between a SELECT and ON CONFLICT.
    sql = f"""
        INSERT INTO "{table}" ("crm_record_id", "signal_id", "period", "bucket_start",
                               "count", "sum", "min", "max", "updated_at")
        SELECT v."rec", v."sig", v."per", v."start", v."n", v."total", v."low", v."high", %s
        FROM {source} WHERE true ORDER BY v."rec", v."sig", v."per", v."start"
        ON CONFLICT ("crm_record_id", "signal_id", "period", "bucket_start") DO UPDATE SET
            "count" = "{table}"."count" + EXCLUDED."count",
            "sum" = "{table}"."sum" + EXCLUDED."sum",
            "min" = {least}("{table}"."min", EXCLUDED."min"),
            "max" = {greatest}("{table}"."max", EXCLUDED."max"),
            "updated_at" = EXCLUDED."updated_at"
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [dialect.datetime_value(now), *params])


def record_states_lock(*, pairs: list[Pair]) -> dict[Pair, StateRow]:
    """The stored states of these pairs, locked until the transaction ends (PostgreSQL: FOR
    UPDATE in key order; SQLite: the transaction is the only writer)."""
    if not pairs:
        return {}
    return record_states_read(*record_states_sql(sorted(pairs), lock=True))


def _state_rows(states: dict[Pair, StateRow]) -> tuple[str, list[Any]]:
    return dialect.rows(
        [
            ("rec", "bigint"),
            ("sig", "bigint"),
            ("val", "jsonb"),
            ("ts", "timestamptz"),
            ("eid", "uuid"),
        ],
        [
            (
                record,
                signal,
                state.value,
                state.timestamp,
                state.event_id,
            )
            for (record, signal), state in sorted(states.items())
        ],
    )


def record_states_insert(*, states: dict[Pair, StateRow], now: datetime) -> set[Pair]:
    """First states of pairs that had none; returns the pairs inserted. A pair missing from the
    answer got its first state from another transaction meanwhile (and is left alone)."""
    if not states:
        return set()
    table = RecordState._meta.db_table
    source, params = _state_rows(states)
    sql = f"""
        INSERT INTO "{table}" ("crm_record_id", "signal_id", "value", "timestamp", "event_id",
                               "updated_at")
        SELECT v."rec", v."sig", v."val", v."ts", v."eid", %s FROM {source}
        WHERE true ORDER BY v."rec", v."sig"
        ON CONFLICT ("crm_record_id", "signal_id") DO NOTHING
        RETURNING "crm_record_id", "signal_id"
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [dialect.datetime_value(now), *params])
        return {(record, signal) for record, signal in cursor.fetchall()}


def record_states_replace(*, states: dict[Pair, StateRow], now: datetime) -> None:
    """New current states of pairs locked by `record_states_lock` (so compared under the lock)."""
    if not states:
        return
    table = RecordState._meta.db_table
    source, params = _state_rows(states)
    sql = f"""
        UPDATE "{table}" SET "value" = v."val", "timestamp" = v."ts", "event_id" = v."eid",
                             "updated_at" = %s
        FROM {source} WHERE "{table}"."crm_record_id" = v."rec" AND "{table}"."signal_id" = v."sig"
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [dialect.datetime_value(now), *params])


def engagement_masses_add(*, masses: dict[int, float]) -> None:
    """Add to (or take back from) records' engagement sums: last in the transaction, because
    ingest locks the same CRM rows for every event it stores, so hold them briefly."""
    masses = {record: mass for record, mass in masses.items() if mass != 0}
    if not masses:
        return
    table = CrmRecord._meta.db_table
    records = sorted(masses)
    with connection.cursor() as cursor:
        # The UPDATE's join may visit rows in any order; lock them in key order first.
        dialect.crm_records_lock(cursor, ids=records)
        source, params = dialect.rows(
            [("rec", "bigint"), ("mass", "float8")], [(r, masses[r]) for r in records]
        )
        cursor.execute(
            f'UPDATE "{table}" SET "engagement_mass" = "{table}"."engagement_mass" + v."mass" '  # noqa: S608
            f'FROM {source} WHERE "{table}"."id" = v."rec"',
            params,
        )


# Model field types whose values `dialect.rows` adapts; other columns take PostgreSQL's own type.
_TYPES = {"UUIDField": "uuid", "DateTimeField": "timestamptz", "JSONField": "jsonb"}


@cache
def _insight_columns() -> list[tuple[str, str]]:
    """(column, type) of every Insight column but the key, from the model (the type is only
    used by `dialect.rows`: PostgreSQL's, and which values to adapt on SQLite)."""
    columns = []
    for field in Insight._meta.concrete_fields:
        if field.primary_key:
            continue
        pg_type = _TYPES.get(field.get_internal_type()) or field.cast_db_type(connection) or "text"
        assert field.column is not None
        columns.append((field.column, pg_type))
    return columns


def insights_upsert(*, insights: Sequence[dict[str, Any]]) -> None:
    """One INSERT ... ON CONFLICT (event_id) DO UPDATE for all: reprocessing replaces an insight.

    Each insight is {column: value} with every column but the key; JSON as Python values."""
    if not insights:
        return
    table = Insight._meta.db_table
    columns = _insight_columns()
    values = [[insight[name] for name, _ in columns] for insight in insights]
    source, params = dialect.rows([(f"c_{name}", pg_type) for name, pg_type in columns], values)
    names = ", ".join(f'"{name}"' for name, _ in columns)
    selected = ", ".join(f'v."c_{name}"' for name, _ in columns)
    updates = ", ".join(
        f'"{name}" = EXCLUDED."{name}"' for name, _ in columns if name != "event_id"
    )
    sql = f"""
        INSERT INTO "{table}" ({names}) SELECT {selected} FROM {source} WHERE true
        ON CONFLICT ("event_id") DO UPDATE SET {updates}
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def transitions_insert(*, rows: Iterable[tuple[UUID, str, int, datetime, str]]) -> None:
    """Steps of events' status histories, (event id, status, attempt, at, note); one INSERT."""
    values = [
        (event_id, status, attempt, at, note[:2000]) for event_id, status, attempt, at, note in rows
    ]
    if not values:
        return
    table = EventTransition._meta.db_table
    source, params = dialect.rows(
        [
            ("eid", "uuid"),
            ("st", "text"),
            ("att", "integer"),
            ("at", "timestamptz"),
            ("note", "text"),
        ],
        values,
    )
    sql = f"""
        INSERT INTO "{table}" ("event_id", "status", "attempt", "at", "note")
        SELECT v."eid", v."st", v."att", v."at", v."note" FROM {source}
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, params)

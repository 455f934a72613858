"""The SQL that differs between PostgreSQL and SQLite, and the one place that asks which it is.

Hand-written because the ORM cannot say it in one statement, and each statement here is on a
hot path whose cost is measured (docs/benchmarks.md):
- ingest's group commit: one data-modifying CTE that claims the idempotency keys (skipping
  held ones), upserts the CRM records in key order and inserts the events, in autocommit (one
  round trip and one WAL flush per group), and the lookups of what it skipped; a batch's insert
  by column arrays;
- the claim: a conditional `UPDATE ... RETURNING` whose history rows ride in the same CTE, and
  the drain's pick of due events under `FOR UPDATE SKIP LOCKED`;
- the chunk's facts: a LATERAL index scan per key that PostgreSQL's planner would otherwise
  turn into a sequential scan;
- upserts that add to counters (`count = count + EXCLUDED.count`, F-style) and keep a
  minimum, maximum or latest value in one statement (GREATEST / LEAST, SQLite's MAX / MIN);
- locks taken in key order, so that concurrent writers queue instead of deadlocking;
- the dashboard's latency percentiles: PostgreSQL's `percentile_cont` over a sample (SQLite has
  no ordered-set aggregate; the dashboard computes the same interpolation in Python there).

Callers build the SQL both databases share and ask this module for what differs: a fragment, a
statement, or a whole pick between two shapes (`postgres()` for code paths only PostgreSQL
has). The text of every statement is as it was before it moved here: its plans are measured.

A chunk of events is worked on in a few statements, each taking every event's values at once
(`rows`). On PostgreSQL they travel as ONE parameter, a JSON array of row objects that
`json_to_recordset(...)` turns back into typed rows: the statement's text is the same whatever
the chunk's size, Python encodes the whole chunk with one (C) `json.dumps`, and JSON columns
(results, rollups, states) are nested as they are instead of being encoded twice. (Arrays per
column with `unnest`, tried first, spent most of the worker's time quoting array elements in
psycopg's Python array dumper.) SQLite reads the same rows from a `VALUES` list (3.35+ also has
the RETURNING and upserts used with it).

`rows` takes Python values and adapts them by the column's type: UUIDs, datetimes, JSON.
Rows read back from raw SQL are turned into Python values by `uuid_read`, `datetime_read` and
`json_read`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar
from uuid import UUID

from django.db import connection, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q, QuerySet

from events_app.models import (
    CrmRecord,
    Event,
    EventStatus,
    EventTransition,
    IdempotencyKey,
    MetricAggregate,
)

T = TypeVar("T")


def postgres(db: BaseDatabaseWrapper | None = None) -> bool:
    """The one vendor check: PostgreSQL, or SQLite (tests, development)."""
    return (db or connection).vendor == "postgresql"


def _json_default(value: Any) -> Any:
    if isinstance(value, UUID | datetime):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def rows(columns: Sequence[tuple[str, str]], values: Sequence[Sequence[Any]]) -> tuple[str, list]:
    """`<row source> AS v` for a FROM clause, and its parameters.

    `columns` are (name, PostgreSQL type) pairs, `values` rows of Python values in that order
    (never empty: a VALUES list needs a row). Column names must not clash with the columns of a
    table the statement also reads, since SQLite's UPDATE ... FROM cannot qualify them in
    RETURNING.
    """
    assert values, "a row source needs at least one row"
    names = [name for name, _ in columns]
    if postgres():
        typed = ", ".join(f'"{name}" {pg_type}' for name, pg_type in columns)
        document = json.dumps(
            [dict(zip(names, row, strict=True)) for row in values], default=_json_default
        )
        return f"json_to_recordset(%s::json) AS v({typed})", [document]
    adapters = [_SQLITE_ADAPTERS.get(pg_type) for _, pg_type in columns]
    params = [
        value if adapt is None or value is None else adapt(value)
        for row in values
        for adapt, value in zip(adapters, row, strict=True)
    ]
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    aliases = ", ".join(f'column{i} AS "{name}"' for i, name in enumerate(names, start=1))
    listed = ", ".join([row] * len(values))
    return f"(SELECT {aliases} FROM (VALUES {listed})) AS v", params  # noqa: S608


@dataclass(frozen=True)
class RowsById:
    """Per-row values for an UPDATE of `table` by its `id` column (`rows_by_id`): `source`
    goes in the FROM clause, `match` in the WHERE clause (each with its parameters, in that
    order), and `column[name]` is the SQL expression of a row's value of `name`."""

    source: str
    source_params: list[Any]
    match: str
    match_params: list[Any]
    column: dict[str, str]


def rows_by_id(
    table: str, columns: Sequence[tuple[str, str]], values: Mapping[UUID, Sequence[Any]]
) -> RowsById:
    """The values of `values` (id -> row, in the order of `columns`) for an UPDATE of `table`.

    PostgreSQL: no join. The rows are one jsonb object keyed by id, each updated row looks its
    values up by its own id (a binary search of the object's keys), and `match` finds the rows
    through `id = ANY(ids)`. Joined to a row source instead (`rows`), the planner guesses 100
    rows for the source and one for a range of a partitioned table, so it rescans the source
    for every row: quadratic, 5 ms instead of 2.4 for a drained chunk of about 200 events
    (docs/benchmarks.md, "Partitioned events").
    SQLite: the `rows` source, joined by id.
    """
    assert values, "a row source needs at least one row"
    names = [name for name, _ in columns]
    if not postgres():
        source, params = rows([("eid", "uuid"), *columns], [(i, *row) for i, row in values.items()])
        match = f'"{table}"."id" = v."eid"'
        return RowsById(source, params, match, [], {name: f'v."{name}"' for name in names})
    document = {
        str(event_id): {  # a None is left out: its lookup is SQL NULL, as in `rows`
            name: value for name, value in zip(names, row, strict=True) if value is not None
        }
        for event_id, row in values.items()
    }
    lookup = f'v."doc" -> CAST("{table}"."id" AS text)'
    column = {
        name: f"({lookup} -> '{name}')"
        if pg_type == "jsonb"
        else f"CAST({lookup} ->> '{name}' AS {pg_type})"
        for name, pg_type in columns
    }
    match, match_params = ids_in(f'"{table}"."id"', list(values))
    return RowsById(
        '(SELECT CAST(%s AS jsonb) AS "doc") AS v',
        [json.dumps(document, default=_json_default)],
        match,
        match_params,
        column,
    )


def datetime_value(value: datetime | None) -> Any:
    """A datetime as a parameter of its own (not in `rows`)."""
    if value is None or postgres():
        return value
    return connection.ops.adapt_datetimefield_value(value)


def _sqlite_datetime(value: datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


_SQLITE_ADAPTERS: dict[str, Any] = {
    "uuid": lambda value: value.hex,
    "timestamptz": _sqlite_datetime,
    "timestamp with time zone": _sqlite_datetime,
    "jsonb": json.dumps,
}


def uuid_read(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def datetime_read(value: Any) -> Any:
    """An aware datetime, or None. SQLite gives Django's naive UTC as a naive datetime (a
    column it knows the type of) or as text (one it does not, as in some RETURNING lists)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def json_read(value: Any) -> Any:
    """Django reads jsonb (PostgreSQL) and JSON text (SQLite) as text; None stays None."""
    return json.loads(value) if isinstance(value, str | bytes) else value


# --- fragments ------------------------------------------------------------------------------


def least_greatest() -> tuple[str, str]:
    """The two-argument minimum and maximum: SQLite's MIN and MAX are PostgreSQL's LEAST and
    GREATEST (PostgreSQL's MIN and MAX are aggregates only)."""
    return ("LEAST", "GREATEST") if postgres() else ("MIN", "MAX")


def ids_in(column: str, ids: Sequence[UUID]) -> tuple[str, list[Any]]:
    """`<column> is one of ids`: one array parameter on PostgreSQL (the statement's text is the
    same for any number of ids), a list of parameters on SQLite (UUIDs as Django stores them)."""
    if postgres():
        # The array as its text, cast by the server: psycopg's own array dumping checks every
        # element against a regular expression (about 2 us a UUID, measured under cProfile).
        # `.hex`: only a UUID has it, so nothing else can slip array syntax into the text.
        return f"{column} = ANY(CAST(%s AS uuid[]))", ["{" + ",".join(i.hex for i in ids) + "}"]
    return f"{column} IN (" + ", ".join(["%s"] * len(ids)) + ")", [i.hex for i in ids]


def received_within(column: str, times: Sequence[datetime]) -> tuple[str, list[Any]]:
    """`<column> BETWEEN` the earliest and the latest of `times` (never empty), and its two
    parameters: on the partitioned events table, the condition that names the partitions of
    these events, so that a statement on them by id visits only those partitions. A range of
    two parameters, not `= ANY(array)`: PostgreSQL prunes a generic plan at executor start-up
    on a range of parameters, never on an array parameter. Harmless on SQLite."""
    return f"{column} BETWEEN %s AND %s", [datetime_value(min(times)), datetime_value(max(times))]


def received_range(times: Iterable[datetime]) -> Q:
    """`received_within` for the ORM: received_at between the earliest and the latest of
    `times` (never empty), the filter that names these events' partitions."""
    times = list(times)
    return Q(received_at__range=(min(times), max(times)))


def at_least_before(column: str, moment: str, span: timedelta) -> str:
    """`<column> >= <moment> - span`, both SQL expressions (PostgreSQL: a bound of the
    partition key that run-time pruning uses). SQLite has no partitions to skip: TRUE."""
    if postgres():
        return f"{column} >= {moment} - interval '{span // timedelta(microseconds=1)} microseconds'"
    return "1 = 1"


def for_update_in_key_order(order_by: str, of: str) -> str:
    """A SELECT's suffix locking its rows in key order (PostgreSQL), so that two transactions
    locking overlapping rows queue instead of deadlocking. SQLite: nothing, a transaction that
    writes is the only writer."""
    return f" ORDER BY {order_by} FOR UPDATE OF {of}" if postgres() else ""


# --- the pipeline's claims ------------------------------------------------------------------


def claim_with_history(
    update: str,
    params: list[Any],
    *,
    returned: str,
    now: datetime,
    read: Callable[[list[tuple[Any, ...]]], list[T]],
    history: Callable[[list[T]], None],
) -> list[T]:
    """Run a claiming `UPDATE ... RETURNING <returned>` and write its `processing` history rows
    with it: on PostgreSQL in the same statement (a data-modifying CTE), on SQLite (no such
    CTE) by `history` after it, in one transaction. `read` turns the returned rows into claims.
    """
    if postgres():
        table = EventTransition._meta.db_table
        sql = f"""
            WITH "claimed" AS ({update}),
            "history" AS (
                INSERT INTO "{table}" ("event_id", "status", "attempt", "at", "note")
                SELECT "id", '{EventStatus.PROCESSING.value}', "attempts", %s, '' FROM "claimed"
            )
            SELECT {returned} FROM "claimed"
        """  # noqa: S608
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, now])
            return read(cursor.fetchall())
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(update, params)
            claimed = read(cursor.fetchall())
        history(claimed)
    return claimed


def claim_due_update(
    *, due: str, set_claimed: str, returned: str, claimed_at: Any, limit: int
) -> tuple[str, list[Any]]:
    """The drain's claim on SQLite, one statement: `set_claimed` applied to the rows `due` picks
    (its parameters: the claim time, then the limit), RETURNING `returned`. SQLite has one
    writer at a time, so the statement is atomic as is. (PostgreSQL picks and claims in two
    statements: see claims.events_claim_due.)"""
    pending = EventStatus.PENDING.value
    sql = f"""
            {set_claimed}
            WHERE ("id", "received_at") IN ({due}) AND "status" = '{pending}'
            RETURNING {returned}
        """
    return sql, [claimed_at, claimed_at, limit]


# --- the pipeline's facts and rollups -------------------------------------------------------


def metric_histories_sql(*, source: str, match: str, periods: int) -> str:
    """For each key `v."k"` of `source`, the `periods` newest metric buckets `a` matching it:
    rows of (k, bucket_start as text, min, max).

    PostgreSQL: per key, a backward scan of the unique (record, signal, period, start) index.
    SQLite (no LATERAL): a window over the join."""
    table = MetricAggregate._meta.db_table
    if postgres():
        return f"""
            SELECT v."k", CAST(h."bucket_start" AS text), h."min", h."max" FROM {source}
            CROSS JOIN LATERAL (
                SELECT a."bucket_start", a."min", a."max" FROM "{table}" a WHERE {match}
                ORDER BY a."bucket_start" DESC LIMIT {periods}
            ) h
        """  # noqa: S608
    return f"""
            SELECT "k", CAST("bucket_start" AS text), "min", "max" FROM (
                SELECT v."k", a."bucket_start", a."min", a."max", ROW_NUMBER() OVER (
                    PARTITION BY v."k" ORDER BY a."bucket_start" DESC) AS "n"
                FROM {source} JOIN "{table}" a ON {match}
            ) WHERE "n" <= {periods}
        """  # noqa: S608


def event_counts_sql(*, source: str, match: str) -> str:
    """For each key `v."k"` of `source`, the events `e` matching it counted by signal: rows of
    (k, signal_id, count).

    PostgreSQL: LATERAL, an index range scan per key, whatever the statistics say. As a plain
    join, once ANALYZE had run the planner hashed the keys against a parallel sequential scan
    of the whole events table (54 ms for a chunk of 200 in the benchmark, against 13)."""
    table = Event._meta.db_table
    if postgres():
        return f"""
            SELECT v."k", c."signal_id", c."n" FROM {source}
            CROSS JOIN LATERAL (
                SELECT e."signal_id", COUNT(*) AS "n" FROM "{table}" e WHERE {match}
                GROUP BY e."signal_id"
            ) c
        """  # noqa: S608
    return f"""
            SELECT v."k", e."signal_id", COUNT(*) FROM {source} JOIN "{table}" e ON {match}
            GROUP BY v."k", e."signal_id"
        """  # noqa: S608


def crm_records_lock(cursor: Any, *, ids: list[int]) -> None:
    """Lock these CRM records before an UPDATE ... FROM that may visit them in any order
    (PostgreSQL), in ingest's order: its upserts (the group statement's, a batch's) lock
    records by (organization, type, external id), so a worker locking them by id could hold one
    that ingest wants while it waits for one ingest holds. SQLite: a transaction that writes
    is the only writer."""
    if postgres() and len(ids) > 1:
        cursor.execute(
            f'SELECT 1 FROM "{CrmRecord._meta.db_table}" WHERE "id" = ANY(%s::bigint[]) '  # noqa: S608
            'ORDER BY "organization_id", "type", "external_id" FOR UPDATE',
            [ids],
        )


# --- ingest (PostgreSQL only: other databases store through the ORM) ----------------------


# The fields of ingest's NewEvent (events_app/ingest/store.py) as the group statement reads
# them from its JSON rows, with their types.
NEW_EVENT_COLUMNS = {
    "id": "uuid",
    "organization_id": "bigint",
    "signal_id": "bigint",
    "schema_version": "integer",
    "identity_type": "text",
    "identity_id": "text",
    "data": "jsonb",
    "timestamp": "timestamptz",
    "received_at": "timestamptz",
    "reference": "text",
    "idempotency_key": "text",
    "request_hash": "text",
    "schema_valid": "boolean",
    "violations": "jsonb",
}


# The key table's columns filled from a new event's fields (NEW_EVENT_COLUMNS' names, which
# are Event's and NewEvent's attribute names too): the SQL below and store.key_row use it.
KEY_FROM_EVENT = {
    "event_id": "id",
    "organization_id": "organization_id",
    "key": "idempotency_key",
    "received_at": "received_at",
    "request_hash": "request_hash",
    "schema_version": "schema_version",
    "reference": "reference",
}


@cache
def events_group_insert_sql() -> str:
    """Ingest's group commit (PostgreSQL): one statement stores a group of single events,
    its one parameter the rows as JSON; returns the ids it stored."""
    record, event, keys = (
        CrmRecord._meta.db_table,
        Event._meta.db_table,
        IdempotencyKey._meta.db_table,
    )
    names = list(NEW_EVENT_COLUMNS)
    typed = ", ".join(f'"{name}" {kind}' for name, kind in NEW_EVENT_COLUMNS.items())
    columns = ", ".join(f'"{name}"' for name in names)
    selected = ", ".join(f'f."{name}"' for name in names)
    key_columns = ", ".join(f'"{name}"' for name in KEY_FROM_EVENT)
    key_values = ", ".join(f'"{name}"' for name in KEY_FROM_EVENT.values())
    # Only model metadata and constants are interpolated; the rows go as one JSON parameter
    # (json.dumps in C costs a third less client CPU than psycopg dumping a dozen arrays).
    # - `claimed`: the keyed rows' keys, inserted into the key table. ON CONFLICT on the unique
    #   (organization, key) index skips a key held already: by a committed event (a replay, or
    #   a conflicting reuse of the key), by another process storing it now (PostgreSQL waits
    #   for that transaction, then skips or inserts), by another row of this group (one of
    #   them wins: the rows are concurrent requests), or by this very row when the writer
    #   retries a group whose commit it could not confirm. RETURNING names the rows whose key
    #   is now theirs. Claimed in key order, as the batch's claim is: two statements sharing
    #   keys cannot deadlock on them.
    # - `fresh`: the rows to store: those without a key, and those that claimed theirs. A
    #   replay, or a conflicting reuse of a key, must not touch its record either.
    # - `record`: one upsert per distinct identity (ON CONFLICT DO UPDATE may touch a row only
    #   once per statement), in key order, so that two groups touching the same records lock
    #   them in the same order and cannot deadlock.
    # - The insert: ON CONFLICT DO NOTHING skips a row whose id is stored already (a retried
    #   group's row without a key). The rows it returns are the ones stored now;
    #   `events_existing_sql` finds the rest.
    return f"""
        WITH "input" AS (
            SELECT * FROM jsonb_to_recordset(%s::jsonb) AS t({typed})
        ),
        "claimed" AS (
            INSERT INTO "{keys}" ({key_columns})
            SELECT {key_values} FROM "input" WHERE "idempotency_key" IS NOT NULL
            ORDER BY "organization_id", "idempotency_key"
            ON CONFLICT ("organization_id", "key") DO NOTHING
            RETURNING "event_id"
        ),
        "fresh" AS (
            SELECT i.* FROM "input" i
            LEFT JOIN "claimed" c ON c."event_id" = i."id"
            WHERE i."idempotency_key" IS NULL OR c."event_id" IS NOT NULL
        ),
        "record" AS (
            INSERT INTO "{record}" ("organization_id", "type", "external_id",
                                    "first_seen_at", "last_seen_at")
            SELECT "organization_id", "identity_type", "identity_id",
                   max("received_at"), max("received_at")
            FROM "fresh"
            GROUP BY "organization_id", "identity_type", "identity_id"
            ORDER BY "organization_id", "identity_type", "identity_id"
            ON CONFLICT ("organization_id", "type", "external_id")
            DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at"
            RETURNING "id", "organization_id", "type", "external_id"
        )
        INSERT INTO "{event}" ({columns}, "status", "attempts", "last_error", "crm_record_id")
        SELECT {selected}, '{EventStatus.PENDING.value}', 0, '', r."id"
        FROM "fresh" f
        JOIN "record" r ON r."organization_id" = f."organization_id"
                       AND r."type" = f."identity_type" AND r."external_id" = f."identity_id"
        ON CONFLICT DO NOTHING
        RETURNING "id"
    """  # noqa: S608


@cache
def events_existing_sql() -> str:
    """What the group statement skipped (PostgreSQL; binary array parameters: the rows' ids
    and received_at, then the keyed rows' organizations and keys): the events stored already
    under those ids (`id` only), then the keys held already, with their event's status now
    (NULL: the event was deleted since, by retention)."""
    event, keys = Event._meta.db_table, IdempotencyKey._meta.db_table
    # One index probe per id and per key (LATERAL ... LIMIT 1), whatever the plan cached for
    # this prepared statement: as `id = ANY(...) OR (org, key) IN (...)` it was a sequential
    # scan of the event table, on every replay (4.7 ms at 20,000 events). received_at names
    # the event's partition, so each probe reads one partition's index.
    return f"""
        SELECT e."id", NULL::bigint, NULL::text, NULL::text, NULL::integer, NULL::text,
               NULL::text
        FROM unnest(%b::uuid[], %b::timestamptz[]) AS w("id", "received_at")
        CROSS JOIN LATERAL (
            SELECT "id" FROM "{event}"
            WHERE "id" = w."id" AND "received_at" = w."received_at"
            LIMIT 1
        ) e
        UNION ALL
        SELECT h."event_id", h."organization_id", h."key", h."request_hash",
               h."schema_version", s."status", h."reference"
        FROM unnest(%b::bigint[], %b::text[]) AS w("organization_id", "key")
        CROSS JOIN LATERAL (
            SELECT "event_id", "organization_id", "key", "request_hash", "schema_version",
                   "reference", "received_at"
            FROM "{keys}"
            WHERE "organization_id" = w."organization_id" AND "key" = w."key"
            LIMIT 1
        ) h
        LEFT JOIN LATERAL (
            SELECT "status" FROM "{event}"
            WHERE "id" = h."event_id" AND "received_at" = h."received_at"
            LIMIT 1
        ) s ON TRUE
    """  # noqa: S608


EVENT_COLUMN_TYPES = {
    **NEW_EVENT_COLUMNS,
    "status": "text",
    "attempts": "integer",
    "last_error": "text",
    "crm_record_id": "bigint",
}


@cache
def events_insert_many_sql() -> tuple[str, str, str]:
    """A batch request's three statements (PostgreSQL), all from column arrays (unnest): the
    claim of its idempotency keys, the CRM records' upsert RETURNING their ids, and the insert
    of the events.

    The order is the group statement's (keys, then records, each in key order): a batch and a
    group, or two batches, sharing a key or a record lock them in one order and cannot
    deadlock. A key held already (a concurrent request stored it after the caller's check)
    fails the claim with a unique violation, and the batch stores nothing.
    """
    record, event, keys = (
        CrmRecord._meta.db_table,
        Event._meta.db_table,
        IdempotencyKey._meta.db_table,
    )
    # %b: binary parameters, so arrays are not quoted element by element.
    key_columns = ", ".join(f'"{name}"' for name in KEY_FROM_EVENT)
    key_arrays = ", ".join(f"%b::{EVENT_COLUMN_TYPES[name]}[]" for name in KEY_FROM_EVENT.values())
    claim = f"""
        INSERT INTO "{keys}" ({key_columns})
        SELECT * FROM unnest({key_arrays}) AS u({key_columns})
        ORDER BY "organization_id", "key"
    """  # noqa: S608
    records = f"""
        INSERT INTO "{record}" ("organization_id", "type", "external_id",
                                "first_seen_at", "last_seen_at")
        SELECT * FROM unnest(%b::bigint[], %b::text[], %b::text[],
                             %b::timestamptz[], %b::timestamptz[]) AS u(o, t, e, f, l)
        ORDER BY o, t, e
        ON CONFLICT ("organization_id", "type", "external_id")
        DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at"
        RETURNING "id", "type", "external_id"
    """  # noqa: S608
    columns = ", ".join(f'"{name}"' for name in EVENT_COLUMN_TYPES)
    arrays = ", ".join(f"%b::{kind}[]" for kind in EVENT_COLUMN_TYPES.values())
    events = f'INSERT INTO "{event}" ({columns}) SELECT * FROM unnest({arrays})'  # noqa: S608
    return claim, records, events


def latency_percentiles(sample: QuerySet[Any, Any]) -> tuple[int, Any, Any, Any]:
    """(count, p50, p95, max) of a queryset of `latency` values, by `percentile_cont` in one
    statement (PostgreSQL only): the sample never travels to Python."""
    sql, params = sample.query.sql_with_params()
    with connection.cursor() as cursor:
        # `sql` is Django's own compiled query; every value is in `params`.
        cursor.execute(
            "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY latency),"  # noqa: S608
            " percentile_cont(0.95) WITHIN GROUP (ORDER BY latency), max(latency)"
            f" FROM ({sql}) AS sample",
            params,
        )
        size, p50, p95, longest = cursor.fetchone()
    return size, p50, p95, longest

"""Partition upkeep: the events table's partitions, created ahead of the rows that need them.

On PostgreSQL `events_app_event` is partitioned by RANGE (received_at), one partition per
BIGMIND_EVENT_PARTITION_INTERVAL (month by default; week or day for very high volume), in UTC.
A partition's name encodes its range, `events_app_event_p20270101_20270201` holding
[2027-01-01, 2027-02-01). `partitions_ensure` creates the partition of the current interval and
BIGMIND_EVENT_PARTITIONS_AHEAD more; `migrate` (a post_migrate handler) and beat
(`events.partitions`) run it.

The DEFAULT partition, `events_app_event_default`, catches any row no partition covers, so an
insert never fails because upkeep did not run (beat down over a month's turn, an import of old
events). It is meant to stay empty: PostgreSQL refuses a partition for a range the default holds
rows of, so upkeep moves them first. In one transaction, under the advisory lock: the new table
is created standalone, the default partition's rows of that range are moved into it
(DELETE ... RETURNING feeding an INSERT, under a SHARE ROW EXCLUSIVE lock on the default
partition, which holds off inserts into it but not reads), and the table is ATTACHed. Upkeep
also makes a partition for every interval the default partition holds rows of, so it drains
itself at the next run.

Locks (PostgreSQL 15): CREATE TABLE of the standalone table locks nothing else; ATTACH PARTITION
takes SHARE UPDATE EXCLUSIVE on the parent (reads and writes go on; it conflicts with other DDL
and VACUUM only) and ACCESS EXCLUSIVE on the new table and on the default partition, which it
scans to prove none of its rows falls in the new range (an empty or small table: a moment).
That is why upkeep attaches instead of `CREATE TABLE ... PARTITION OF`, which takes ACCESS
EXCLUSIVE on the parent. The parent's indexes are made on the new table before it is attached
(named after the parent's index and the range, `event_org_received_p20270101_20270201`, which
query plans then show), and attaching adopts them and validates the foreign keys (a moment on
an empty table).

Safe to run twice at once (two beats, beat and `migrate`): every change is made under one
transaction-level advisory lock (`partitions_lock`, shared with retention's drops), and the
ranges are read again under it, so a second run finds the partitions made and does nothing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

logger = logging.getLogger(__name__)

TABLE = "events_app_event"
INTERVALS = ("month", "week", "day")
# pg_advisory_xact_lock key of every change to the partitions (upkeep, retention's drops, the
# conversion's partitions): "bigmindp" in ASCII, so it cannot meet another subsystem's key.
LOCK_KEY = int.from_bytes(b"bigmindp", "big")

_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


@dataclass(frozen=True)
class Partition:
    name: str
    # None for the DEFAULT partition.
    start: datetime | None
    end: datetime | None
    # pg_class.reltuples: ANALYZE's estimate (-1 before the first ANALYZE or VACUUM).
    rows_estimate: int
    bytes: int

    @property
    def is_default(self) -> bool:
        return self.start is None


def default_name(table: str = TABLE) -> str:
    return f"{table}_default"


def partition_name(start: datetime, end: datetime, table: str = TABLE) -> str:
    return f"{table}_p{start:%Y%m%d}_{end:%Y%m%d}"


def interval_start(moment: datetime, interval: str) -> datetime:
    """The start, in UTC, of the interval holding `moment` (weeks start on Monday, ISO)."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "month":
        return day.replace(day=1)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "day":
        return day
    raise ValueError(f"unknown partition interval {interval!r}: use one of {INTERVALS}")


def interval_end(start: datetime, interval: str) -> datetime:
    if interval == "month":
        return (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else (start.replace(month=start.month + 1))
        )
    return start + timedelta(days=7 if interval == "week" else 1)


def timestamp_literal(moment: datetime) -> str:
    # DDL takes no bind parameters; a UTC datetime we computed is rendered, never user input.
    return f"'{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}+00'"


def relkind(db: BaseDatabaseWrapper | None = None, table: str = TABLE) -> str | None:
    """`table`'s pg_class.relkind on PostgreSQL ("p": partitioned, "r": a plain table); None on
    SQLite or when there is no such table."""
    db = db or connections["default"]
    if db.vendor != "postgresql":  # (events_app.dialect sits above this layer)
        return None
    with db.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [table])
        row = cursor.fetchone()
    return row[0] if row else None


def is_partitioned(db: BaseDatabaseWrapper | None = None, table: str = TABLE) -> bool:
    return relkind(db, table) == "p"


def partitions_lock(cursor: CursorWrapper) -> None:
    """Serialise changes to the partitions; held until the transaction ends."""
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])


def partitions_read(cursor: CursorWrapper, table: str = TABLE) -> list[Partition]:
    """The partitions of `table`, oldest first, the default one last."""
    cursor.execute(
        """
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples::bigint,
               pg_total_relation_size(c.oid)
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(%s)
        """,
        [table],
    )
    found: list[Partition] = []
    for name, bound, rows, size in cursor.fetchall():
        match = _BOUND.search(bound or "")
        if match:
            start, end = (datetime.fromisoformat(value) for value in match.groups())
            found.append(Partition(name, start.astimezone(UTC), end.astimezone(UTC), rows, size))
        else:
            found.append(Partition(name, None, None, rows, size))
    return sorted(
        found, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC))
    )


def partitions_list(db: BaseDatabaseWrapper | None = None) -> list[Partition]:
    db = db or connections["default"]
    if not is_partitioned(db):
        return []
    with db.cursor() as cursor:
        return partitions_read(cursor)


def _gaps(
    start: datetime, end: datetime, taken: list[Partition]
) -> list[tuple[datetime, datetime]]:
    """The parts of [start, end) no existing partition covers (after a change of interval,
    the new partitions fill around the old ones instead of overlapping them)."""
    gaps: list[tuple[datetime, datetime]] = []
    cursor_at = start
    for part in taken:
        if part.start is None or part.end is None or part.end <= cursor_at or part.start >= end:
            continue
        if part.start > cursor_at:
            gaps.append((cursor_at, part.start))
        cursor_at = max(cursor_at, part.end)
    if cursor_at < end:
        gaps.append((cursor_at, end))
    return gaps


def columns_of(cursor: CursorWrapper, table: str) -> str:
    """`table`'s columns, quoted, in order (for INSERT ... SELECT between its twins)."""
    cursor.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum",
        [table],
    )
    return ", ".join(f'"{name}"' for (name,) in cursor.fetchall())


# Index names are unique per schema: the conversion builds the new table's indexes under these
# names until the old table's are renamed (events_app/partitions/conversion.py).
BUILDING_SUFFIX = "_building"
_INDEX_TAIL = re.compile(r" ON (?:ONLY )?\S+ (USING .*)$")


def index_tail(definition: str) -> str:
    """`USING btree (...) [WHERE ...]` of a pg_get_indexdef() definition."""
    match = _INDEX_TAIL.search(definition)
    if match is None:
        raise RuntimeError(f"unexpected index definition: {definition}")
    return match.group(1)


def partition_index_name(index: str, partition: str, prefix: str = TABLE) -> str:
    """`event_org_received_p20270101_20270201`, `events_app_event_pkey_default`: the parent
    index's name and the partition's range, so a query plan names the index it uses."""
    return f"{index.removesuffix(BUILDING_SUFFIX)}_{partition.removeprefix(prefix + '_')}"


def _partition_indexes(cursor: CursorWrapper, table: str, partition: str, prefix: str) -> None:
    """The parent's primary key and indexes on a standalone table about to be attached (ATTACH
    then adopts them instead of building its own under generated names)."""
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype = 'p'",
        [table],
    )
    for key, definition in cursor.fetchall():
        name = partition_index_name(key, partition, prefix)
        cursor.execute(f'ALTER TABLE "{partition}" ADD CONSTRAINT "{name}" {definition}')
    cursor.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary",
        [table],
    )
    for index, definition in cursor.fetchall():
        name = partition_index_name(index, partition, prefix)
        cursor.execute(f'CREATE INDEX "{name}" ON "{partition}" {index_tail(definition)}')


def partition_create(
    cursor: CursorWrapper, start: datetime, end: datetime, table: str = TABLE, prefix: str = TABLE
) -> list[str]:
    """Partitions covering what no partition of `table` covers in [start, end), rows of that
    range moved out of the default partition. Call inside a transaction holding
    `partitions_lock`. `prefix`: of the partitions' names (the conversion builds a table under
    another name whose partitions already carry their final names)."""
    created: list[str] = []
    existing = partitions_read(cursor, table)
    default = next((p.name for p in existing if p.is_default), None)
    for low, high in _gaps(start, end, existing):
        name = partition_name(low, high, prefix)
        cursor.execute(
            f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
            "INCLUDING STORAGE)"
        )
        bounds = f"FROM ({timestamp_literal(low)}) TO ({timestamp_literal(high)})"
        if default is not None:
            columns = columns_of(cursor, table)
            cursor.execute(f'LOCK TABLE "{default}" IN SHARE ROW EXCLUSIVE MODE')
            # Only model metadata and computed UTC bounds are interpolated.
            cursor.execute(
                f'WITH moved AS (DELETE FROM "{default}" '  # noqa: S608
                f'WHERE "received_at" >= {timestamp_literal(low)} '
                f'AND "received_at" < {timestamp_literal(high)} RETURNING {columns}) '
                f'INSERT INTO "{name}" ({columns}) SELECT {columns} FROM moved'
            )
            if cursor.rowcount:
                logger.warning(
                    "partitions: %d event(s) moved from %s to %s", cursor.rowcount, default, name
                )
        _partition_indexes(cursor, table, name, prefix)
        cursor.execute(f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES {bounds}')
        created.append(name)
    return created


def intervals_of(
    cursor: CursorWrapper, interval: str, source: str, params: list[Any]
) -> list[datetime]:
    """Starts of the intervals that rows of `source` (a FROM clause) fall in."""
    if interval not in INTERVALS:
        raise ValueError(f"unknown partition interval {interval!r}: use one of {INTERVALS}")
    # date_trunc('week') starts weeks on Monday, as interval_start does.
    cursor.execute(
        f"SELECT DISTINCT date_trunc('{interval}', \"received_at\" AT TIME ZONE 'UTC') "  # noqa: S608
        f"FROM {source}",
        params,
    )
    return [start.replace(tzinfo=UTC) for (start,) in cursor.fetchall()]


def partitions_ensure(
    *,
    now: datetime | None = None,
    ahead: int | None = None,
    interval: str | None = None,
    db: BaseDatabaseWrapper | None = None,
) -> list[str]:
    """Create the partitions of the current interval and `ahead` more, and of any interval the
    default partition holds rows of; each in its own short transaction. Idempotent. Returns the
    names created."""
    db = db or connections["default"]
    if not is_partitioned(db):
        return []
    now = now or timezone.now()
    ahead = settings.BIGMIND_EVENT_PARTITIONS_AHEAD if ahead is None else ahead
    interval = interval or settings.BIGMIND_EVENT_PARTITION_INTERVAL
    start = interval_start(now, interval)
    starts = [start]
    for _ in range(max(0, ahead)):
        starts.append(interval_end(starts[-1], interval))
    with db.cursor() as cursor:
        # The default partition's rows (none, normally: an empty table costs nothing).
        for part in partitions_read(cursor):
            if part.is_default:
                held = intervals_of(cursor, interval, f'"{part.name}"', [])
                starts += [s for s in held if s not in starts]
    created: list[str] = []
    for low in sorted(starts):
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            partitions_lock(cursor)
            created += partition_create(cursor, low, interval_end(low, interval))
    if created:
        logger.info("partitions: created %s", ", ".join(created))
    return created

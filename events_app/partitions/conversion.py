"""Converting an existing deployment's unpartitioned events table to range partitions, in chunks.

Run by migration 0017 (`migrate`), or out of band before it by
`manage.py event_partitions --convert` (then 0017 finds the table partitioned and does nothing).
PostgreSQL only; a no-op on SQLite and on a table already partitioned. Ingest and processing may
go on throughout: no step holds a lock that stops them for longer than the last one, which takes
a moment whatever the table's size.

The steps, and the locks they take (PostgreSQL 15):

1. Set-up, one short transaction. A change log (`events_app_event_changes`: a sequence number
   and an event id) and a row trigger on the events that records the id of every row inserted,
   updated or deleted from now on: CREATE TRIGGER takes SHARE ROW EXCLUSIVE on the events (it
   waits for running writes to commit, and writes wait for it: a moment). The new table
   `events_app_event_new`, PARTITION BY RANGE (received_at), with the events' columns, defaults,
   CHECK constraints and foreign keys (adding a foreign key takes SHARE ROW EXCLUSIVE on the
   organization, signal and CRM record tables: a moment, the table being empty), its DEFAULT
   partition and the partitions of the current interval and BIGMIND_EVENT_PARTITIONS_AHEAD more.
   Foreign keys that point at the events (EventTransition's, dropped by 0017 before this step
   when run by `migrate`) are dropped: a partitioned table cannot be referenced by `id` alone.
2. Copy, in chunks of CHUNK_SIZE rows walked in primary-key order (the only index of the old
   table that gives a keyset walk; UUIDv7 ids follow received_at), each chunk one INSERT ...
   SELECT in autocommit, preceded by the creation of the partitions its rows need: ACCESS SHARE
   on the events (reads and writes go on). No index but the new table's partitions is written
   yet, so the copy is a plain append.
3. Indexes: the primary key (id, received_at) and every index of the old table (its primary key
   aside), built on the new table's partitions, which nothing else uses yet (SHARE on them; the
   events are untouched). A partition's index is named after the parent's and the partition's
   range (`event_org_received_p20270101_20270201`).
4. Catch-up, in rounds of up to CHUNK_SIZE logged ids, each one transaction: the ids are taken
   off the change log, their rows deleted from the new table and copied again from the old one
   (inserted, updated, or gone if deleted). ACCESS SHARE on the events. A change committed after
   a round read its row has its own log entry, taken by a later round: the log entry and the
   change commit together.
5. Swap, one transaction under `SET LOCAL lock_timeout` (retried a few times, so a long query
   never leaves every new one queued behind the waiting lock): ACCESS EXCLUSIVE on the events
   (reads and writes wait), the last log entries caught up (few: step 4 ran until SWAP_BACKLOG or
   fewer were left), the trigger dropped, the old table renamed `events_app_event_unpartitioned`
   (its indexes and primary key get the suffix `_unpartitioned`), the new one renamed
   `events_app_event` with its indexes and primary key taking the old names, its owner and grants
   made those of the old table. Statements waiting on the lock then run on the new table
   (PostgreSQL looks the name up again after the wait).
6. Clean-up: DROP of the old table (ACCESS EXCLUSIVE on it, which nothing uses any more, and
   SHARE ROW EXCLUSIVE for a moment on the tables its foreign keys point at), of the log and of
   the trigger function; ANALYZE of the new table when it holds rows (autovacuum never analyzes
   a partitioned parent, only its partitions).

Interrupted before the swap (a crash, a Ctrl-C), it is run again from the start: the set-up drops
what a previous run left (the new table, the log, the trigger), the old table being untouched.
Interrupted after the swap, the next run only drops what step 6 had not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.utils import CursorWrapper
from django.utils import timezone

from events_app.partitions.upkeep import (
    BUILDING_SUFFIX,
    TABLE,
    columns_of,
    default_name,
    index_tail,
    interval_end,
    interval_start,
    intervals_of,
    is_partitioned,
    partition_create,
    partition_index_name,
    partitions_read,
    relkind,
)

logger = logging.getLogger(__name__)

NEW = f"{TABLE}_new"
RETIRED = f"{TABLE}_unpartitioned"
LOG = f"{TABLE}_changes"
TRIGGER = f"{TABLE}_log_change"
CHUNK_SIZE = 50_000
# The swap's wait for its ACCESS EXCLUSIVE lock, per try; between tries the log is caught up.
SWAP_LOCK_TIMEOUT = "5s"
SWAP_TRIES = 12
# Catch-up rounds go on until no more than this many changes wait: the swap copies the rest
# under its lock, so they are few.
SWAP_BACKLOG = 1000
_LOWEST_ID = UUID(int=0)


@dataclass
class ConversionResult:
    converted: bool = False
    rows_copied: int = 0
    rows_caught_up: int = 0
    chunks: int = 0
    partitions: list[str] = field(default_factory=list)
    seconds: float = 0.0
    swap_seconds: float = 0.0


def conversion_needed(db: BaseDatabaseWrapper | None = None) -> bool:
    """True on PostgreSQL while the events table is a plain (unpartitioned) table."""
    return relkind(db) == "r"


def _clean_up_previous_run(cursor: CursorWrapper) -> None:
    cursor.execute(f'DROP TRIGGER IF EXISTS "{TRIGGER}" ON "{TABLE}"')
    cursor.execute(f'DROP FUNCTION IF EXISTS "{TRIGGER}"()')
    cursor.execute(f'DROP TABLE IF EXISTS "{LOG}"')
    # Its partitions go with it.
    cursor.execute(f'DROP TABLE IF EXISTS "{NEW}"')


def _indexes(cursor: CursorWrapper) -> list[tuple[str, str]]:
    """(name, definition) of the old table's indexes, its primary key aside."""
    cursor.execute(
        """
        SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisunique
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary
        ORDER BY c.relname
        """,
        [TABLE],
    )
    found = []
    for name, definition, unique in cursor.fetchall():
        if unique:
            # A partitioned table's unique index must contain received_at; 0016 moved the one
            # there was (idempotency keys) to a table of its own.
            raise RuntimeError(
                f"the events table has a unique index {name} ({definition}): migrate to "
                "events_app 0016 first, which moves the idempotency keys to their own table"
            )
        found.append((name, definition))
    return found


def _set_up(cursor: CursorWrapper, *, now: datetime, interval: str, ahead: int) -> list[str]:
    _indexes(cursor)  # refuses a unique index before anything is copied
    _clean_up_previous_run(cursor)
    cursor.execute(f'CREATE TABLE "{LOG}" ("seq" bigserial PRIMARY KEY, "id" uuid NOT NULL)')
    cursor.execute(
        f"""
        CREATE FUNCTION "{TRIGGER}"() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{LOG}" ("id")
            VALUES (CASE WHEN TG_OP = 'DELETE' THEN OLD."id" ELSE NEW."id" END);
            RETURN NULL;
        END $$
        """  # noqa: S608
    )
    cursor.execute(
        f'CREATE TRIGGER "{TRIGGER}" AFTER INSERT OR UPDATE OR DELETE ON "{TABLE}" '
        f'FOR EACH ROW EXECUTE FUNCTION "{TRIGGER}"()'
    )
    cursor.execute(
        f'CREATE TABLE "{NEW}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
        'INCLUDING STORAGE) PARTITION BY RANGE ("received_at")'
    )
    cursor.execute(
        "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
        [TABLE],
    )
    for name, definition in cursor.fetchall():
        cursor.execute(f'ALTER TABLE "{NEW}" ADD CONSTRAINT "{name}" {definition}')
    cursor.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint "
        "WHERE confrelid = to_regclass(%s) AND contype = 'f'",
        [TABLE],
    )
    for table, name in cursor.fetchall():
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    cursor.execute(f'CREATE TABLE "{default_name()}" PARTITION OF "{NEW}" DEFAULT')
    created = [default_name()]
    start = interval_start(now, interval)
    for _ in range(ahead + 1):
        end = interval_end(start, interval)
        created += partition_create(cursor, start, end, table=NEW)
        start = end
    return created


def _partitions_for(
    cursor: CursorWrapper, interval: str, where: str, params: list[Any]
) -> list[str]:
    """Partitions of the new table for the intervals the old table's rows `where` fall in."""
    created: list[str] = []
    for start in intervals_of(cursor, interval, f'"{TABLE}" WHERE {where}', params):
        # A transaction (or a savepoint in the catch-up's): a partition is made whole or not.
        with transaction.atomic(using=cursor.db.alias):
            created += partition_create(cursor, start, interval_end(start, interval), table=NEW)
    return created


def _copy(
    cursor: CursorWrapper, columns: str, interval: str, size: int, result: ConversionResult
) -> None:
    last = _LOWEST_ID
    while True:
        cursor.execute(
            f'SELECT "id" FROM "{TABLE}" WHERE "id" > %s ORDER BY "id" OFFSET %s LIMIT 1',  # noqa: S608
            [last, size - 1],
        )
        row = cursor.fetchone()
        upper: UUID | None = row[0] if row else None
        where, params = (
            ('"id" > %s AND "id" <= %s', [last, upper]) if upper else ('"id" > %s', [last])
        )
        result.partitions += _partitions_for(cursor, interval, where, params)
        cursor.execute(
            f'INSERT INTO "{NEW}" ({columns}) SELECT {columns} FROM "{TABLE}" WHERE {where}',  # noqa: S608
            params,
        )
        result.rows_copied += cursor.rowcount
        result.chunks += 1
        if upper is None:
            return
        last = upper


def _build_indexes(cursor: CursorWrapper) -> list[str]:
    """The new table's primary key and indexes; returns the old table's index names, which the
    swap gives to the new table's (built under BUILDING_SUFFIX names until then). Each index is
    made on the parent alone, then on each partition under its own name, then attached."""
    key = f"{TABLE}_pkey"
    cursor.execute(
        f'ALTER TABLE "{NEW}" ADD CONSTRAINT "{key}{BUILDING_SUFFIX}" '
        'PRIMARY KEY ("id", "received_at")'
    )
    with_partitions = [p.name for p in partitions_read(cursor, NEW)]
    # PostgreSQL names the partitions' keys after the partition; they take the scheme of the
    # other indexes instead (events_app_event_pkey_p20270101_20270201).
    cursor.execute(
        "SELECT c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        "WHERE c.relname = ANY(%s) AND k.contype = 'p'",
        [with_partitions],
    )
    for partition, name in cursor.fetchall():
        renamed = partition_index_name(key, partition)
        cursor.execute(f'ALTER TABLE "{partition}" RENAME CONSTRAINT "{name}" TO "{renamed}"')
    names = []
    for name, definition in _indexes(cursor):
        tail = index_tail(definition)
        building = f"{name}{BUILDING_SUFFIX}"
        cursor.execute(f'CREATE INDEX "{building}" ON ONLY "{NEW}" {tail}')
        for partition in with_partitions:
            child = partition_index_name(name, partition)
            cursor.execute(f'CREATE INDEX "{child}" ON "{partition}" {tail}')
            cursor.execute(f'ALTER INDEX "{building}" ATTACH PARTITION "{child}"')
        names.append(name)
    return names


def _catch_up_round(
    cursor: CursorWrapper, columns: str, interval: str, size: int, result: ConversionResult
) -> int:
    """Copy again the rows of up to `size` log entries; returns the entries taken. Runs inside a
    transaction, so the entries are taken off the log only with their rows copied."""
    cursor.execute(
        f'DELETE FROM "{LOG}" WHERE "seq" IN '  # noqa: S608
        f'(SELECT "seq" FROM "{LOG}" ORDER BY "seq" LIMIT %s) RETURNING "id"',
        [size],
    )
    taken = cursor.fetchall()
    ids = sorted({row[0] for row in taken})
    if ids:
        result.partitions += _partitions_for(cursor, interval, '"id" = ANY(%s)', [ids])
        cursor.execute(f'DELETE FROM "{NEW}" WHERE "id" = ANY(%s)', [ids])  # noqa: S608
        cursor.execute(
            f'INSERT INTO "{NEW}" ({columns}) SELECT {columns} FROM "{TABLE}" '  # noqa: S608
            'WHERE "id" = ANY(%s)',
            [ids],
        )
        result.rows_caught_up += len(ids)
    return len(taken)


def _swap(cursor: CursorWrapper, index_names: list[str]) -> None:
    cursor.execute(f'DROP TRIGGER "{TRIGGER}" ON "{TABLE}"')
    cursor.execute(f'ALTER TABLE "{TABLE}" RENAME TO "{RETIRED}"')
    cursor.execute(f'ALTER TABLE "{RETIRED}" RENAME CONSTRAINT "{TABLE}_pkey" TO "{RETIRED}_pkey"')
    for name in index_names:
        cursor.execute(f'ALTER INDEX "{name}" RENAME TO "{name}_unpartitioned"')
        cursor.execute(f'ALTER INDEX "{name}{BUILDING_SUFFIX}" RENAME TO "{name}"')
    cursor.execute(f'ALTER TABLE "{NEW}" RENAME TO "{TABLE}"')
    cursor.execute(
        f'ALTER TABLE "{TABLE}" RENAME CONSTRAINT "{TABLE}_pkey{BUILDING_SUFFIX}" TO "{TABLE}_pkey"'
    )
    # Owner and grants as the old table had them (a role of the application may own it, and
    # read-only roles may have been granted it).
    cursor.execute(
        "SELECT pg_get_userbyid(relowner), relacl IS NULL FROM pg_class "
        "WHERE oid = to_regclass(%s)",
        [RETIRED],
    )
    owner, no_acl = cursor.fetchone()
    cursor.execute("SELECT current_user")
    if owner != cursor.fetchone()[0]:
        cursor.execute(f'ALTER TABLE "{TABLE}" OWNER TO "{owner}"')
    if not no_acl:
        cursor.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' "
            "ELSE quote_ident(pg_get_userbyid(a.grantee)) END, a.privilege_type "
            "FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = to_regclass(%s)",
            [RETIRED],
        )
        for grantee, privilege in cursor.fetchall():
            cursor.execute(f'GRANT {privilege} ON "{TABLE}" TO {grantee}')


def events_convert(
    *,
    db: BaseDatabaseWrapper | None = None,
    chunk_size: int = CHUNK_SIZE,
    interval: str | None = None,
    ahead: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert the events table to range partitions (see the module docstring for the steps and
    their locks). Does nothing when it is partitioned already or on SQLite."""
    db = db or connections["default"]
    result = ConversionResult()
    if not conversion_needed(db):
        if db.vendor == "postgresql":
            # A run stopped between its swap and its clean-up left these (inert: the trigger
            # went with the swap).
            with db.cursor() as cursor:
                cursor.execute(f'DROP TABLE IF EXISTS "{RETIRED}", "{LOG}"')
                cursor.execute(f'DROP FUNCTION IF EXISTS "{TRIGGER}"()')
        return result
    say = progress or logger.info
    with db.cursor() as cursor:
        cursor.execute(f'SELECT EXISTS (SELECT 1 FROM "{TABLE}")')  # noqa: S608
        if not cursor.fetchone()[0]:
            say = logger.debug  # a fresh database: nothing worth telling
    interval = interval or settings.BIGMIND_EVENT_PARTITION_INTERVAL
    ahead = settings.BIGMIND_EVENT_PARTITIONS_AHEAD if ahead is None else ahead
    began = time.monotonic()
    with transaction.atomic(using=db.alias), db.cursor() as cursor:
        result.partitions += _set_up(cursor, now=timezone.now(), interval=interval, ahead=ahead)
    with db.cursor() as cursor:
        columns = columns_of(cursor, TABLE)
        say(f"copying the events in chunks of {chunk_size}")
        _copy(cursor, columns, interval, chunk_size, result)
        say(f"copied {result.rows_copied} events in {result.chunks} chunks; building the indexes")
        index_names = _build_indexes(cursor)
    while True:
        with transaction.atomic(using=db.alias), db.cursor() as cursor:
            taken = _catch_up_round(cursor, columns, interval, chunk_size, result)
        if taken <= SWAP_BACKLOG:
            break
    say(f"caught up {result.rows_caught_up} events changed meanwhile; swapping the tables")
    for attempt in range(1, SWAP_TRIES + 1):
        try:
            with transaction.atomic(using=db.alias), db.cursor() as cursor:
                cursor.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'")
                cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
                locked = time.monotonic()
                while _catch_up_round(cursor, columns, interval, chunk_size, result):
                    pass
                _swap(cursor, index_names)
            result.swap_seconds = time.monotonic() - locked
            break
        except OperationalError as exc:
            # lock_timeout: queries kept the table; catch up what they wrote, then try again.
            if attempt == SWAP_TRIES or "lock timeout" not in str(exc):
                raise
            say(f"swap: the lock was not free within {SWAP_LOCK_TIMEOUT} (try {attempt})")
            with transaction.atomic(using=db.alias), db.cursor() as cursor:
                _catch_up_round(cursor, columns, interval, chunk_size, result)
    with db.cursor() as cursor:
        cursor.execute(f'DROP TABLE "{RETIRED}"')
        cursor.execute(f'DROP TABLE "{LOG}"')
        cursor.execute(f'DROP FUNCTION "{TRIGGER}"()')
        if result.rows_copied:
            # Not on an empty table (a fresh database): analyzed empty, partitions would be
            # planned as empty (sequential scans in cached generic plans) until autovacuum's
            # next analyze; never analyzed, the planner assumes a few pages and probes indexes.
            cursor.execute(f'ANALYZE "{TABLE}"')
    result.converted = True
    result.seconds = time.monotonic() - began
    say(
        f"converted: {result.rows_copied} events copied, {result.rows_caught_up} caught up, "
        f"{len(result.partitions)} partitions, in {result.seconds:.1f} s "
        f"(the swap held its lock {result.swap_seconds:.2f} s)"
    )
    return result


def events_unconvert(*, db: BaseDatabaseWrapper | None = None) -> bool:
    """Back to one plain table (migrating back past 0017): one transaction under ACCESS
    EXCLUSIVE on the events for the whole copy, so for development and test databases only (a
    large deployment restores its backup instead). Returns whether there was anything to do."""
    db = db or connections["default"]
    if not is_partitioned(db):
        return False
    plain = f"{TABLE}_plain"
    with transaction.atomic(using=db.alias), db.cursor() as cursor:
        cursor.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
        columns = columns_of(cursor, TABLE)
        cursor.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(%s) AND contype = 'f' ORDER BY conname",
            [TABLE],
        )
        keys = cursor.fetchall()
        cursor.execute(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%s) AND NOT i.indisprimary ORDER BY c.relname",
            [TABLE],
        )
        indexes = cursor.fetchall()
        cursor.execute(
            f'CREATE TABLE "{plain}" (LIKE "{TABLE}" INCLUDING DEFAULTS INCLUDING CONSTRAINTS '
            "INCLUDING STORAGE)"
        )
        cursor.execute(
            f'INSERT INTO "{plain}" ({columns}) SELECT {columns} FROM "{TABLE}"'  # noqa: S608
        )
        # Its partitions go with it, and its index names are free again.
        cursor.execute(f'DROP TABLE "{TABLE}"')
        cursor.execute(f'ALTER TABLE "{plain}" RENAME TO "{TABLE}"')
        cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{TABLE}_pkey" PRIMARY KEY ("id")')
        for name, definition in keys:
            cursor.execute(f'ALTER TABLE "{TABLE}" ADD CONSTRAINT "{name}" {definition}')
        for name, definition in indexes:
            cursor.execute(f'CREATE INDEX "{name}" ON "{TABLE}" {index_tail(definition)}')
    return True

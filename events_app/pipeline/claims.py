"""Claiming events: pending -> processing in one statement, the claim time as fencing token.

A claim counts the attempt and returns every column processing needs (no second read of the
events); the events' `processing` history rows are written with it (one data-modifying CTE on
PostgreSQL, one transaction on SQLite). Every later write of the pipeline requires
`status = 'processing' AND claimed_at = <our claim time>` (`STATUS_IS_PROCESSING` and the
claim's `claimed_at`), so a worker that lost its claim (the sweep gave the event to another
after a time-out) can never write anything.

Several events are claimed at once only on their first attempt; a later attempt is claimed
alone (events_app/pipeline/processing.py says why).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from django.db import connection, transaction
from django.utils import timezone

from events_app import dialect
from events_app.models import Event, EventStatus, EventTransition
from events_app.pipeline import rollups

# For hand-written SQL (constants of the code, never input).
# The claim by ids and the fenced updates test the status as an expression no index matches,
# so that PostgreSQL reaches the rows by primary key only: on the (status, received_at)
# index, "pending" or "processing" also finds every event that passed through that status
# since the last vacuum (dead index entries, which a bitmap scan visits again each time):
# 7 ms of a 12 ms update of 200 events in the benchmark, growing with the traffic.
STATUS_IS_PROCESSING = (
    f""""{Event._meta.db_table}"."status" || '' = '{EventStatus.PROCESSING.value}'"""
)
_PENDING = EventStatus.PENDING.value
_PROCESSING = EventStatus.PROCESSING.value


@dataclass(eq=False)
class Claim:
    """One claimed event, with the columns processing needs (returned by the claim itself)."""

    event_id: UUID
    claimed_at: datetime  # the fencing token
    attempt: int
    signal_id: int
    organization_id: int
    crm_record_id: int
    identity_type: str
    identity_id: str
    data: Any
    timestamp: datetime
    received_at: datetime
    processed_at: datetime | None  # of an earlier completion (a reprocessed event)
    rollup: dict[str, Any] | None
    # Accepted under `flag` enforcement although `data` failed schema version
    # `schema_version`: the processor is told, with the violations.
    schema_valid: bool = True
    violations: list[dict[str, str]] | None = None
    schema_version: int | None = None

    @property
    def id(self) -> UUID:  # what events_app.metrics reads of an event
        return self.event_id


# Datetimes as text: Python's fromisoformat reads PostgreSQL's ISO output many times faster
# than the driver's timestamptz loader (a tenth of the worker's time in a profile).
_RETURNED = (
    '"id", "attempts", "signal_id", "organization_id", "crm_record_id", "identity_type", '
    '"identity_id", "data", CAST("timestamp" AS text), CAST("received_at" AS text), '
    'CAST("processed_at" AS text), "rollup", "schema_valid", "violations", "schema_version"'
)


def _claims_read(rows: list[tuple[Any, ...]], claimed_at: datetime) -> list[Claim]:
    claims = [
        Claim(
            event_id=dialect.uuid_read(row[0]),
            claimed_at=claimed_at,
            attempt=row[1],
            signal_id=row[2],
            organization_id=row[3],
            crm_record_id=row[4],
            identity_type=row[5],
            identity_id=row[6],
            data=dialect.json_read(row[7]),
            timestamp=dialect.datetime_read(row[8]),
            received_at=dialect.datetime_read(row[9]),
            processed_at=dialect.datetime_read(row[10]),
            rollup=dialect.json_read(row[11]),
            schema_valid=bool(row[12]),  # SQLite answers 0 or 1
            violations=dialect.json_read(row[13]),
            schema_version=row[14],
        )
        for row in rows
    ]
    # Arrival order: the order in which a chunk's events are planned (plan.works_fold).
    claims.sort(key=lambda c: (c.received_at, c.event_id))
    return claims


def _claim_run(update: str, params: list[Any], now: datetime) -> list[Claim]:
    """Run a claiming `UPDATE ... RETURNING` and write its `processing` history rows with it."""
    return dialect.claim_with_history(
        update,
        params,
        returned=_RETURNED,
        now=now,
        read=lambda rows: _claims_read(rows, now),
        history=lambda claims: rollups.transitions_insert(
            rows=[(c.event_id, EventStatus.PROCESSING, c.attempt, now, "") for c in claims]
        ),
    )


def events_claim(
    *,
    event_ids: Iterable[UUID | str],
    received: Mapping[UUID, datetime] | None = None,
    now: datetime | None = None,
) -> list[Claim]:
    """pending -> processing for those of `event_ids` still pending, counting the attempt.

    The returned rows decide: an event another worker claimed, or that is already completed, is
    simply not returned. Several events are claimed only if this is their first attempt: a
    later one is claimed alone (see the module's docstring).

    `received`: the `received_at` of those events the caller knows it of. Their claim names
    their partitions (`dialect.received_within`) and visits no other; an id without one (a
    message of an earlier release) is claimed by id alone, visiting every partition.
    """
    ids = [UUID(str(i)) for i in dict.fromkeys(event_ids)]
    if not ids:
        return []
    now = now or timezone.now()
    received = received or {}
    timed = [i for i in ids if i in received]
    untimed = [i for i in ids if i not in received]
    first_only = ' AND "attempts" = 0' if len(ids) > 1 else ""
    claims: list[Claim] = []
    if timed:
        within, within_params = dialect.received_within(
            '"received_at"', [received[i] for i in timed]
        )
        claims += _claim_ids(timed, f"{first_only} AND {within}", within_params, now)
    if untimed:
        claims += _claim_ids(untimed, first_only, [], now)
    if timed and untimed:
        claims.sort(key=lambda c: (c.received_at, c.event_id))
    return claims


def _claim_ids(ids: list[UUID], condition: str, params: list[Any], now: datetime) -> list[Claim]:
    where, id_params = dialect.ids_in('"id"', ids)
    return _claim_where(f"{where}{condition}", [*id_params, *params], now)


def _claim_where(where: str, params: list[Any], now: datetime) -> list[Claim]:
    """Claim the pending events `where` picks (its parameters: `params`)."""
    table = Event._meta.db_table
    update = f"""
        UPDATE "{table}" SET "status" = '{_PROCESSING}', "attempts" = "attempts" + 1,
                             "claimed_at" = %s, "due_at" = NULL
        WHERE {where} AND "status" || '' = '{_PENDING}'
        RETURNING {_RETURNED}
    """  # noqa: S608
    return _claim_run(update, [dialect.datetime_value(now), *params], now)


def events_claim_due(*, limit: int, now: datetime | None = None) -> list[Claim]:
    """Claim up to `limit` due pending events on their first attempt, oldest first.

    The work a draining worker takes on (see `events_process`). On PostgreSQL, in one
    transaction, the candidates are picked and locked with FOR UPDATE SKIP LOCKED (two workers
    draining at once take different events instead of queueing on the same rows; a
    single-event claim of one of them waits for the lock, then finds it no longer pending),
    then claimed by id as `events_claim` claims them, naming their partitions. Two statements,
    not one: joined to the picked rows in one statement, the UPDATE was planned on the pick's
    guess of a few rows, a nested loop rescanning them for every row of the events' range
    (quadratic, and twice the cost of the claim by ids). SQLite has one writer at a time: one
    statement, atomic as is.
    """
    if limit <= 0:
        return []
    now = now or timezone.now()
    table = Event._meta.db_table
    due = f"""
        SELECT "id", "received_at" FROM "{table}"
        WHERE "status" = '{_PENDING}' AND "attempts" = 0
          AND ("due_at" IS NULL OR "due_at" <= %s)
        ORDER BY "received_at" LIMIT %s
    """  # noqa: S608
    if dialect.postgres():
        # The picked ids and the range of their received_at come back as text and go back as
        # parameters as they are: nothing to parse and dump again, 200 UUIDs and times a chunk.
        pick = f"""
            SELECT CAST(array_agg("id") AS text), CAST(min("received_at") AS text),
                   CAST(max("received_at") AS text)
            FROM ({due} FOR UPDATE SKIP LOCKED) AS "picked"
        """  # noqa: S608
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(pick, [now, limit])
            ids, earliest, latest = cursor.fetchone()
            if ids is None:
                return []
            where = (
                '"id" = ANY(CAST(%s AS uuid[])) AND "attempts" = 0'
                ' AND "received_at" BETWEEN CAST(%s AS timestamptz) AND CAST(%s AS timestamptz)'
            )
            return _claim_where(where, [ids, earliest, latest], now)
    set_claimed = f"""
        UPDATE "{table}" SET "status" = '{_PROCESSING}', "attempts" = "attempts" + 1,
                             "claimed_at" = %s, "due_at" = NULL
    """  # noqa: S608
    update, params = dialect.claim_due_update(
        due=due,
        set_claimed=set_claimed,
        returned=_RETURNED,
        claimed_at=dialect.datetime_value(now),
        limit=limit,
    )
    return _claim_run(update, params, now)


def transitions_record(
    *,
    event_ids: Iterable[UUID],
    status: str,
    attempt: int | None = None,
    note: str = "",
    attempts: dict[UUID, int] | None = None,
    at: datetime | None = None,
) -> None:
    """Add a step to the status history of these events (one INSERT for all of them)."""
    at = at or timezone.now()
    EventTransition.objects.bulk_create(
        [
            EventTransition(
                event_id=event_id,
                status=status,
                attempt=attempts.get(event_id, 0) if attempts is not None else (attempt or 0),
                at=at,
                note=note[:2000],
            )
            for event_id in event_ids
        ]
    )

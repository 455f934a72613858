"""Processing events a chunk at a time: claim, plan, ask the processor, complete in one transaction.

The life of a chunk (up to BIGMIND_DRAIN_CHUNK_SIZE events, fewer for a processor that is not
cheap: see `chunk_size`):
1. **Claim**, one statement: pending -> processing, the attempt counted, returning every column
   processing needs (no second read of the events); their `processing` history rows are written
   with it (one data-modifying CTE on PostgreSQL, one transaction on SQLite). The claim time is
   the fencing token: every later write requires `status = 'processing' AND claimed_at = <our
   claim time>`, so a worker that lost its claim (the sweep gave the event to another after a
   time-out) can never write anything.
2. **Plan**, outside any transaction (events_app/pipeline/plan.py): the facts of the whole chunk
   in a few queries (earlier metric buckets, current states, 7-day counts), folded over the
   events in arrival order as processing them one by one would; then the processor's insights,
   one call per event whose insight is due. A slow AI call holds no lock.
3. **Complete**, one transaction (`_complete`): the states of the chunk's (record, signal) pairs
   locked in key order and the state facts checked against them; the fenced UPDATE of every
   event to `completed` with its result, RETURNING the ids it really completed; the failed
   events settled (retry with backoff, or failed); then the rollups, each one statement for the
   chunk (metric buckets, states, insights, engagement), applied only for the events the fenced
   update returned and only for rollups not already recorded in `Event.rollup`, so a redelivered
   or reprocessed event never counts twice.

A whole chunk is one unit of work: a worker that dies in the middle of one has been charged an
attempt for every event of it, and for no other. So that an event that kills its worker every
time cannot use up its neighbours' attempts, only events on their first attempt are claimed
several at a time; a later attempt is claimed alone (its own message: the retry, or the sweep).

If another worker moved a record's state between the plan and the locks, the events of that
record and signal are planned again (up to 3 times, then they count as a transient failure);
the rest of the chunk completes. A processor error fails only its own event; an unexpected error
in the chunk's statements makes each of its events be processed alone, so that only the one at
fault fails. Anything unexpected is a permanent failure with the exception named: retrying a bug
only hides it (CONVENTIONS.md, "retry only errors known to be transient"); reprocess the event
once the cause is fixed.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from events_app import metrics
from events_app.models import Event, EventStatus, EventTransition
from events_app.pipeline import bulk, rollups
from events_app.pipeline.engagement import engagement_mass_of
from events_app.pipeline.facts import Pair, StateRow
from events_app.pipeline.plan import Drafts, Work, state_pairs, state_step, works_build, works_plan
from events_app.pipeline.processors import (
    InsightDraft,
    PermanentProcessingError,
    Processor,
    processor_get,
)
from signals_app.models import Signal, SignalType

logger = logging.getLogger(__name__)

# Share of the task's soft time limit a message may use before it hands its remaining events to
# a new message rather than risk the limit mid-way.
_BATCH_TIME_SHARE = 0.7
# Times the events of a record whose state another worker moved meanwhile are planned again
# within one attempt, before that counts as a (transient) failed attempt.
_STALE_FACTS_TRIES = 3
STALE_STATE = "The record's state changed while this event was processed"
# Times a chunk's transaction is tried again after PostgreSQL aborted it for a deadlock or a
# serialization failure (its writes are in key order, so neither is expected).
_CONFLICT_TRIES = 3
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
# For hand-written SQL (constants of the code, never input).
# The claim by ids and the fenced updates test the status as an expression no index matches,
# so that PostgreSQL reaches the rows by primary key only: on the (status, received_at)
# index, "pending" or "processing" also finds every event that passed through that status
# since the last vacuum (dead index entries, which a bitmap scan visits again each time):
# 7 ms of a 12 ms update of 200 events in the benchmark, growing with the traffic.
_STATUS_PROCESSING = (
    f""""{Event._meta.db_table}"."status" || '' = '{EventStatus.PROCESSING.value}'"""
)
_PENDING = EventStatus.PENDING.value
_PROCESSING = EventStatus.PROCESSING.value
_COMPLETED = EventStatus.COMPLETED.value
_FAILED = EventStatus.FAILED.value


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

    @property
    def id(self) -> UUID:  # what events_app.metrics reads of an event
        return self.event_id


# Datetimes as text: Python's fromisoformat reads PostgreSQL's ISO output many times faster
# than the driver's timestamptz loader (a tenth of the worker's time in a profile).
_RETURNED = (
    '"id", "attempts", "signal_id", "organization_id", "crm_record_id", "identity_type", '
    '"identity_id", "data", CAST("timestamp" AS text), CAST("received_at" AS text), '
    'CAST("processed_at" AS text), "rollup"'
)


def _claims_read(rows: list[tuple[Any, ...]], claimed_at: datetime) -> list[Claim]:
    claims = [
        Claim(
            event_id=bulk.uuid_read(row[0]),
            claimed_at=claimed_at,
            attempt=row[1],
            signal_id=row[2],
            organization_id=row[3],
            crm_record_id=row[4],
            identity_type=row[5],
            identity_id=row[6],
            data=bulk.json_read(row[7]),
            timestamp=bulk.datetime_read(row[8]),
            received_at=bulk.datetime_read(row[9]),
            processed_at=bulk.datetime_read(row[10]),
            rollup=bulk.json_read(row[11]),
        )
        for row in rows
    ]
    # Arrival order: the order in which a chunk's events are planned (plan.works_fold).
    claims.sort(key=lambda c: (c.received_at, c.event_id))
    return claims


def _claim_run(update: str, params: list[Any], now: datetime) -> list[Claim]:
    """Run a claiming `UPDATE ... RETURNING` and write its `processing` history rows with it."""
    table = EventTransition._meta.db_table
    if bulk.postgres():
        sql = f"""
            WITH "claimed" AS ({update}),
            "history" AS (
                INSERT INTO "{table}" ("event_id", "status", "attempt", "at", "note")
                SELECT "id", '{_PROCESSING}', "attempts", %s, '' FROM "claimed"
            )
            SELECT {_RETURNED} FROM "claimed"
        """  # noqa: S608
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, now])
            return _claims_read(cursor.fetchall(), now)
    # SQLite: no data-modifying CTE, so two statements; the claim and its history commit together.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(update, params)
            claims = _claims_read(cursor.fetchall(), now)
        rollups.transitions_insert(
            rows=[(c.event_id, EventStatus.PROCESSING, c.attempt, now, "") for c in claims]
        )
    return claims


def events_claim(*, event_ids: Iterable[UUID | str], now: datetime | None = None) -> list[Claim]:
    """pending -> processing for those of `event_ids` still pending, counting the attempt.

    The returned rows decide: an event another worker claimed, or that is already completed, is
    simply not returned. Several events are claimed only if this is their first attempt: a
    later one is claimed alone (see the module's docstring).
    """
    ids = [UUID(str(i)) for i in dict.fromkeys(event_ids)]
    if not ids:
        return []
    now = now or timezone.now()
    table = Event._meta.db_table
    first_only = ' AND "attempts" = 0' if len(ids) > 1 else ""
    id_params: list[Any]
    if bulk.postgres():
        where, id_params = '"id" = ANY(%s::uuid[])', [ids]
    else:
        where = '"id" IN (' + ", ".join(["%s"] * len(ids)) + ")"
        id_params = [i.hex for i in ids]
    update = f"""
        UPDATE "{table}" SET "status" = '{_PROCESSING}', "attempts" = "attempts" + 1,
                             "claimed_at" = %s, "due_at" = NULL
        WHERE {where} AND "status" || '' = '{_PENDING}'{first_only}
        RETURNING {_RETURNED}
    """  # noqa: S608
    return _claim_run(update, [bulk.datetime_value(now), *id_params], now)


def events_claim_due(*, limit: int, now: datetime | None = None) -> list[Claim]:
    """Claim up to `limit` due pending events on their first attempt, oldest first.

    The work a draining worker takes on (see `events_process`). On PostgreSQL the candidate
    rows are locked with FOR UPDATE SKIP LOCKED: two workers draining at once take different
    events instead of queueing on the same rows, and a single-event claim of one of those rows
    waits for the lock, then finds it no longer pending. The outer `status` test re-checks each
    row after any wait. SQLite has one writer at a time, so the statement is atomic as is.
    """
    if limit <= 0:
        return []
    now = now or timezone.now()
    table = Event._meta.db_table
    # The candidates are picked once, in a materialized CTE: as a plain `IN (subquery)` the
    # planner may re-run the LIMIT subquery and claim more rows than asked for (seen here).
    due = f"""
        SELECT "id" FROM "{table}"
        WHERE "status" = '{_PENDING}' AND "attempts" = 0
          AND ("due_at" IS NULL OR "due_at" <= %s)
        ORDER BY "received_at" LIMIT %s
    """  # noqa: S608
    claimed_at = bulk.datetime_value(now)
    set_claimed = f"""
        UPDATE "{table}" SET "status" = '{_PROCESSING}', "attempts" = "attempts" + 1,
                             "claimed_at" = %s, "due_at" = NULL
    """  # noqa: S608
    if bulk.postgres():
        update = f"""
            WITH "due" AS MATERIALIZED ({due} FOR UPDATE SKIP LOCKED)
            {set_claimed}
            WHERE "id" IN (SELECT "id" FROM "due") AND "status" = '{_PENDING}'
            RETURNING {_RETURNED}
        """  # noqa: S608
        params = [claimed_at, limit, claimed_at]
    else:
        update = f"""
            {set_claimed}
            WHERE "id" IN ({due}) AND "status" = '{_PENDING}'
            RETURNING {_RETURNED}
        """
        params = [claimed_at, claimed_at, limit]
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


def retry_delay(attempt: int) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(
        settings.BIGMIND_RETRY_BACKOFF_MAX_SECONDS,
        settings.BIGMIND_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempt - 1),
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


# --- completing a chunk ---------------------------------------------------------------------


class _ClaimsLost(Exception):
    """The fenced update did not complete every event planned: some claims are no longer ours
    (the sweep gave them to another worker), and the plan may rest on them. Rolled back; the
    chunk is planned again with the claims still held."""

    def __init__(self, lost: set[UUID]) -> None:
        super().__init__(f"{len(lost)} claim(s) lost")
        self.lost = lost


@dataclass
class _Outcome:
    completed: list[Work] = field(default_factory=list)
    retried: list[tuple[Work, float]] = field(default_factory=list)
    failed: list[Work] = field(default_factory=list)
    again: list[Claim] = field(default_factory=list)  # planned again: their state moved


def _insight_data(kind: str, draft: InsightDraft | None) -> dict[str, Any] | None:
    if draft is None:
        return None
    return {
        "kind": kind,
        "summary": draft.summary,
        "score": draft.score,
        "next_action": draft.next_action,
        "reasons": draft.reasons,
    }


def _states_check(
    works: list[Work],
    stored: dict[Pair, StateRow],
    planned: dict[Pair, StateRow],
    final: dict[Pair, Any],
) -> tuple[set[Pair], dict[Pair, StateRow], dict[Pair, StateRow]]:
    """Under the locks: the pairs whose state moved so that an event's conclusion changes
    (stale), and the states to insert and to replace.

    States only move forward, so an event that was not newer still is not: only a changed
    `newer`, `changed`, or (for a newer event) `previous` makes a pair stale.
    """
    by_pair: dict[Pair, list[Work]] = defaultdict(list)
    for work in works:
        if work.live and work.fresh == "state":
            by_pair[work.pair].append(work)
    stale: set[Pair] = set()
    insert: dict[Pair, StateRow] = {}
    replace: dict[Pair, StateRow] = {}
    for pair, pair_works in by_pair.items():
        now_stored = stored.get(pair)
        end = final.get(pair)
        if now_stored != planned.get(pair):
            current = now_stored
            for work in pair_works:
                facts, current = state_step(work, current)
                was = work.rollup["state"]
                if (facts["newer"], facts["changed"]) != (was["newer"], was["changed"]) or (
                    facts["newer"] and facts["previous"] != was["previous"]
                ):
                    stale.add(pair)
                    break
            end = current
        if pair in stale or end is None or end == now_stored:
            continue
        (insert if now_stored is None else replace)[pair] = end
    return stale, insert, replace


def _events_complete(works: list[Work], processor: Processor, now: datetime) -> set[UUID]:
    """The fenced UPDATE to `completed`; returns the ids it completed."""
    table = Event._meta.db_table
    values = []
    for work in works:
        result = {
            "processor": {"name": processor.name, "version": processor.version},
            "signal_type": work.signal.type,
            "insight": _insight_data(work.kind, work.draft),
            "rollup": work.rollup,
        }
        values.append(
            (
                work.claim.event_id,
                work.claim.claimed_at,
                result,
                work.rollup,
            )
        )
    source, params = bulk.rows(
        [("eid", "uuid"), ("tok", "timestamptz"), ("res", "jsonb"), ("rol", "jsonb")], values
    )
    sql = f"""
        UPDATE "{table}" SET "status" = '{_COMPLETED}', "result" = v."res",
            "rollup" = v."rol", "processed_at" = %s, "last_error" = '', "claimed_at" = NULL,
            "due_at" = NULL
        FROM {source}
        WHERE "{table}"."id" = v."eid" AND {_STATUS_PROCESSING}
          AND "{table}"."claimed_at" = v."tok"
        RETURNING "id"
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [bulk.datetime_value(now), *params])
        return {bulk.uuid_read(row[0]) for row in cursor.fetchall()}


def _events_settle(works: list[Work], now: datetime) -> tuple[list[tuple[Work, float]], list[Work]]:
    """Failed events back to `pending` with a backoff, or `failed` for good; fenced, with their
    history rows. Returns (retried with their delays, failed) among those still ours."""
    if not works:
        return [], []
    table = Event._meta.db_table
    plans: list[tuple[Work, str, str, datetime | None, str]] = []
    for work in works:
        attempt = work.claim.attempt
        error = (work.error or "")[:2000]
        if work.transient and attempt < settings.BIGMIND_PROCESSING_MAX_ATTEMPTS:
            delay = retry_delay(attempt)
            note = f"retry in {delay:.1f} s: {error}"
            plans.append((work, EventStatus.PENDING, error, now + timedelta(seconds=delay), note))
        else:
            if work.transient:
                error = f"{error} (gave up after {attempt} attempts)"
            plans.append((work, EventStatus.FAILED, error, None, error))
    source, params = bulk.rows(
        [
            ("eid", "uuid"),
            ("tok", "timestamptz"),
            ("st", "text"),
            ("err", "text"),
            ("due", "timestamptz"),
        ],
        [
            (
                w.claim.event_id,
                w.claim.claimed_at,
                status,
                error,
                due,
            )
            for w, status, error, due, _ in plans
        ],
    )
    sql = f"""
        UPDATE "{table}" SET "status" = v."st", "last_error" = v."err", "due_at" = v."due",
            "claimed_at" = NULL,
            "processed_at" = CASE WHEN v."st" = '{_FAILED}' THEN %s
                                  ELSE "{table}"."processed_at" END
        FROM {source}
        WHERE "{table}"."id" = v."eid" AND {_STATUS_PROCESSING}
          AND "{table}"."claimed_at" = v."tok"
        RETURNING "id"
    """  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [bulk.datetime_value(now), *params])
        moved = {bulk.uuid_read(row[0]) for row in cursor.fetchall()}
    plans = [p for p in plans if p[0].claim.event_id in moved]
    rollups.transitions_insert(
        rows=[
            (w.claim.event_id, status, w.claim.attempt, now, note)
            for w, status, _, _, note in plans
        ]
    )
    retried = [
        (w, (due - now).total_seconds()) for w, status, _, due, _ in plans if due is not None
    ]
    failed = [w for w, status, _, due, _ in plans if due is None]
    return retried, failed


def _complete(
    works: list[Work],
    processor: Processor,
    *,
    planned: dict[Pair, StateRow],
    final: dict[Pair, Any],
    last_try: bool,
) -> _Outcome:
    """The chunk's one transaction. Locks, in this order in every worker: record states (key
    order), the chunk's own event rows, metric buckets (key order), CRM records (key order)."""
    now = timezone.now()
    outcome = _Outcome()
    with transaction.atomic():
        stored = rollups.record_states_lock(pairs=state_pairs(works))
        stale, insert, replace = _states_check(works, stored, planned, final)
        inserted = rollups.record_states_insert(states=insert, now=now)
        # A first state another worker inserted after our read: this pair's facts are stale.
        stale |= insert.keys() - inserted
        done: list[Work] = []
        failing: list[Work] = []
        for work in works:
            if not work.live:
                failing.append(work)
            elif work.fresh == "state" and work.pair in stale:
                if last_try:
                    work.fail(STALE_STATE, transient=True)
                    failing.append(work)
                else:
                    outcome.again.append(work.claim)
            else:
                done.append(work)
        masses: dict[int, float] = defaultdict(float)
        for work in done:
            if work.signal.type == SignalType.EVENT:
                old = (work.claim.rollup or {}).get("engagement", {}).get("weight", 0.0)
                new = work.draft.score / 100 if work.draft is not None else 0.0
                work.rollup["engagement"] = {"weight": new}
                masses[work.claim.crm_record_id] += engagement_mass_of(
                    weight=new - old, timestamp=work.claim.timestamp
                )
        if done:
            completed = _events_complete(done, processor, now)
            if len(completed) != len(done):
                raise _ClaimsLost({w.claim.event_id for w in done} - completed)
        outcome.retried, outcome.failed = _events_settle(failing, now)
        outcome.completed = done
        rollups.transitions_insert(
            rows=[(w.claim.event_id, EventStatus.COMPLETED, w.claim.attempt, now, "") for w in done]
        )
        deltas: rollups.MetricDeltas = {}
        for work in done:
            if work.fresh == "metric":
                assert work.bucket is not None and work.value is not None
                key = (work.claim.crm_record_id, work.signal.pk, work.signal.period, work.bucket)
                n, total, low, high = deltas.get(key, (0, 0.0, work.value, work.value))
                deltas[key] = (
                    n + 1,
                    total + work.value,
                    min(low, work.value),
                    max(high, work.value),
                )
        rollups.metric_aggregates_add(deltas=deltas, now=now)
        rollups.record_states_replace(states=replace, now=now)
        rollups.insights_upsert(
            insights=[
                {
                    "event_id": w.claim.event_id,
                    "organization_id": w.claim.organization_id,
                    "crm_record_id": w.claim.crm_record_id,
                    "signal_id": w.signal.pk,
                    "kind": w.kind,
                    "summary": w.draft.summary,
                    "score": w.draft.score,
                    "next_action": w.draft.next_action,
                    "reasons": w.draft.reasons,
                    # Cut to the columns: a custom processor's long name must not fail events.
                    "processor": processor.name[:100],
                    "processor_version": processor.version[:50],
                    "occurred_at": w.claim.timestamp,
                    "created_at": now,
                }
                for w in done
                if w.draft is not None
            ]
        )
        # Last: ingest locks the same record rows for every event it stores.
        rollups.engagement_masses_add(masses=masses)
    return outcome


def _after_commit(outcome: _Outcome) -> None:
    """Metrics, logs and retry messages for what the transaction committed."""
    from events_app.pipeline.queue import event_enqueue_later

    by_signal: dict[int, list[Work]] = defaultdict(list)
    for work in outcome.completed:
        by_signal[work.signal.pk].append(work)
    for signal_works in by_signal.values():
        metrics.events_completed(
            signal=signal_works[0].signal,
            events=[w.claim for w in signal_works],
            at=timezone.now(),
        )
    if logger.isEnabledFor(logging.INFO):
        for work in outcome.completed:
            logger.info(
                "process_event: event %s completed (attempt %d)",
                work.claim.event_id,
                work.claim.attempt,
            )
    for work, delay in outcome.retried:
        metrics.event_retry_scheduled(event_id=work.claim.event_id)
        event_enqueue_later(event_id=work.claim.event_id, countdown=delay)
    for work in outcome.failed:
        metrics.event_failed(event=work.claim, signal=work.signal)


# The signals of the task's chunks, read once per task (a message, or a drain of at most
# BIGMIND_DRAIN_SECONDS): a signal changed in the admin applies from the next task. (Read for
# every chunk, the ORM query was 7% of a draining worker's time.)
_task_signals: ContextVar[dict[int, Signal] | None] = ContextVar("task_signals", default=None)


def _works(claims: list[Claim]) -> list[Work]:
    wanted = {c.signal_id for c in claims}
    signals = _task_signals.get()
    if signals is None:
        signals = Signal.objects.in_bulk(wanted)
    elif missing := wanted - signals.keys():
        signals.update(Signal.objects.in_bulk(missing))
    # A signal is only deleted with its organization, whose events go with it: nothing to do.
    return works_build([c for c in claims if c.signal_id in signals], signals)


def _chunk_round(claims: list[Claim], processor: Processor, *, last_try: bool) -> list[Claim]:
    """Plan and complete these claims once; returns those to plan again (stale state)."""
    works = _works(claims)
    planned, final = works_plan(works, Drafts(processor))
    outcome = _complete(works, processor, planned=planned, final=final, last_try=last_try)
    _after_commit(outcome)
    if outcome.again:
        logger.info(
            "process_event: %d event(s): their record's state moved meanwhile, again",
            len(outcome.again),
        )
    return outcome.again


def _conflict(error: OperationalError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) in _CONFLICT_SQLSTATES


def _chunk_run(claims: list[Claim], processor: Processor) -> None:
    """Process claimed events to the end: each is completed, retried, failed or found lost."""
    stale_tries = conflicts = 0
    while claims:
        try:
            again = _chunk_round(claims, processor, last_try=stale_tries + 1 >= _STALE_FACTS_TRIES)
        except _ClaimsLost as lost:
            for event_id in lost.lost:
                logger.warning("process_event: event %s: claim lost, result discarded", event_id)
            claims = [c for c in claims if c.event_id not in lost.lost]
            continue
        except SoftTimeLimitExceeded:
            _settle_all(claims, "Processing took longer than the time limit", transient=True)
            return
        except OperationalError as error:
            if _conflict(error) and conflicts < _CONFLICT_TRIES:
                conflicts += 1
                logger.info("process_event: chunk of %d: %s; again", len(claims), error)
                continue
            _database_error(claims, error)
            return
        except InterfaceError as error:
            _database_error(claims, error)
            return
        except Exception as error:
            if len(claims) > 1:
                # Which event is at fault is unknown: each alone, so that only it fails.
                logger.warning(
                    "process_event: chunk of %d failed (%s: %s); each event alone",
                    len(claims),
                    type(error).__name__,
                    error,
                )
                for claim in claims:
                    _chunk_run([claim], processor)
                return
            logger.exception("process_event: event %s: unexpected error", claims[0].event_id)
            _settle_all(claims, f"Internal error: {type(error).__name__}: {error}", transient=False)
            return
        if again:
            stale_tries += 1
        claims = again


def _database_error(claims: list[Claim], error: Exception) -> None:
    # A lost connection or a database restart: the settle write may fail too, and then the
    # sweep returns the events to `pending` once their claim is stale. (Other database errors,
    # such as a DataError, would fail the same way on every try: the chunk's events are then
    # tried alone, above, and the one at fault fails for good.)
    logger.warning("process_event: chunk of %d: database error: %s", len(claims), error)
    _settle_all(claims, f"Database error: {error}", transient=True)


def _settle_all(claims: list[Claim], error: str, *, transient: bool) -> None:
    """Every event of the chunk failed with this error; in a transaction of its own."""
    try:
        works = _works(claims)
        for work in works:
            work.fail(error, transient=transient)
        with transaction.atomic():
            retried, failed = _events_settle(works, timezone.now())
    except (OperationalError, InterfaceError) as settle_error:
        logger.warning(
            "process_event: could not record the failure of %d event(s) (%s); the sweep will",
            len(claims),
            settle_error,
        )
        return
    _after_commit(_Outcome(retried=retried, failed=failed))


# --- entry points ---------------------------------------------------------------------------


def chunk_size(processor: Processor) -> int:
    """Events per claim: BIGMIND_DRAIN_CHUNK_SIZE (a message's 100 ids when draining is off),
    at most the processor's `max_chunk_size`. A processor that does not declare one gets one
    event per claim: a slow one (an AI endpoint) must not hold many claims, and lose them all
    to a worker that dies, while it works through them."""
    from events_app.pipeline.queue import BATCH_MESSAGE_SIZE

    size = settings.BIGMIND_DRAIN_CHUNK_SIZE
    if size <= 0:
        size = BATCH_MESSAGE_SIZE
    return max(1, min(size, getattr(processor, "max_chunk_size", 1)))


def _spent(started: float, budget: float | None) -> bool:
    return budget is not None and time.monotonic() - started > budget


def _retries_pending(ids: list[UUID]) -> list[UUID]:
    """Those of `ids` pending on a later attempt: a chunk claim leaves them to be claimed alone."""
    # Filtered here, not in SQL: by primary key alone (see _STATUS_PROCESSING).
    rows = Event.objects.filter(pk__in=ids).order_by().values_list("pk", "status", "attempts")
    pending = [(pk, attempts) for pk, status, attempts in rows if status == EventStatus.PENDING]
    order = {event_id: index for index, event_id in enumerate(ids)}
    return sorted((pk for pk, attempts in pending if attempts > 0), key=order.__getitem__)


def _ids_run(
    ids: list[UUID],
    *,
    processor: Processor,
    size: int,
    started: float,
    time_budget: float | None,
) -> bool:
    """Claim and process these events a chunk at a time; False when the time budget ran out
    (the events not yet claimed are queued again as a new message)."""
    from events_app.pipeline.queue import events_enqueue

    claimed: set[UUID] = set()
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    for index, chunk in enumerate(chunks):
        if _spent(started, time_budget):
            rest = [event_id for later in chunks[index:] for event_id in later]
            published = events_enqueue(event_ids=rest)
            logger.info("process_events: time budget spent, %d event(s) requeued", published)
            return False
        claims = events_claim(event_ids=chunk)
        claimed.update(c.event_id for c in claims)
        _chunk_run(claims, processor)
    if len(ids) > 1 and len(claimed) < len(ids):
        retries = _retries_pending([i for i in ids if i not in claimed])
        for index, event_id in enumerate(retries):
            if _spent(started, time_budget):
                events_enqueue(event_ids=retries[index:])
                return False
            _chunk_run(events_claim(event_ids=[event_id]), processor)
    return True


def events_process(
    *, event_ids: Iterable[str | UUID], time_budget: float | None = None, drain: bool = False
) -> None:
    """Claim and process these events a chunk at a time; the rest of the work is queued again.

    A batch message carries up to 100 ids: with the local processor one chunk. If
    `time_budget` seconds run out first, the events not yet claimed are queued as a new
    message, so a slow processor cannot push a message past the task's time limit.

    With `drain` (a single-event message), the worker then takes on other due pending events,
    a chunk at a time, for up to BIGMIND_DRAIN_SECONDS: under sustained single-event ingest
    one claim then serves many events, as for a batch, and the messages of events drained this
    way find nothing to claim.
    """
    token = _task_signals.set({})
    try:
        _events_process(event_ids=event_ids, time_budget=time_budget, drain=drain)
    finally:
        _task_signals.reset(token)


def _events_process(
    *, event_ids: Iterable[str | UUID], time_budget: float | None, drain: bool
) -> None:
    from events_app.pipeline.queue import wakeup_again, wakeup_started

    ids: list[UUID] = []
    for raw in event_ids:
        if raw == "":  # a wake-up message (queue.wakeup_again): the drain is the work
            continue
        try:
            ids.append(raw if isinstance(raw, UUID) else UUID(str(raw)))
        except ValueError:
            logger.warning("process_event: ignoring malformed event id %r", raw)
    ids = list(dict.fromkeys(ids))
    # Built before claiming: a processor that cannot be built (a wrong dotted path) must fail
    # the task with that error, not leave claimed events waiting for the sweep.
    processor = processor_get()
    size = chunk_size(processor)
    drain = drain and settings.BIGMIND_DRAIN_CHUNK_SIZE > 0
    if drain:
        # Before any claim: an event committed after this point publishes a wake-up of its
        # own; one committed before it is seen by the claims below (queue.event_enqueue).
        wakeup_started()
    started = time.monotonic()
    if ids and not _ids_run(
        ids, processor=processor, size=size, started=started, time_budget=time_budget
    ):
        if drain:
            wakeup_again()
        return
    if not drain:
        return
    budget = settings.BIGMIND_DRAIN_SECONDS
    if time_budget is not None:
        budget = min(budget, time_budget)
    while time.monotonic() - started < budget:
        claims = events_claim_due(limit=size)
        if not claims:
            return
        _chunk_run(claims, processor)
    # The budget ran out with due events possibly left, some of whose publishes were skipped
    # for this wake-up: another one takes over.
    wakeup_again()


def batch_time_budget() -> float | None:
    soft = settings.CELERY_TASK_SOFT_TIME_LIMIT
    return soft * _BATCH_TIME_SHARE if soft else None


__all__ = [
    "Claim",
    "PermanentProcessingError",
    "batch_time_budget",
    "chunk_size",
    "events_claim",
    "events_claim_due",
    "events_process",
    "retry_delay",
]

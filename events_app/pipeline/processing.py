"""Processing events: claim, work out facts, ask the processor, complete in one transaction.

The life of one claim:
1. `events_claim`: pending -> processing by one conditional UPDATE; the rows it returns are ours.
   The claim time is the fencing token: every later write of this attempt requires
   `status = 'processing' AND claimed_at = <our claim time>`, so a worker that lost its claim
   (the sweep gave the event to another after a time-out) can never write anything.
2. Outside any transaction: the facts (metric value and its earlier range, the state it would
   replace) and, if an insight is due, the processor's answer. A slow AI call holds no lock.
3. One transaction: the fenced UPDATE to `completed` with the result, the rollups (metric
   bucket, state, engagement) and the insight. Rollups are applied only the first time an
   event completes: `Event.rollup` records what was added, in that same transaction, so a
   reprocessed or redelivered event never counts twice.

A transient failure puts the event back to `pending` with a backoff; a permanent one (or the
last try) leaves it `failed` with its error. Anything unexpected is a permanent failure with
the exception named: retrying a bug only hides it (CONVENTIONS.md, "retry only errors known to
be transient"); reprocess the event once the cause is fixed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, models, transaction
from django.utils import timezone

from bigmind import metrics
from events_app.models import (
    Event,
    EventStatus,
    EventTransition,
    Insight,
    InsightKind,
    db_value,
)
from events_app.pipeline import facts as F
from events_app.pipeline.engagement import engagement_add
from events_app.pipeline.processors import (
    EventInfo,
    InsightDraft,
    PermanentProcessingError,
    ProcessingError,
    ProcessingInput,
    Processor,
    SignalInfo,
    TransientProcessingError,
    processor_get,
)
from events_app.pipeline.rollups import metric_aggregate_add, record_state_apply
from signals_app.models import Signal, SignalType

logger = logging.getLogger(__name__)

# Share of the task's soft time limit a batch may use before it hands its remaining events to
# a new message rather than risk the limit mid-way.
_BATCH_TIME_SHARE = 0.7


class _ClaimLost(Exception):
    """Our claim is no longer the event's (the sweep gave it to another worker)."""


class _StaleFacts(TransientProcessingError):
    """The state moved between reading the facts and the transaction; work them out again."""


@dataclass(frozen=True)
class Claim:
    event_id: UUID
    claimed_at: datetime
    attempt: int


def events_claim(
    *, event_ids: Iterable[UUID], now: datetime | None = None, count_attempt: bool = True
) -> list[Claim]:
    """pending -> processing for those of `event_ids` still pending; one statement.

    The row count (here, the returned rows) decides: an event another worker claimed, or that
    is already completed, is simply not returned. A batch claims without counting an attempt;
    each event's attempt is counted by `_start` when its own processing begins, so a worker that
    dies mid-batch charges only the event it was working on, not the neighbours it never reached.
    """
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return []
    now = now or timezone.now()
    table = Event._meta.db_table
    placeholders = ", ".join(["%s"] * len(ids))
    increment = 1 if count_attempt else 0
    # Both PostgreSQL and SQLite (3.35+) return the updated rows.
    sql = f"""
        UPDATE "{table}" SET "status" = %s, "attempts" = "attempts" + {increment},
                             "claimed_at" = %s, "due_at" = NULL
        WHERE "id" IN ({placeholders}) AND "status" = %s
        RETURNING "id", "attempts"
    """  # noqa: S608
    params = [EventStatus.PROCESSING, db_value(Event, "claimed_at", now)]
    params += [db_value(Event, "id", event_id) for event_id in ids] + [EventStatus.PENDING]
    # The claim and its history row commit together: a claim must never be left behind by a
    # failed history write.
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        claims = [Claim(event_id=UUID(str(row[0])), claimed_at=now, attempt=row[1]) for row in rows]
        if count_attempt and claims:
            transitions_record(
                event_ids=[c.event_id for c in claims],
                status=EventStatus.PROCESSING,
                attempts={c.event_id: c.attempt for c in claims},
                at=now,
            )
    return claims


def events_claim_due(*, limit: int, now: datetime | None = None) -> list[Claim]:
    """Claim up to `limit` due pending events, oldest first, without counting attempts.

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
    postgres = connection.vendor == "postgresql"
    materialized = "MATERIALIZED " if postgres else ""
    skip_locked = " FOR UPDATE SKIP LOCKED" if postgres else ""
    sql = f"""
        WITH "due" AS {materialized}(
            SELECT "id" FROM "{table}"
            WHERE "status" = %s AND ("due_at" IS NULL OR "due_at" <= %s)
            ORDER BY "received_at" LIMIT %s{skip_locked}
        )
        UPDATE "{table}" SET "status" = %s, "claimed_at" = %s, "due_at" = NULL
        WHERE "id" IN (SELECT "id" FROM "due") AND "status" = %s
        RETURNING "id", "attempts"
    """  # noqa: S608
    claimed_at = db_value(Event, "claimed_at", now)
    params = [EventStatus.PENDING, claimed_at, limit, EventStatus.PROCESSING, claimed_at]
    params.append(EventStatus.PENDING)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [Claim(event_id=UUID(str(row[0])), claimed_at=now, attempt=row[1]) for row in rows]


def _start(claim: Claim) -> Claim | None:
    """Count the attempt of a batch-claimed event as its processing begins."""
    with transaction.atomic():
        if not _fenced(claim).update(attempts=models.F("attempts") + 1):
            return None
        started = replace(claim, attempt=claim.attempt + 1)
        transitions_record(
            event_ids=[claim.event_id], status=EventStatus.PROCESSING, attempt=started.attempt
        )
    return started


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


def _fenced(claim: Claim) -> Any:
    return Event.objects.filter(
        pk=claim.event_id, status=EventStatus.PROCESSING, claimed_at=claim.claimed_at
    )


def retry_delay(attempt: int) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    ceiling = min(
        settings.BIGMIND_RETRY_BACKOFF_MAX_SECONDS,
        settings.BIGMIND_RETRY_BACKOFF_SECONDS * 2 ** max(0, attempt - 1),
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _signal_info(signal: Signal) -> SignalInfo:
    return SignalInfo(
        slug=signal.slug,
        name=signal.name,
        type=signal.type,
        description=signal.description,
        ai_instructions=signal.ai_instructions,
        aggregation=signal.aggregation,
        period=signal.period,
        value_field=signal.value_field or ("value" if signal.type == SignalType.METRIC else ""),
    )


def _event_info(event: Event) -> EventInfo:
    return EventInfo(
        id=str(event.id),
        identity_type=event.identity_type,
        identity_id=event.identity_id,
        data=event.data,
        timestamp=event.timestamp,
    )


@dataclass
class _Plan:
    """What completing the event will write."""

    kind: str
    # What the event has added to its record: the rollups of earlier successes, kept as they
    # were, plus this one's (written on the event in the completing transaction).
    rollup: dict[str, Any]
    facts: dict[str, Any]  # what the processor is told
    insight_due: bool
    # The rollup this completion applies for the first time ("metric" or "state"), if any.
    fresh: str | None = None


def _plan(event: Event, signal: Signal) -> _Plan:
    """The facts; for a rollup this event already applied, the facts recorded then.

    Per kind, not per event: an event reprocessed after its signal changed type applies the
    new type's rollup once and keeps what the old type added (an engagement weight stays
    recorded, so switching back swaps it instead of adding it again).
    """
    applied: dict[str, Any] = event.rollup or {}
    rollup = dict(applied)
    if signal.type == SignalType.METRIC:
        value = F.metric_value(data=event.data, value_field=signal.value_field)
        fresh = None
        if "metric" in applied:
            metric = applied["metric"]
        else:
            fresh = "metric"
            bucket = F.bucket_start(event.timestamp, signal.period)
            history = F.metric_history(
                crm_record_id=event.crm_record_id,
                signal_id=signal.pk,
                period=signal.period,
                before=bucket,
            )
            metric = {
                "period": signal.period,
                "bucket_start": bucket.isoformat(),
                "value": value,
                "unusual": F.metric_unusual(value=value, history=history),
            }
        rollup["metric"] = metric
        unusual = metric["unusual"]
        return _Plan(
            kind=InsightKind.METRIC_UNUSUAL,
            rollup=rollup,
            facts=unusual or {},
            insight_due=unusual is not None,
            fresh=fresh,
        )
    if signal.type == SignalType.STATE:
        fresh = None
        if "state" in applied:
            state = applied["state"]
        else:
            fresh = "state"
            current = F.record_state_current(crm_record_id=event.crm_record_id, signal_id=signal.pk)
            newer = F.state_is_newer(event=event, state=current)
            previous = current.value if current is not None else None
            state = {
                "newer": newer,
                "changed": newer and previous != event.data,
                "previous": previous,
            }
        rollup["state"] = state
        return _Plan(
            kind=InsightKind.STATE_CHANGE,
            rollup=rollup,
            facts={"previous": state["previous"], "current": event.data},
            insight_due=state["changed"],
            fresh=fresh,
        )
    return _Plan(kind=InsightKind.EVENT, rollup=rollup, facts={}, insight_due=True)


def _apply_rollups(event: Event, signal: Signal, plan: _Plan) -> None:
    """Inside the completing transaction: the rollup this event has not applied before."""
    now = timezone.now()
    if plan.fresh == "metric":
        metric = plan.rollup["metric"]
        metric_aggregate_add(
            crm_record_id=event.crm_record_id,
            signal_id=signal.pk,
            period=metric["period"],
            bucket=datetime.fromisoformat(metric["bucket_start"]),
            value=metric["value"],
            now=now,
        )
    elif plan.fresh == "state":
        state = plan.rollup["state"]
        outcome = record_state_apply(
            crm_record_id=event.crm_record_id,
            signal_id=signal.pk,
            event_id=event.id,
            timestamp=event.timestamp,
            value=event.data,
            now=now,
        )
        # States only move forward, so an event that was not newer still is not, and nothing
        # it concluded can be wrong. One that was newer may have been overtaken, or the state
        # it replaces may have moved: then its insight may be wrong, so work it out again.
        if state["newer"] and (not outcome.newer or outcome.previous != state["previous"]):
            raise _StaleFacts("The record's state changed while this event was processed")


def _engagement_delta(
    event: Event, signal: Signal, plan: _Plan, draft: InsightDraft | None
) -> float:
    """An `event` event adds its weight; reprocessed, it swaps its old weight for the new one."""
    if signal.type != SignalType.EVENT:
        return 0.0
    old = (event.rollup or {}).get("engagement", {}).get("weight", 0.0)  # as first recorded
    new = draft.score / 100 if draft is not None else 0.0
    plan.rollup["engagement"] = {"weight": new}
    return new - old


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


def _complete(
    claim: Claim,
    event: Event,
    signal: Signal,
    plan: _Plan,
    processor: Processor,
    draft: InsightDraft | None,
) -> None:
    now = timezone.now()
    engagement_delta = _engagement_delta(event, signal, plan, draft)
    with transaction.atomic():
        result = {
            "processor": {"name": processor.name, "version": processor.version},
            "signal_type": signal.type,
            "insight": _insight_data(plan.kind, draft),
            "rollup": plan.rollup,
        }
        # The fenced update decides whether this attempt may write at all, and holds the event
        # row's lock until commit.
        completed = _fenced(claim).update(
            status=EventStatus.COMPLETED,
            result=result,
            rollup=plan.rollup,
            processed_at=now,
            last_error="",
            claimed_at=None,
            due_at=None,
        )
        if not completed:
            raise _ClaimLost
        transitions_record(
            event_ids=[event.id], status=EventStatus.COMPLETED, attempt=claim.attempt, at=now
        )
        _apply_rollups(event, signal, plan)
        if draft is not None:
            # One INSERT ... ON CONFLICT (event_id) DO UPDATE: reprocessing replaces the insight.
            # (update_or_create took a savepoint, a SELECT FOR UPDATE and a write.)
            insight = Insight(
                event_id=event.id,
                organization_id=event.organization_id,
                crm_record_id=event.crm_record_id,
                signal_id=signal.pk,
                kind=plan.kind,
                summary=draft.summary,
                score=draft.score,
                next_action=draft.next_action,
                reasons=draft.reasons,
                # Cut to the columns: a custom processor's long name must not fail events.
                processor=processor.name[:100],
                processor_version=processor.version[:50],
                occurred_at=event.timestamp,
                created_at=now,
            )
            Insight.objects.bulk_create(
                [insight],
                update_conflicts=True,
                unique_fields=["event_id"],
                update_fields=_INSIGHT_UPDATE_FIELDS,
            )
        # Last: ingest locks the same record row for every event it stores, so hold it briefly.
        engagement_add(
            crm_record_id=event.crm_record_id, weight=engagement_delta, timestamp=event.timestamp
        )
    metrics.event_completed(event=event, signal=signal, at=now)  # after commit: it happened


# Every column but the key and the event it belongs to: reprocessing replaces the whole insight.
_INSIGHT_UPDATE_FIELDS = [
    f.name for f in Insight._meta.concrete_fields if f.name not in ("id", "event_id")
]


def _settle_failure(claim: Claim, event: Event, error: str, *, transient: bool) -> float | None:
    """Back to `pending` with a backoff (returns the delay), or `failed` for good (None)."""
    now = timezone.now()
    error = error[:2000]
    if transient and claim.attempt < settings.BIGMIND_PROCESSING_MAX_ATTEMPTS:
        delay = retry_delay(claim.attempt)
        with transaction.atomic():
            moved = _fenced(claim).update(
                status=EventStatus.PENDING,
                last_error=error,
                claimed_at=None,
                due_at=now + timedelta(seconds=delay),
            )
            if moved:
                transitions_record(
                    event_ids=[claim.event_id],
                    status=EventStatus.PENDING,
                    attempt=claim.attempt,
                    note=f"retry in {delay:.1f} s: {error}",
                    at=now,
                )
        if moved:
            metrics.event_retry_scheduled(event_id=claim.event_id)
        return delay if moved else None
    if transient:
        error = f"{error} (gave up after {claim.attempt} attempts)"
    with transaction.atomic():
        failed = _fenced(claim).update(
            status=EventStatus.FAILED,
            last_error=error,
            processed_at=now,
            claimed_at=None,
            due_at=None,
        )
        if failed:
            transitions_record(
                event_ids=[claim.event_id],
                status=EventStatus.FAILED,
                attempt=claim.attempt,
                note=error,
                at=now,
            )
    if failed:
        metrics.event_failed(event=event, signal=event.signal)
    return None


# Times a state event works its facts out again within one attempt when another worker moved
# the state meanwhile, before that counts as a (transient) failed attempt.
_STALE_FACTS_TRIES = 3


def _attempt(claim: Claim, event: Event, signal: Signal, processor: Processor) -> None:
    for try_number in range(1, _STALE_FACTS_TRIES + 1):
        plan = _plan(event, signal)
        draft = None
        if plan.insight_due:
            job = ProcessingInput(
                kind=plan.kind,
                signal=_signal_info(signal),
                event=_event_info(event),
                context=F.record_context(
                    event=event, signal=signal, full=getattr(processor, "wants_context", True)
                ),
                facts=plan.facts,
            )
            draft = processor.insight(job)
        try:
            _complete(claim, event, signal, plan, processor, draft)
            return
        except _StaleFacts:
            if try_number == _STALE_FACTS_TRIES:
                raise
            logger.info("process_event: event %s: state moved meanwhile, again", event.id)


def _process_one(claim: Claim, event: Event, processor: Processor) -> float | None:
    """Process one claimed event; returns a retry delay when it must be tried again."""
    try:
        _attempt(claim, event, event.signal, processor)
    except _ClaimLost:
        logger.warning("process_event: event %s: claim lost, result discarded", event.id)
        return None
    except ProcessingError as error:
        logger.info(
            "process_event: event %s attempt %d: %s error: %s",
            event.id,
            claim.attempt,
            "transient" if error.transient else "permanent",
            error,
        )
        return _settle_failure(claim, event, str(error), transient=error.transient)
    except SoftTimeLimitExceeded:
        return _settle_failure(
            claim, event, "Processing took longer than the time limit", transient=True
        )
    except (OperationalError, InterfaceError) as error:
        # A lost connection or a database restart: the settle write may fail too, and then the
        # sweep returns the event to `pending` once its claim is stale. (Other database errors,
        # such as a DataError, would fail the same way on every try: permanent, below.)
        logger.warning("process_event: event %s: database error: %s", event.id, error)
        return _settle_failure(claim, event, f"Database error: {error}", transient=True)
    except Exception as error:
        logger.exception("process_event: event %s: unexpected error", event.id)
        return _settle_failure(
            claim, event, f"Internal error: {type(error).__name__}: {error}", transient=False
        )
    logger.info("process_event: event %s completed (attempt %d)", event.id, claim.attempt)
    return None


def events_release(*, claims: list[Claim]) -> list[UUID]:
    """Give back claims whose processing never started (pending again, no attempt counted)."""
    released = []
    for claim in claims:
        if _fenced(claim).update(status=EventStatus.PENDING, claimed_at=None):
            released.append(claim.event_id)
    # Not in the history: these were claimed as part of a batch but never started.
    return released


def events_process(
    *, event_ids: Iterable[str | UUID], time_budget: float | None = None, drain: bool = False
) -> None:
    """Claim and process these events; the rest of the work is queued again.

    One claim statement for the whole list (a batch message carries up to 100 ids). If
    `time_budget` seconds run out first, the unprocessed claims are released and queued as a new
    message, so a slow processor cannot push a batch past the task's time limit.

    With `drain` (a single-event message), the worker then takes on other due pending events,
    BIGMIND_DRAIN_CHUNK_SIZE at a time, for up to BIGMIND_DRAIN_SECONDS: under sustained
    single-event ingest one claim statement then serves many events, as for a batch, and the
    messages of events drained this way find nothing to claim. A small chunk keeps the events
    one worker holds (and other workers cannot take) few.
    """
    from events_app.pipeline.queue import wakeup_again, wakeup_started

    ids: list[UUID] = []
    for raw in event_ids:
        if raw == "":  # a wake-up message (queue.wakeup_again): the drain is the work
            continue
        try:
            ids.append(raw if isinstance(raw, UUID) else UUID(str(raw)))
        except ValueError:
            logger.warning("process_event: ignoring malformed event id %r", raw)
    # Built before claiming: a processor that cannot be built (a wrong dotted path) must fail
    # the task with that error, not leave claimed events waiting for the sweep.
    processor = processor_get()
    chunk = settings.BIGMIND_DRAIN_CHUNK_SIZE
    drain = drain and chunk > 0
    if drain:
        # Before any claim: an event committed after this point publishes a wake-up of its
        # own; one committed before it is seen by the claims below (queue.event_enqueue).
        wakeup_started()
    batch = len(ids) > 1
    started = time.monotonic()
    claims = events_claim(event_ids=ids, count_attempt=not batch)
    if claims and not _claims_run(
        claims, processor=processor, counted=not batch, started=started, time_budget=time_budget
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
        claims = events_claim_due(limit=chunk)
        if not claims:
            return
        if not _claims_run(
            claims, processor=processor, counted=False, started=started, time_budget=budget
        ):
            break
    # The budget ran out with due events possibly left, some of whose publishes were skipped
    # for this wake-up: another one takes over.
    wakeup_again()


def _claims_run(
    claims: list[Claim],
    *,
    processor: Processor,
    counted: bool,
    started: float,
    time_budget: float | None,
) -> bool:
    """Process claimed events in order; False when the time budget ran out (the rest requeued).

    `counted`: the claim already counted each event's attempt (a single-event claim); otherwise
    `_start` counts it as the event's processing begins.
    """
    from events_app.pipeline.queue import event_enqueue_later, events_enqueue

    events = {
        event.id: event
        for event in Event.objects.filter(pk__in=[c.event_id for c in claims]).select_related(
            "signal"
        )
    }
    for index, claim in enumerate(claims):
        if time_budget is not None and time.monotonic() - started > time_budget:
            released = events_release(claims=claims[index:])
            logger.info("process_events: time budget spent, %d event(s) requeued", len(released))
            events_enqueue(event_ids=released)
            return False
        event = events.get(claim.event_id)
        if event is None:  # deleted since the claim (an organization removed): nothing to do
            continue
        if not counted:
            started_claim = _start(claim)
            if started_claim is None:
                continue
            claim = started_claim
        delay = _process_one(claim, event, processor)
        if delay is not None:
            event_enqueue_later(event_id=claim.event_id, countdown=delay)
    return True


def batch_time_budget() -> float | None:
    soft = settings.CELERY_TASK_SOFT_TIME_LIMIT
    return soft * _BATCH_TIME_SHARE if soft else None


__all__ = [
    "Claim",
    "PermanentProcessingError",
    "batch_time_budget",
    "events_claim",
    "events_claim_due",
    "events_process",
    "events_release",
    "retry_delay",
]

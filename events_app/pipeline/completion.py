"""Completing a chunk of claimed events: one transaction, fenced on the claims.

`chunk_complete` locks the states of the chunk's (record, signal) pairs in key order and checks
the state facts against them; runs the fenced UPDATE of every event to `completed` with its
result, RETURNING the ids it really completed; settles the failed events (`events_settle`: a
retry with backoff, or failed); then applies the rollups, each one statement for the chunk
(metric buckets, states, insights, engagement), only for the events the fenced update returned
and only for rollups not already recorded in `Event.rollup`, so a redelivered or reprocessed
event never counts twice. `after_commit` then reports what was committed (metrics, logs) and
queues the retries.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from bigmind.backoff import backoff_delay
from events_app import dialect, metrics
from events_app.models import Event, EventStatus, WebhookEventType
from events_app.pipeline import rollups
from events_app.pipeline.claims import STATUS_IS_PROCESSING, Claim
from events_app.pipeline.engagement import engagement_mass_of
from events_app.pipeline.facts import Pair, StateRow
from events_app.pipeline.plan import Work, state_pairs, state_step
from events_app.pipeline.processors import InsightDraft, Processor
from events_app.pipeline.queue import event_enqueue_later
from events_app.webhooks import outbox
from events_app.webhooks.outbox import Occurrence
from signals_app.models import SignalType

# The pipeline's log lines keep the logger they always had, whichever module writes them.
logger = logging.getLogger("events_app.pipeline.processing")

STALE_STATE = "The record's state changed while this event was processed"
_COMPLETED = EventStatus.COMPLETED.value
_FAILED = EventStatus.FAILED.value


def retry_delay(attempt: int) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped."""
    return backoff_delay(
        attempt,
        base=settings.BIGMIND_RETRY_BACKOFF_SECONDS,
        cap=settings.BIGMIND_RETRY_BACKOFF_MAX_SECONDS,
    )


class ClaimsLost(Exception):
    """The fenced update did not complete every event planned: some claims are no longer ours
    (the sweep gave them to another worker), and the plan may rest on them. Rolled back; the
    chunk is planned again with the claims still held."""

    def __init__(self, lost: set[UUID]) -> None:
        super().__init__(f"{len(lost)} claim(s) lost")
        self.lost = lost


@dataclass
class Outcome:
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


def _partitions_of(table: str, works: list[Work]) -> tuple[str, list[Any]]:
    """The condition naming the partitions of these events (by their `received_at`, which the
    claim returned): without it a statement by id visits every partition of the events table.
    The `rows` join cannot name them: PostgreSQL prunes on parameters, not on joined rows."""
    return dialect.received_within(
        f'"{table}"."received_at"', [work.claim.received_at for work in works]
    )


def _events_complete(works: list[Work], processor: Processor, now: datetime) -> set[UUID]:
    """The fenced UPDATE to `completed`; returns the ids it completed."""
    table = Event._meta.db_table
    values: dict[UUID, tuple[Any, ...]] = {}
    for work in works:
        result = {
            "processor": {"name": processor.name, "version": processor.version},
            "signal_type": work.signal.type,
            "insight": _insight_data(work.kind, work.draft),
            "rollup": work.rollup,
        }
        if work.skipped is not None:
            result["rollup_skipped"] = work.skipped
        claim = work.claim
        values[claim.event_id] = (claim.received_at, claim.claimed_at, result, work.rollup)
    by_id = dialect.rows_by_id(
        table,
        [("rat", "timestamptz"), ("tok", "timestamptz"), ("res", "jsonb"), ("rol", "jsonb")],
        values,
    )
    v = by_id.column
    within, within_params = _partitions_of(table, works)
    sql = f"""
        UPDATE "{table}" SET "status" = '{_COMPLETED}', "result" = {v["res"]},
            "rollup" = {v["rol"]}, "processed_at" = %s, "last_error" = '', "claimed_at" = NULL,
            "due_at" = NULL
        FROM {by_id.source}
        WHERE {by_id.match} AND "{table}"."received_at" = {v["rat"]} AND {within}
          AND {STATUS_IS_PROCESSING} AND "{table}"."claimed_at" = {v["tok"]}
        RETURNING "id"
    """  # noqa: S608
    params = [dialect.datetime_value(now), *by_id.source_params, *by_id.match_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *within_params])
        return {dialect.uuid_read(row[0]) for row in cursor.fetchall()}


def events_settle(works: list[Work], now: datetime) -> tuple[list[tuple[Work, float]], list[Work]]:
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
    by_id = dialect.rows_by_id(
        table,
        [
            ("rat", "timestamptz"),
            ("tok", "timestamptz"),
            ("st", "text"),
            ("err", "text"),
            ("due", "timestamptz"),
        ],
        {
            w.claim.event_id: (w.claim.received_at, w.claim.claimed_at, status, error, due)
            for w, status, error, due, _ in plans
        },
    )
    v = by_id.column
    within, within_params = _partitions_of(table, [plan[0] for plan in plans])
    sql = f"""
        UPDATE "{table}" SET "status" = {v["st"]}, "last_error" = {v["err"]},
            "due_at" = {v["due"]}, "claimed_at" = NULL,
            "processed_at" = CASE WHEN {v["st"]} = '{_FAILED}' THEN %s
                                  ELSE "{table}"."processed_at" END
        FROM {by_id.source}
        WHERE {by_id.match} AND "{table}"."received_at" = {v["rat"]} AND {within}
          AND {STATUS_IS_PROCESSING} AND "{table}"."claimed_at" = {v["tok"]}
        RETURNING "id"
    """  # noqa: S608
    params = [dialect.datetime_value(now), *by_id.source_params, *by_id.match_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, *within_params])
        moved = {dialect.uuid_read(row[0]) for row in cursor.fetchall()}
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
    outbox.deliveries_write(
        [_occurrence(w, WebhookEventType.EVENT_FAILED) for w in failed], now=now
    )
    return retried, failed


def _occurrence(work: Work, type: str, extra: dict[str, Any] | None = None) -> Occurrence:
    return Occurrence(
        type,
        organization_id=work.claim.organization_id,
        event_id=work.claim.event_id,
        signal_id=work.signal.pk,
        extra=extra or {},
        received_at=work.claim.received_at,
    )


def _occurrences(done: list[Work]) -> list[Occurrence]:
    """What the completed events of a chunk tell the organization's webhook endpoints: each
    completion, each new insight, and each first application of a state that changed the
    record's state (a reprocessed event announces neither its insight nor its state again)."""
    found = []
    for work in done:
        found.append(_occurrence(work, WebhookEventType.EVENT_COMPLETED))
        # A reprocessed event (completed before) updates its insight in place: announcing it
        # again under a new webhook id would read as a second insight.
        if work.draft is not None and work.claim.processed_at is None:
            insight = {
                "kind": work.kind,
                "summary": work.draft.summary,
                "score": work.draft.score,
                "next_action": work.draft.next_action,
                "reasons": work.draft.reasons,
            }
            found.append(_occurrence(work, WebhookEventType.INSIGHT_CREATED, {"insight": insight}))
        state = work.rollup.get("state") if work.fresh == "state" else None
        if state is not None and state.get("changed"):
            extra = {"previous": state.get("previous"), "state": work.claim.data}
            found.append(_occurrence(work, WebhookEventType.STATE_CHANGED, extra))
    return found


def chunk_complete(
    works: list[Work],
    processor: Processor,
    *,
    planned: dict[Pair, StateRow],
    final: dict[Pair, Any],
    last_try: bool,
) -> Outcome:
    """The chunk's one transaction. Locks, in this order in every worker: record states (key
    order), the chunk's own event rows, metric buckets (key order), CRM records (key order)."""
    now = timezone.now()
    outcome = Outcome()
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
                raise ClaimsLost({w.claim.event_id for w in done} - completed)
        outcome.retried, outcome.failed = events_settle(failing, now)
        outcome.completed = done
        rollups.transitions_insert(
            rows=[
                (w.claim.event_id, EventStatus.COMPLETED, w.claim.attempt, now, w.skipped or "")
                for w in done
            ]
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
        # The outbox (docs/webhooks.md): in this transaction, so a completion and the deliveries
        # it owes commit or roll back together.
        outbox.deliveries_write(_occurrences(done), now=now)
        # Last: ingest locks the same record rows for every event it stores.
        rollups.engagement_masses_add(masses=masses)
    return outcome


def after_commit(outcome: Outcome) -> None:
    """Metrics, logs and retry messages for what the transaction committed."""
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
        event_enqueue_later(
            event_id=work.claim.event_id, countdown=delay, received_at=work.claim.received_at
        )
    for work in outcome.failed:
        metrics.event_failed(event=work.claim, signal=work.signal)

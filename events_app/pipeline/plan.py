"""Planning a chunk: what each event establishes, as processing them one by one would find it.

The facts come from a few queries for the whole chunk (events_app/pipeline/facts.py), then are
folded over the chunk's events in order (by arrival), so that events of the same record see each
other as they would if each had been completed before the next began:
- a state event is compared with the state as the chunk's earlier events of its record and
  signal left it (newest by (timestamp, event id) wins; each event's `previous` and `changed`
  are what sequential processing gives);
- a metric value is compared with the earlier buckets as the database has them plus what the
  chunk's earlier events added to them.

Then the processor is asked for the insights that are due, one event at a time (a local call
for the default processor). An event whose processor fails leaves the chunk: the events folded
after it are folded again without it, and asked again only if their facts changed.

Everything here runs outside any transaction; the completing transaction checks the state facts
again under row locks (events_app/pipeline/completion.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.db import InterfaceError, OperationalError

from bigmind.api_time import iso_utc
from events_app.models import InsightKind
from events_app.pipeline import facts as F
from events_app.pipeline.claims import Claim
from events_app.pipeline.facts import Pair, StateRow
from events_app.pipeline.processors import (
    EventInfo,
    InsightDraft,
    PermanentProcessingError,
    ProcessingError,
    ProcessingInput,
    Processor,
    RecordContext,
    SignalInfo,
)
from signals_app.models import Signal, SignalType

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Work:
    """One claimed event on its way through a chunk."""

    claim: Claim
    signal: Signal
    kind: str = InsightKind.EVENT
    # The rollup this completion applies for the first time ("metric" or "state"), if any.
    fresh: str | None = None
    value: float | None = None  # a metric's value
    bucket: datetime | None = None  # a fresh metric's bucket
    # What the event has added to its record: the rollups of earlier successes, kept as they
    # were, plus this one's (written on the event in the completing transaction).
    rollup: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # what the processor is told
    insight_due: bool = False
    draft: InsightDraft | None = None
    asked: tuple[str, dict[str, Any]] | None = None  # the kind and facts `draft` answers
    error: str | None = None
    transient: bool = False
    # Why no rollup was applied to a completed event: the metric value of flagged data (see
    # works_build). Recorded in its result and history.
    skipped: str | None = None

    @property
    def pair(self) -> Pair:
        return (self.claim.crm_record_id, self.signal.pk)

    @property
    def live(self) -> bool:
        return self.error is None

    def fail(self, error: str, *, transient: bool) -> None:
        self.error, self.transient = error, transient


def works_build(claims: Iterable[Claim], signals: dict[int, Signal]) -> list[Work]:
    """What can be known of each event alone: its kind, its metric value and bucket."""
    works = []
    for claim in claims:
        signal = signals[claim.signal_id]
        work = Work(claim=claim, signal=signal)
        works.append(work)
        applied = claim.rollup or {}
        try:
            if signal.type == SignalType.METRIC:
                work.kind = InsightKind.METRIC_UNUSUAL
                try:
                    work.value = F.metric_value(data=claim.data, value_field=signal.value_field)
                except PermanentProcessingError as error:
                    if claim.schema_valid:
                        raise
                    # Flagged data (accepted although it failed its schema) without a usable
                    # value: no retry can give it one, and failing it would treat the accepted
                    # event as an error. It completes without a rollup, saying why.
                    work.skipped = str(error)
                    continue
                if "metric" not in applied:
                    work.fresh = "metric"
                    work.bucket = F.bucket_start(claim.timestamp, signal.period)
            elif signal.type == SignalType.STATE:
                work.kind = InsightKind.STATE_CHANGE
                if "state" not in applied:
                    work.fresh = "state"
        except PermanentProcessingError as error:
            work.fail(str(error), transient=False)
    return works


def history_keys(works: Iterable[Work]) -> list[F.HistoryKey]:
    keys = {
        (w.claim.crm_record_id, w.signal.pk, w.signal.period, w.bucket)
        for w in works
        if w.live and w.fresh == "metric" and w.bucket is not None
    }
    return list(keys)


def state_pairs(works: Iterable[Work]) -> list[Pair]:
    return sorted({w.pair for w in works if w.live and w.fresh == "state"})


def state_step(work: Work, current: StateRow | None) -> tuple[dict[str, Any], StateRow | None]:
    """A state event against the current state: its facts, and the state after it."""
    claim = work.claim
    newer = current is None or (claim.timestamp, claim.event_id) > (
        current.timestamp,
        current.event_id,
    )
    previous = current.value if current is not None else None
    facts = {"newer": newer, "changed": newer and previous != claim.data, "previous": previous}
    if newer:
        current = StateRow(value=claim.data, timestamp=claim.timestamp, event_id=claim.event_id)
    return facts, current


def works_fold(
    works: list[Work],
    histories: dict[F.HistoryKey, list[F.Bucket]],
    states: dict[Pair, StateRow],
) -> dict[Pair, StateRow | None]:
    """Each live event's facts and rollup, in order; returns each fresh pair's final state."""
    added: dict[tuple[int, int, str], dict[datetime, tuple[float, float]]] = {}
    current: dict[Pair, StateRow | None] = {}
    for work in works:
        if not work.live:
            continue
        applied: dict[str, Any] = work.claim.rollup or {}
        rollup = dict(applied)
        if work.skipped is not None:
            work.facts, work.insight_due = {}, False
        elif work.kind == InsightKind.METRIC_UNUSUAL:
            if work.fresh == "metric":
                assert work.bucket is not None and work.value is not None
                signal, record = work.signal, work.claim.crm_record_id
                group = (record, signal.pk, signal.period)
                earlier = {
                    start: (low, high)
                    for start, low, high in histories.get((*group, work.bucket), [])
                }
                for start, (low, high) in added.get(group, {}).items():
                    if start < work.bucket:
                        stored = earlier.get(start)
                        if stored is not None:
                            low, high = min(low, stored[0]), max(high, stored[1])
                        earlier[start] = (low, high)
                history = F.metric_history_of([(s, lo, hi) for s, (lo, hi) in earlier.items()])
                metric: dict[str, Any] = {
                    "period": signal.period,
                    "bucket_start": iso_utc(work.bucket),  # the API's Z form: it is in `result`
                    "value": work.value,
                    "unusual": F.metric_unusual(value=work.value, history=history),
                }
                mine = added.setdefault(group, {})
                low, high = mine.get(work.bucket, (work.value, work.value))
                mine[work.bucket] = (min(low, work.value), max(high, work.value))
            else:
                metric = applied["metric"]
            rollup["metric"] = metric
            unusual = metric["unusual"]
            work.facts, work.insight_due = unusual or {}, unusual is not None
        elif work.kind == InsightKind.STATE_CHANGE:
            if work.fresh == "state":
                pair = work.pair
                state, current[pair] = state_step(work, current.get(pair, states.get(pair)))
            else:
                state = applied["state"]
            rollup["state"] = state
            work.facts = {"previous": state["previous"], "current": work.claim.data}
            work.insight_due = state["changed"]
        else:
            work.facts, work.insight_due = {}, True
        work.rollup = rollup
    return current


def signal_info(signal: Signal) -> SignalInfo:
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


def _count_key(work: Work) -> F.CountKey:
    timestamp = work.claim.timestamp
    return (work.claim.crm_record_id, F.seven_days_before(timestamp), timestamp)


class Drafts:
    """Asks the processor for the insights that are due; remembers the 7-day counts it read."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.full_context = getattr(processor, "wants_context", True)
        self.counts: dict[F.CountKey, dict[int, int]] = {}
        self.signals: dict[int, SignalInfo] = {}

    def make(self, works: list[Work]) -> list[Work]:
        """A draft for every live event whose insight is due and not yet answered for its
        current facts; returns the events whose processor failed."""
        due = []
        for work in works:
            if not work.live:
                continue
            if not work.insight_due:
                work.draft = work.asked = None
            elif work.asked != (work.kind, work.facts):
                due.append(work)
        missing = list({_count_key(w) for w in due} - self.counts.keys())
        self.counts.update(F.event_counts(keys=missing))
        failed = []
        for work in due:
            try:
                work.draft = self.processor.insight(self._job(work))
                work.asked = (work.kind, work.facts)
            except SoftTimeLimitExceeded:
                raise
            except ProcessingError as error:
                work.fail(str(error), transient=error.transient)
            except (OperationalError, InterfaceError) as error:
                work.fail(f"Database error: {error}", transient=True)
            except Exception as error:
                logger.exception("process_event: event %s: unexpected error", work.claim.event_id)
                work.fail(f"Internal error: {type(error).__name__}: {error}", transient=False)
            if not work.live:
                failed.append(work)
                logger.info(
                    "process_event: event %s attempt %d: %s error: %s",
                    work.claim.event_id,
                    work.claim.attempt,
                    "transient" if work.transient else "permanent",
                    work.error,
                )
        return failed

    def _job(self, work: Work) -> ProcessingInput:
        claim, signal = work.claim, work.signal
        counts = self.counts[_count_key(work)]
        states: dict[str, Any] = {}
        insights: list[dict[str, Any]] = []
        if self.full_context:
            states, insights = F.record_states_and_insights(
                crm_record_id=claim.crm_record_id, event_id=claim.event_id
            )
        info = self.signals.get(signal.pk)
        if info is None:
            info = self.signals[signal.pk] = signal_info(signal)
        return ProcessingInput(
            kind=work.kind,
            signal=info,
            event=EventInfo(
                id=str(claim.event_id),
                identity_type=claim.identity_type,
                identity_id=claim.identity_id,
                data=claim.data,
                timestamp=claim.timestamp,
                schema_valid=claim.schema_valid,
                schema_version=claim.schema_version,
                violations=claim.violations,
            ),
            context=RecordContext(
                signal_events_7d=counts.get(signal.pk, 0),
                events_7d=sum(counts.values()),
                states=states,
                recent_insights=insights,
            ),
            facts=work.facts,
        )


def works_plan(
    works: list[Work], drafts: Drafts
) -> tuple[dict[Pair, StateRow], dict[Pair, StateRow | None]]:
    """Facts, rollups and drafts of every live event; returns the stored states the folds
    started from and the states the chunk leaves (the completing transaction checks the first
    and writes the second)."""
    histories = F.metric_histories(keys=history_keys(works))
    states = F.record_states_current(pairs=state_pairs(works))
    while True:
        final = works_fold(works, histories, states)
        failed = drafts.make(works)
        # An event that fails adds nothing: those folded after it must not count on it.
        if not any(w.fresh for w in failed):
            return states, final

"""Processing events a chunk at a time: claim, plan, ask the processor, complete in one transaction.

The life of a chunk (up to BIGMIND_DRAIN_CHUNK_SIZE events, fewer for a processor that is not
cheap: see `chunk_size`):
1. **Claim** (events_app/pipeline/claims.py), one statement: pending -> processing, the
   attempt counted, returning every column processing needs, with the `processing` history
   rows. The claim time is the fencing token: every later write requires `status =
   'processing' AND claimed_at = <our claim time>`, so a worker that lost its claim (the sweep
   gave the event to another after a time-out) can never write anything.
2. **Plan**, outside any transaction (events_app/pipeline/plan.py): the facts of the whole chunk
   in a few queries (earlier metric buckets, current states, 7-day counts), folded over the
   events in arrival order as processing them one by one would; then the processor's insights,
   one call per event whose insight is due. A slow AI call holds no lock.
3. **Complete** (events_app/pipeline/completion.py), one transaction: the state facts checked
   under row locks; the fenced UPDATE of every event to `completed`, RETURNING the ids it
   really completed; the failed events settled (retry with backoff, or failed); then the
   rollups, applied only for the events the fenced update returned and only for rollups not
   already recorded in `Event.rollup`, so a redelivered or reprocessed event never counts twice.

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
import time
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from datetime import datetime
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from events_app import dialect
from events_app.models import Event, EventStatus
from events_app.pipeline.claims import Claim, events_claim, events_claim_due
from events_app.pipeline.completion import (
    ClaimsLost,
    Outcome,
    after_commit,
    chunk_complete,
    events_settle,
)
from events_app.pipeline.plan import Drafts, Work, works_build, works_plan
from events_app.pipeline.processors import Processor, processor_get
from events_app.pipeline.queue import (
    BATCH_MESSAGE_SIZE,
    events_enqueue,
    wakeup_again,
    wakeup_started,
)
from signals_app.models import Signal

logger = logging.getLogger(__name__)

# Share of the task's soft time limit a message may use before it hands its remaining events to
# a new message rather than risk the limit mid-way.
_BATCH_TIME_SHARE = 0.7
# Times the events of a record whose state another worker moved meanwhile are planned again
# within one attempt, before that counts as a (transient) failed attempt.
_STALE_FACTS_TRIES = 3
# Times a chunk's transaction is tried again after PostgreSQL aborted it for a deadlock or a
# serialization failure (its writes are in key order, so neither is expected).
_CONFLICT_TRIES = 3
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})


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
    outcome = chunk_complete(works, processor, planned=planned, final=final, last_try=last_try)
    after_commit(outcome)
    if outcome.again:
        logger.info(
            "process_event: %d event(s): their record's state moved meanwhile, again",
            len(outcome.again),
        )
    return outcome.again


def _conflict(error: OperationalError) -> bool:
    return getattr(error.__cause__, "sqlstate", None) in _CONFLICT_SQLSTATES


def chunk_run(claims: list[Claim], processor: Processor) -> None:
    """Process claimed events to the end: each is completed, retried, failed or found lost.

    Public for callers that already hold their claims, as tests do when they play a worker
    whose claims went stale."""
    stale_tries = conflicts = 0
    while claims:
        try:
            again = _chunk_round(claims, processor, last_try=stale_tries + 1 >= _STALE_FACTS_TRIES)
        except ClaimsLost as lost:
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
                    chunk_run([claim], processor)
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
            retried, failed = events_settle(works, timezone.now())
    except (OperationalError, InterfaceError) as settle_error:
        logger.warning(
            "process_event: could not record the failure of %d event(s) (%s); the sweep will",
            len(claims),
            settle_error,
        )
        return
    after_commit(Outcome(retried=retried, failed=failed))


# --- entry points ---------------------------------------------------------------------------


def chunk_size(processor: Processor) -> int:
    """Events per claim: BIGMIND_DRAIN_CHUNK_SIZE (a message's 100 ids when draining is off),
    at most the processor's `max_chunk_size`. A processor that does not declare one gets one
    event per claim: a slow one (an AI endpoint) must not hold many claims, and lose them all
    to a worker that dies, while it works through them."""
    size = settings.BIGMIND_DRAIN_CHUNK_SIZE
    if size <= 0:
        size = BATCH_MESSAGE_SIZE
    return max(1, min(size, getattr(processor, "max_chunk_size", 1)))


def _spent(started: float, budget: float | None) -> bool:
    return budget is not None and time.monotonic() - started > budget


def _retries_pending(ids: list[UUID], received: dict[UUID, datetime]) -> list[UUID]:
    """Those of `ids` pending on a later attempt: a chunk claim leaves them to be claimed alone."""
    # Filtered here, not in SQL: by primary key alone (see claims.STATUS_IS_PROCESSING), and
    # by the events' received_at when every one is known (it names their partitions).
    events = Event.objects.filter(pk__in=ids)
    if all(i in received for i in ids):
        events = events.filter(dialect.received_range(received[i] for i in ids))
    rows = events.order_by().values_list("pk", "status", "attempts")
    pending = [(pk, attempts) for pk, status, attempts in rows if status == EventStatus.PENDING]
    order = {event_id: index for index, event_id in enumerate(ids)}
    return sorted((pk for pk, attempts in pending if attempts > 0), key=order.__getitem__)


def _ids_run(
    ids: list[UUID],
    *,
    received: dict[UUID, datetime],
    processor: Processor,
    size: int,
    started: float,
    time_budget: float | None,
) -> bool:
    """Claim and process these events a chunk at a time; False when the time budget ran out
    (the events not yet claimed are queued again as a new message)."""
    claimed: set[UUID] = set()
    chunks = [ids[i : i + size] for i in range(0, len(ids), size)]
    for index, chunk in enumerate(chunks):
        if _spent(started, time_budget):
            rest = [event_id for later in chunks[index:] for event_id in later]
            published = events_enqueue(event_ids=rest, received_at=[received.get(i) for i in rest])
            logger.info("process_events: time budget spent, %d event(s) requeued", published)
            return False
        claims = events_claim(event_ids=chunk, received=received)
        claimed.update(c.event_id for c in claims)
        chunk_run(claims, processor)
    if len(ids) > 1 and len(claimed) < len(ids):
        retries = _retries_pending([i for i in ids if i not in claimed], received)
        for index, event_id in enumerate(retries):
            if _spent(started, time_budget):
                rest = retries[index:]
                events_enqueue(event_ids=rest, received_at=[received.get(i) for i in rest])
                return False
            chunk_run(events_claim(event_ids=[event_id], received=received), processor)
    return True


def events_process(
    *,
    event_ids: Iterable[str | UUID],
    received_at: Sequence[str | datetime | None] | None = None,
    time_budget: float | None = None,
    drain: bool = False,
) -> None:
    """Claim and process these events a chunk at a time; the rest of the work is queued again.

    A batch message carries up to 100 ids: with the local processor one chunk. If
    `time_budget` seconds run out first, the events not yet claimed are queued as a new
    message, so a slow processor cannot push a message past the task's time limit.

    With `drain` (a single-event message), the worker then takes on other due pending events,
    a chunk at a time, for up to BIGMIND_DRAIN_SECONDS: under sustained single-event ingest
    one claim then serves many events, as for a batch, and the messages of events drained this
    way find nothing to claim.

    `received_at`: the events' times, in the order of `event_ids`, where the message has them
    (None, or a shorter list, for the rest): their claims then name their partitions.
    """
    token = _task_signals.set({})
    try:
        _events_process(
            event_ids=event_ids, received_at=received_at, time_budget=time_budget, drain=drain
        )
    finally:
        _task_signals.reset(token)


def _received_read(raw: str | datetime | None) -> datetime | None:
    """A message's time of an event; None if absent or not an aware ISO 8601 time (the event
    is then claimed by id alone: slower, never missed)."""
    if raw is None or isinstance(raw, datetime):
        return raw if raw is None or raw.tzinfo is not None else None
    try:
        moment = datetime.fromisoformat(str(raw))
    except ValueError:
        logger.warning("process_event: ignoring malformed received_at %r", raw)
        return None
    return moment if moment.tzinfo is not None else None


def _events_process(
    *,
    event_ids: Iterable[str | UUID],
    received_at: Sequence[str | datetime | None] | None,
    time_budget: float | None,
    drain: bool,
) -> None:
    ids: list[UUID] = []
    received: dict[UUID, datetime] = {}
    times = list(received_at or [])
    for index, raw in enumerate(event_ids):
        if raw == "":  # a wake-up message (queue.wakeup_again): the drain is the work
            continue
        try:
            event_id = raw if isinstance(raw, UUID) else UUID(str(raw))
        except ValueError:
            logger.warning("process_event: ignoring malformed event id %r", raw)
            continue
        ids.append(event_id)
        moment = _received_read(times[index]) if index < len(times) else None
        if moment is not None:
            received[event_id] = moment
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
        ids,
        received=received,
        processor=processor,
        size=size,
        started=started,
        time_budget=time_budget,
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
        chunk_run(claims, processor)
    # The budget ran out with due events possibly left, some of whose publishes were skipped
    # for this wake-up: another one takes over.
    wakeup_again()


def batch_time_budget() -> float | None:
    soft = settings.CELERY_TASK_SOFT_TIME_LIMIT
    return soft * _BATCH_TIME_SHARE if soft else None


__all__ = ["batch_time_budget", "chunk_size", "events_process"]

"""Writes of the data plane. `event_ingest` is the whole of POST /v1/events after the body is
read: parse, resolve the signal, spend rate budget, validate against the schema, store the event
and its CRM record in one transaction, and queue processing after commit."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from bigmind.errors import (
    ApplicationError,
    BadRequest,
    Conflict,
    NotFound,
    ServiceUnavailable,
)
from bigmind.logs import log_context, log_context_begin, log_context_end
from bigmind.strict_json import json_body_parse
from events_app import metrics
from events_app.ids import uuid7
from events_app.ingest.auth import ApiClient
from events_app.ingest.backpressure import ingest_backpressure_check
from events_app.ingest.group_commit import GroupWriter, WriterTimeout
from events_app.ingest.ratelimits import (
    RateLimitStatus,
    rate_limit_consume,
    rate_limit_peek,
    rate_limited,
)
from events_app.ingest.redaction import data_redact, violations_redact
from events_app.ingest.rejections import Refusal, rejections_record
from events_app.ingest.store import NewEvent, StoredEvent, StoreOutcome, events_store
from events_app.ingest.validation import EventRequest, event_request_parse
from events_app.models import EventStatus, IdempotencyKey
from events_app.pipeline.queue import event_enqueue, events_committed
from signals_app.models import Enforcement
from signals_app.schemas import SchemaUnusable, schema_violations
from signals_app.selectors import SignalRef, schema_version_validator, signal_get_active_ref
from signals_app.services import signal_slug_check

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    event: StoredEvent
    signal: SignalRef
    replayed: bool
    rate: RateLimitStatus


def _signal_lookup(organization_id: int, slug: str) -> SignalRef | None:
    try:
        signal_slug_check(slug)
    except BadRequest:
        return None  # cannot be a slug, so cannot name a signal: no lookup needed
    return signal_get_active_ref(organization_id=organization_id, slug=slug)


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    """What checking `data` against its schema found: the version used (None: the signal has
    no schema), and the violations of data accepted under the signal's `flag` enforcement (None:
    the data passed, or was not checked)."""

    version: int | None
    violations: list[dict[str, str]] | None = None

    @property
    def valid(self) -> bool:
        return self.violations is None


SCHEMA_UNCHECKED = SchemaCheck(version=None)


def event_schema_check(signal: SignalRef, request: EventRequest) -> SchemaCheck:
    """Check `data` against the schema version asked for (or the latest).

    Data that fails it is refused (400 `schema_validation_failed`, its `details` the violations)
    under the signal's `reject` enforcement; under `flag` it passes, carrying those same details
    as its violations. CPU only: the validator is cached, and the enforcement is on the ref."""
    number = request.version if request.version is not None else signal.latest_version
    if number is None:
        return SCHEMA_UNCHECKED
    validator = schema_version_validator(signal, number)
    if validator is None:
        raise NotFound(
            f"Schema version {number} not found for signal {signal.slug}",
            code="schema_version_not_found",
        )
    try:
        details = schema_violations(validator, request.data)
    except SchemaUnusable as exc:
        # Data the schema cannot even be applied to fails it like any violation.
        if signal.enforcement != Enforcement.FLAG:
            raise
        return SchemaCheck(version=number, violations=list(exc.details or []))
    if not details:
        return SchemaCheck(version=number)
    if signal.enforcement == Enforcement.FLAG:
        return SchemaCheck(version=number, violations=details)
    raise BadRequest(
        f"data does not match schema version {number} of signal {signal.slug}",
        code="schema_validation_failed",
        details=details,
    )


def event_request_redact(signal: SignalRef, request: EventRequest) -> EventRequest:
    """The request with the signal's redaction rules applied to `data` (the request itself
    when the signal has none). After the schema check, which sees the data as sent, and before
    anything is built from it: the stored row, its idempotency fingerprint, a log line."""
    if not signal.redact:
        return request
    data = data_redact(request.data, rules=signal.redact, organization_id=signal.organization_id)
    return replace(request, data=data)


def event_redact(
    signal: SignalRef, request: EventRequest, schema: SchemaCheck
) -> tuple[EventRequest, SchemaCheck]:
    """The request and its schema check as they may be stored: `data` redacted, and the
    violations of a flagged event made safe (their messages quote the data as sent, so they are
    redacted against the original, before it is replaced)."""
    if not signal.redact:
        return request, schema
    if schema.violations:
        safe = violations_redact(schema.violations, data=request.data, rules=signal.redact)
        schema = replace(schema, violations=safe)
    return event_request_redact(signal, request), schema


def idempotency_conflict() -> Conflict:
    return Conflict(
        "Idempotency key was already used for a different request", code="idempotency_conflict"
    )


def event_row_new(
    *,
    organization_id: int,
    signal: SignalRef,
    request: EventRequest,
    schema: SchemaCheck,
    received_at: datetime,
) -> NewEvent:
    """The row of a checked request, ready to store: a new id, the time it was received, and
    what the schema check found (`schema_valid`, `violations`)."""
    return NewEvent(
        id=uuid7(),
        organization_id=organization_id,
        signal_id=signal.id,
        schema_version=schema.version,
        identity_type=request.identity_type,
        identity_id=request.identity_id,
        data=request.data,
        timestamp=request.timestamp or received_at,
        received_at=received_at,
        reference=request.reference,
        idempotency_key=request.idempotency_key,
        request_hash=request.fingerprint(),
        schema_valid=schema.valid,
        violations=schema.violations,
    )


def _writer() -> GroupWriter[NewEvent, StoreOutcome]:
    global _group_writer
    if _group_writer is None:
        with _group_writer_lock:
            if _group_writer is None:
                _group_writer = GroupWriter(
                    store=events_store,
                    after_commit=_group_committed,
                    max_rows=settings.BIGMIND_GROUP_COMMIT_MAX_ROWS,
                    max_wait=settings.BIGMIND_GROUP_COMMIT_MAX_WAIT_MS / 1000,
                    # The wake-up decision (one cache call) covers every group committed
                    # before it: once per interval, at most that much later than a commit.
                    after_commit_interval=WAKEUP_CHECK_INTERVAL_SECONDS,
                    name="ingest-writer",
                )
                _group_writer.on_group = metrics.ingest_group_committed
    return _group_writer


def _group_committed(
    rows: list[NewEvent], outcomes: Sequence[StoreOutcome], request_id: str | None
) -> None:
    """After groups committed (in the writer thread): queue the processing of what they stored,
    as the first of their requests (a message it publishes names that request)."""
    stored = [row for row, outcome in zip(rows, outcomes, strict=True) if outcome.inserted]
    if not stored:
        return
    token = log_context_begin(request_id=request_id)
    try:
        events_committed(
            event_ids=[row.id for row in stored], received_at=[row.received_at for row in stored]
        )
    finally:
        log_context_end(token)


_group_writer: GroupWriter[NewEvent, StoreOutcome] | None = None
_group_writer_lock = threading.Lock()
# How often, at most, a web process decides about waking the processing workers while it stores
# events (one cache call; a wake-up is never later than this after a commit).
WAKEUP_CHECK_INTERVAL_SECONDS = 0.05


def ingest_writer_stop() -> None:
    """Stop this process's ingest writer (its thread and database connection); the next
    request starts a new one with the settings of that time. For tests."""
    global _group_writer
    with _group_writer_lock:
        writer, _group_writer = _group_writer, None
    if writer is not None:
        writer.stop()


def _event_write(row: NewEvent) -> StoreOutcome:
    """Store one event: with the process's group commit, or on this thread's own connection
    when it is inside a transaction (a test, an admin action) or group commit is off."""
    if settings.BIGMIND_GROUP_COMMIT and not connection.in_atomic_block:
        try:
            context = log_context() or {}
            return _writer().write(
                row,
                timeout=settings.BIGMIND_GROUP_COMMIT_TIMEOUT_SECONDS,
                tag=context.get("request_id"),
            )
        except WriterTimeout as exc:
            # The database took too long: the row may still be committed later, so the client
            # must retry with its Idempotency-Key (then it gets the replay, or a fresh store).
            raise ServiceUnavailable(
                "Service temporarily unavailable: the database did not confirm the write in "
                "time; retry with the same Idempotency-Key",
                headers={"Retry-After": "5"},
            ) from exc
    outcome = events_store([row])[0]
    if outcome.inserted:
        event_id, received_at = row.id, row.received_at
        # After commit (at once in autocommit, at the end of an enclosing transaction).
        # robust: a broker outage must not turn a stored event into an error response;
        # the event stays `pending` and is picked up again (see docs/operations.md).
        transaction.on_commit(
            lambda: event_enqueue(event_id=event_id, received_at=received_at), robust=True
        )
    return outcome


def _event_store(
    *, client: ApiClient, signal: SignalRef, request: EventRequest, schema: SchemaCheck
) -> tuple[StoredEvent, bool]:
    received_at = timezone.now()
    row = event_row_new(
        organization_id=client.organization_id,
        signal=signal,
        request=request,
        schema=schema,
        received_at=received_at,
    )
    outcome = _event_write(row)
    if outcome.error is not None:
        raise outcome.error
    if outcome.inserted:
        stored = StoredEvent(
            id=row.id,
            request_hash=row.request_hash,
            schema_version=row.schema_version,
            status=EventStatus.PENDING,
            reference=row.reference,
        )
        return stored, False
    # The key table's unique (organization, key) index decided: someone stored it first.
    existing = outcome.existing
    assert existing is not None
    if existing.request_hash != row.request_hash:
        raise idempotency_conflict()
    return existing, True


def event_request_resolve(
    client: ApiClient, payload: Any, idempotency_header: str | None
) -> tuple[EventRequest, SignalRef]:
    """The checks that need no budget: the request's fields, then its signal (inside the key's
    allow-list, then existing)."""
    try:
        request = event_request_parse(payload, idempotency_header=idempotency_header)
    except ApplicationError as exc:
        # The contract puts rate-limit headers on every response that named a known signal.
        slug = payload.get("signal") if isinstance(payload, dict) else None
        # Not for a slug outside the key's allow-list: the headers would tell it exists.
        if isinstance(slug, str) and client.signal_allowed(slug):
            known = _signal_lookup(client.organization_id, slug)
            if known is not None:
                exc.headers.update(rate_limit_peek(known).headers())
        raise
    # Before the lookup: outside the allow-list is the same answer whether the signal exists
    # or not, and it spends no rate budget.
    client.signal_allowed_check(request.signal)
    signal = _signal_lookup(client.organization_id, request.signal)
    if signal is None:
        raise NotFound(f"Signal not found: {request.signal}", code="signal_not_found")
    return request, signal


def event_ingest(
    *,
    client: ApiClient,
    raw_body: bytes,
    idempotency_header: str | None = None,
    record_rejection: bool = True,
) -> IngestResult:
    """`record_rejection`: keep an unknown-signal or schema refusal
    (events_app/ingest/rejections.py); off for a replay of one, which must not record another."""
    # First: refused work must cost nothing, and nothing of it is stored.
    ingest_backpressure_check()
    payload = json_body_parse(raw_body)
    try:
        request, signal = event_request_resolve(client, payload, idempotency_header)
    except ApplicationError as exc:
        if record_rejection:
            rejections_record(client=client, refusals=[Refusal(exc, payload, raw_body)])
        raise
    metrics.ingest_signal_seen(signal)  # for the request's log line and the 429 counter
    rate = rate_limit_consume(signal)
    try:
        if rate.exceeded:
            raise rate_limited(signal, rate)
        schema = event_schema_check(signal, request)
        request, schema = event_redact(signal, request, schema)
        event, replayed = _event_store(client=client, signal=signal, request=request, schema=schema)
    except ApplicationError as exc:
        exc.headers.update(rate.headers())
        if record_rejection:
            rejections_record(client=client, refusals=[Refusal(exc, payload, raw_body)])
        raise
    metrics.ingest_event_stored(
        signal=signal, event_id=event.id, replayed=replayed, schema_valid=schema.valid
    )
    return IngestResult(event=event, signal=signal, replayed=replayed, rate=rate)


@dataclass(frozen=True)
class ValidateResult:
    signal: SignalRef
    schema: SchemaCheck
    rate: RateLimitStatus


def _idempotency_conflict_check(client: ApiClient, request: EventRequest) -> None:
    if request.idempotency_key is None:
        return
    stored = (
        IdempotencyKey.objects.filter(
            organization_id=client.organization_id, key=request.idempotency_key
        )
        .values_list("request_hash", flat=True)
        .first()
    )
    if stored is not None and stored != request.fingerprint():
        raise idempotency_conflict()


def event_validate(
    *, client: ApiClient, raw_body: bytes, idempotency_header: str | None = None
) -> ValidateResult:
    """Every check of `event_ingest` but storing and spending rate budget."""
    payload = json_body_parse(raw_body)
    request, signal = event_request_resolve(client, payload, idempotency_header)
    rate = rate_limit_peek(signal)
    try:
        schema = event_schema_check(signal, request)
        _idempotency_conflict_check(client, event_request_redact(signal, request))
    except ApplicationError as exc:
        exc.headers.update(rate.headers())
        raise
    return ValidateResult(signal=signal, schema=schema, rate=rate)

"""POST /v1/events/batch: up to 100 events, each through exactly the checks of a single event.

One bad item never sinks the others. The accepted ones are stored in one transaction with bulk
inserts and queued in one message after commit.

Idempotency keys repeated inside one batch: the first item with a key is the request; a later
item with the same key and the same content is a replay of it (same id, `replayed: true`), with
different content a 409 in its slot, exactly as if the items had been sent one after another.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from bigmind.errors import ApplicationError, BadRequest, PayloadTooLarge
from bigmind.strict_json import json_body_parse
from events_app import metrics
from events_app.ingest.auth import ApiClient
from events_app.ingest.backpressure import ingest_backpressure_check
from events_app.ingest.ratelimits import RateLimitStatus, rate_limit_consume_many, rate_limited
from events_app.ingest.rejections import Refusal, rejections_record
from events_app.ingest.services import (
    SCHEMA_UNCHECKED,
    SchemaCheck,
    event_redact,
    event_request_resolve,
    event_row_new,
    event_schema_check,
    idempotency_conflict,
)
from events_app.ingest.store import (
    StoredEvent,
    event_model,
    events_insert_many,
    stored_events_by_key,
)
from events_app.ingest.validation import EventRequest
from events_app.models import Event
from events_app.pipeline.queue import events_enqueue
from signals_app.selectors import SignalRef


@dataclass
class _Item:
    index: int
    payload: Any
    request: EventRequest | None = None
    signal: SignalRef | None = None
    rate: RateLimitStatus | None = None
    schema: SchemaCheck = SCHEMA_UNCHECKED
    error: ApplicationError | None = None
    event: Event | StoredEvent | None = None
    replayed: bool = False
    replay_of: _Item | None = None

    def reject(self, error: ApplicationError) -> None:
        self.error = error


@dataclass
class BatchResult:
    items: list[_Item]
    rate: RateLimitStatus | None = field(default=None)

    @property
    def all_accepted(self) -> bool:
        return all(item.error is None for item in self.items)


def _batch_items(payload: Any) -> list[Any]:
    limit = settings.BIGMIND_BATCH_MAX_EVENTS
    if not isinstance(payload, dict) or "events" not in payload:
        raise BadRequest(
            'Request body must be a JSON object {"events": [...]}', code="invalid_batch"
        )
    events = payload["events"]
    if not isinstance(events, list):
        raise BadRequest("events must be a list of event objects", code="invalid_batch")
    if not events:
        raise BadRequest("events must not be empty", code="invalid_batch")
    if len(events) > limit:
        raise BadRequest(
            f"events may hold at most {limit} items; got {len(events)}", code="invalid_batch"
        )
    return events


def _item_too_large(payload: Any, limit: int) -> bool:
    return len(json.dumps(payload, separators=(",", ":")).encode()) > limit


def _most_constrained(statuses: list[RateLimitStatus]) -> RateLimitStatus | None:
    if not statuses:
        return None
    return min(statuses, key=lambda s: (s.remaining, s.reset_epoch))


def _settle_idempotency(client: ApiClient, items: list[_Item]) -> list[_Item]:
    """Decide replays and conflicts for keyed items; return the items to insert."""
    keys = {item.request.idempotency_key for item in items if item.request} - {None}
    if not keys:
        return list(items)
    stored = stored_events_by_key(
        organization_id=client.organization_id, keys=[key for key in keys if key is not None]
    )
    first_in_batch: dict[str, _Item] = {}
    to_insert: list[_Item] = []
    conflict = idempotency_conflict()
    for item in items:
        assert item.request is not None
        key = item.request.idempotency_key
        if key is None:
            to_insert.append(item)
            continue
        fingerprint = item.request.fingerprint()
        if key in stored:
            if stored[key].request_hash != fingerprint:
                item.reject(conflict)
            else:
                item.event, item.replayed = stored[key], True
        elif key in first_in_batch:
            first = first_in_batch[key]
            assert first.request is not None
            if first.request.fingerprint() != fingerprint:
                item.reject(conflict)
            else:
                item.replay_of, item.replayed = first, True
        else:
            first_in_batch[key] = item
            to_insert.append(item)
    return to_insert


def _store(client: ApiClient, items: list[_Item]) -> None:
    # A concurrent request may store one of our keys between the check and the insert: the
    # unique index refuses the whole insert, and a second pass sees that event as stored.
    for attempt in range(2):
        to_insert = _settle_idempotency(client, items)
        now = timezone.now()
        new_events: list[Event] = []
        for item in to_insert:
            assert item.signal is not None and item.request is not None
            item.event = event_model(
                event_row_new(
                    organization_id=client.organization_id,
                    signal=item.signal,
                    request=item.request,
                    schema=item.schema,
                    received_at=now,
                )
            )
            new_events.append(item.event)
        try:
            events_insert_many(new_events)
        except IntegrityError:
            if attempt:
                raise
            for item in items:
                item.event, item.replayed, item.replay_of, item.error = None, False, None, None
            continue
        ids = [event.id for event in new_events]
        if ids:
            received_at = [event.received_at for event in new_events]
            transaction.on_commit(
                partial(events_enqueue, event_ids=ids, received_at=received_at), robust=True
            )
        for item in items:
            if item.replay_of is not None:
                item.event = item.replay_of.event
        return


def events_ingest_batch(*, client: ApiClient, raw_body: bytes) -> BatchResult:
    ingest_backpressure_check()  # before anything: an overloaded service refuses a batch whole
    payloads = _batch_items(json_body_parse(raw_body))
    items = [_Item(index=i, payload=payload) for i, payload in enumerate(payloads)]
    item_limit = settings.BIGMIND_EVENT_MAX_BODY_BYTES
    check_size = len(raw_body) > item_limit

    # 1. Fields and signal, per item.
    for item in items:
        try:
            if check_size and _item_too_large(item.payload, item_limit):
                raise PayloadTooLarge(f"Event is too large: the limit is {item_limit} bytes")
            item.request, item.signal = event_request_resolve(client, item.payload, None)
        except ApplicationError as exc:
            item.reject(exc)

    # 2. Rate budget: one unit per item of each signal, spent in request order.
    by_signal: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        if item.error is None and item.signal is not None:
            by_signal[item.signal.public_id].append(item)
    last_statuses: list[RateLimitStatus] = []
    for signal_items in by_signal.values():
        signal = signal_items[0].signal
        assert signal is not None
        statuses = rate_limit_consume_many(signal, len(signal_items))
        for item, status in zip(signal_items, statuses, strict=True):
            item.rate = status
        last_statuses.append(statuses[-1])

    # 3. Budget, schema version, data.
    for item in items:
        if item.error is not None:
            continue
        assert item.signal is not None and item.request is not None and item.rate is not None
        try:
            if item.rate.exceeded:
                raise rate_limited(item.signal, item.rate)
            # Under `flag`, data failing its schema passes with its violations (stored with it).
            schema = event_schema_check(item.signal, item.request)
            item.request, item.schema = event_redact(item.signal, item.request, schema)
        except ApplicationError as exc:
            item.reject(exc)

    # Seam for redaction: each accepted item's data and violations (`item.request`,
    # `item.schema`) may be changed here, after the checks and before the rows are built.

    # 4. Store what passed, all or nothing.
    accepted = [item for item in items if item.error is None]
    if accepted:
        _store(client, accepted)

    # 5. Keep the unknown-signal and schema refusals, after (and outside) the store; never raises.
    refused = [Refusal(item.error, item.payload) for item in items if item.error is not None]
    if refused:
        rejections_record(client=client, refusals=refused)
    metrics.ingest_batch_observe(items)  # counters and the request's log line; no I/O
    return BatchResult(items=items, rate=_most_constrained(last_statuses))

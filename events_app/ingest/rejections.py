"""Rejected events: requests refused for a schema violation or an unknown signal, kept so the
client can see what it sent wrong (GET /v1/rejections) and staff can replay them after a fix.

Recording (called by ingest on its error path), the list selector and the retention purge;
replaying a rejection is `events_app.ingest.replay` (it runs ingest, which records here).

- **Recorded**: `signal_not_found` and `schema_validation_failed` refusals of POST /v1/events
  and of each item of POST /v1/events/batch. Not authentication, rate limits, malformed bodies,
  idempotency conflicts, nor POST /v1/events/validate (nothing was sent for real).
- **Never in the way**: recording runs after ingest decided, outside its transaction, costs
  nothing to an accepted request, and any failure of its own is logged and swallowed, so the
  client always gets the answer ingest gave.
- **Bounded**: at most BIGMIND_REJECTIONS_PER_MINUTE rows per organization and minute, decided
  by an atomic counter in the shared cache (one INCRBY). The rest are only counted, per
  organization and minute, in RejectionOverflow (an F() increment). If the cache is down the
  cap is checked against the database instead (a COUNT on the organization's index): rows are
  still kept, and concurrent requests can overshoot the cap by at most their own number.
- **Redacted**: the signal's redaction rules (events_app/ingest/redaction.py) apply to the stored
  body and the violations, as to an event; for an unknown slug, those of an inactive signal of
  that slug if there is one (nothing else can say what its data holds).
- **Kept** BIGMIND_REJECTION_RETENTION_DAYS; the purge deletes in chunks, each its own short
  transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone

from bigmind.errors import ApplicationError, BadRequest
from events_app.ingest.auth import ApiClient
from events_app.ingest.redaction import Rules, data_redact, violations_redact
from events_app.models import RejectedEvent, RejectionOverflow, RejectionReason
from events_app.selectors import keyset_page
from signals_app.models import Signal
from signals_app.selectors import signal_get_active_ref
from signals_app.services import signal_slug_check

logger = logging.getLogger(__name__)

RECORDED_CODES = frozenset(RejectionReason.values)
# The per-minute counter outlives its minute a little, for requests that straddle the turn.
_COUNTER_SECONDS = 120
_MAX_SLUG = 100
_MAX_IDENTITY_TYPE = 64
_MAX_IDENTITY_ID = 255


# --- Recording --------------------------------------------------------------------------------
class Refusal(NamedTuple):
    """What ingest refused: the error the client got and what it had sent."""

    error: ApplicationError
    payload: Any  # the decoded body (one batch item)
    raw_body: bytes | None = None  # the bytes as sent; None for a batch item (re-encoded)


def rejection_body_cut(raw: bytes, limit: int) -> tuple[str, bool]:
    """`raw` as text, cut to at most `limit` bytes without splitting a UTF-8 character."""
    if len(raw) <= limit:
        return raw.decode("utf-8", errors="replace"), False
    cut = limit
    # raw[cut] is the first byte left out; a continuation byte (10xxxxxx) there means the
    # character it belongs to started before the cut: leave that whole character out.
    while cut > 0 and raw[cut] & 0xC0 == 0x80:
        cut -= 1
    return raw[:cut].decode("utf-8", errors="replace"), True


def _minute_count_cache(organization_id: int, minute: datetime, n: int) -> int | None:
    """The organization's rejections this minute including these `n`; None: cache down."""
    key = f"rejections:{organization_id}:{int(minute.timestamp())}"
    try:
        try:
            return int(cache.incr(key, n))  # one round trip once the minute's key exists
        except ValueError:
            pass  # first of the minute (or the key just expired)
        if cache.add(key, n, _COUNTER_SECONDS):
            return n
        return int(cache.incr(key, n))  # another process added it first
    except Exception:
        logger.warning(
            "rejection counter unreachable; checking the cap in the database", exc_info=True
        )
        return None


def _minute_count_db(organization_id: int, minute: datetime, n: int) -> int:
    stored = RejectedEvent.objects.filter(
        organization_id=organization_id, received_at__gte=minute
    ).count()
    return stored + n


def _overflow_add(organization_id: int, minute: datetime, n: int) -> None:
    """Count `n` rejections over the cap: an upsert whose increment is F(), never read+write."""
    row = RejectionOverflow.objects.filter(organization_id=organization_id, minute=minute)
    if row.update(count=F("count") + n):
        return
    try:
        with transaction.atomic():
            RejectionOverflow.objects.create(
                organization_id=organization_id, minute=minute, count=n
            )
    except IntegrityError:
        row.update(count=F("count") + n)  # a concurrent request created it first


def _slug(refusal: Refusal) -> Any:
    return refusal.payload.get("signal") if isinstance(refusal.payload, dict) else None


def _text(value: Any, max_length: int) -> str:
    return value[:max_length] if isinstance(value, str) else ""


def _rules_by_slug(organization_id: int, refusals: list[Refusal]) -> dict[str, Rules]:
    """The redaction rules of the signals the refusals name, by slug (only those with rules).

    An active signal's come from the cached lookup ingest just made; a slug no active signal
    has costs one query for all of them, for an inactive signal's rules.
    """
    slugs: set[str] = set()
    for refusal in refusals:
        slug = _slug(refusal)
        if isinstance(slug, str):
            try:
                signal_slug_check(slug)
            except BadRequest:
                continue  # cannot be a slug, so names no signal
            slugs.add(slug)
    found: dict[str, Rules] = {}
    inactive: list[str] = []
    for slug in slugs:
        ref = signal_get_active_ref(organization_id=organization_id, slug=slug)
        if ref is None:
            inactive.append(slug)
        elif ref.redact:
            found[slug] = ref.redact
    if inactive:
        rows = Signal.objects.filter(organization_id=organization_id, slug__in=inactive)
        for slug, rules in rows.values_list("slug", "redact"):
            if rules:
                found[slug] = tuple((rule["path"], rule["mode"]) for rule in rules)
    return found


def _row(client: ApiClient, refusal: Refusal, received_at: datetime, rules: Rules) -> RejectedEvent:
    payload = refusal.payload if isinstance(refusal.payload, dict) else {}
    raw = refusal.raw_body
    if raw is None:
        raw = json.dumps(refusal.payload, ensure_ascii=False, separators=(",", ":")).encode()
    sent_bytes = len(raw)
    violations = refusal.error.details or []
    data = payload.get("data")
    if rules and isinstance(data, dict):
        redacted = data_redact(data, rules=rules, organization_id=client.organization_id)
        # The body as received is replaced by the redacted one, re-encoded (its bytes differ).
        raw = json.dumps(
            {**payload, "data": redacted}, ensure_ascii=False, separators=(",", ":")
        ).encode()
        violations = violations_redact(violations, data=data, rules=rules)
    body, truncated = rejection_body_cut(raw, settings.BIGMIND_REJECTION_BODY_MAX_BYTES)
    identity = payload.get("identity")
    identity = identity if isinstance(identity, dict) else {}
    return RejectedEvent(
        organization_id=client.organization_id,
        api_key_id=client.api_key_id or None,
        signal_slug=_text(payload.get("signal"), _MAX_SLUG),
        reason=refusal.error.code,
        message=refusal.error.message,
        violations=violations,
        body=body,
        body_truncated=truncated,
        body_bytes=sent_bytes,
        identity_type=_text(identity.get("type"), _MAX_IDENTITY_TYPE),
        identity_id=_text(identity.get("id"), _MAX_IDENTITY_ID),
        received_at=received_at,
    )


def _record(client: ApiClient, refusals: list[Refusal]) -> int:
    now = timezone.now()
    minute = now.replace(second=0, microsecond=0)
    n = len(refusals)
    count = _minute_count_cache(client.organization_id, minute, n)
    # A savepoint when a caller has a transaction open: a failure here must not break it.
    with transaction.atomic():
        if count is None:
            count = _minute_count_db(client.organization_id, minute, n)
        # `count` includes these n: the first (cap - earlier) of them are kept, the rest counted.
        kept = max(0, min(n, settings.BIGMIND_REJECTIONS_PER_MINUTE - (count - n)))
        rules = _rules_by_slug(client.organization_id, refusals[:kept]) if kept else {}
        rows = [
            _row(client, refusal, now, rules.get(_text(_slug(refusal), _MAX_SLUG), ()))
            for refusal in refusals[:kept]
        ]
        if rows:
            RejectedEvent.objects.bulk_create(rows)
        if kept < n:
            _overflow_add(client.organization_id, minute, n - kept)
    return kept


def rejections_record(*, client: ApiClient, refusals: Sequence[Refusal]) -> int:
    """Keep the refusals that are schema violations or unknown signals; how many were stored.

    Never raises: the client must get ingest's answer whatever happens here.
    """
    recordable = [refusal for refusal in refusals if refusal.error.code in RECORDED_CODES]
    if not recordable:
        return 0
    try:
        return _record(client, recordable)
    except Exception:
        logger.error(
            "could not record %d rejection(s) of organization %s",
            len(recordable),
            client.organization_id,
            exc_info=True,
        )
        return 0


# --- Listing ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectionFilters:
    signal: str | None = None
    reason: str | None = None
    since: datetime | None = None  # inclusive, on received_at
    until: datetime | None = None  # exclusive, on received_at


@dataclass(frozen=True)
class RejectionPage:
    rejections: list[RejectedEvent]
    next_cursor: str | None


# Its own salt: an event-list cursor is not a rejection-list cursor.
_CURSOR_SALT = "events_app.ingest.rejections.rejection_list.cursor"


def rejection_list(
    *,
    organization_id: int,
    filters: RejectionFilters,
    limit: int,
    cursor: str | None = None,
    signals: frozenset[str] | None = None,
) -> RejectionPage:
    """A page of the organization's rejections, newest first by (received_at, id); only those
    naming one of `signals` (slugs, an API key's allow-list) when given."""
    rows = RejectedEvent.objects.filter(organization_id=organization_id)
    if signals is not None:
        rows = rows.filter(signal_slug__in=sorted(signals))
    lookups = {
        "signal_slug": filters.signal,
        "reason": filters.reason,
        "received_at__gte": filters.since,
        "received_at__lt": filters.until,
    }
    rows = rows.filter(**{name: value for name, value in lookups.items() if value is not None})
    page, next_cursor = keyset_page(
        rows, organization_id=organization_id, cursor=cursor, limit=limit, salt=_CURSOR_SALT
    )
    return RejectionPage(rejections=page, next_cursor=next_cursor)


def rejection_overflow_total(*, organization_id: int | None = None) -> int:
    """Rejections counted over the cap and not stored, within retention."""
    rows = RejectionOverflow.objects.all()
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    return int(rows.aggregate(total=Sum("count"))["total"] or 0)


# --- Retention --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RejectionPurgeResult:
    rejections: int
    overflow_rows: int
    chunks: int


def _purge_chunks(rows: Any, order: str, chunk_size: int) -> tuple[int, int]:
    deleted = chunks = 0
    while True:
        # Each chunk is its own statement in autocommit: short transactions, short locks.
        pks = list(rows.order_by(order).values_list("pk", flat=True)[:chunk_size])
        if not pks:
            break
        count, _ = rows.model.objects.filter(pk__in=pks).delete()
        deleted += count
        chunks += 1
        if len(pks) < chunk_size:
            break
    return deleted, chunks


def rejections_purge(*, now: datetime | None = None) -> RejectionPurgeResult:
    """Delete rejections (and overflow counts) older than the retention, chunk by chunk."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.BIGMIND_REJECTION_RETENTION_DAYS)
    chunk_size = settings.BIGMIND_REJECTION_PURGE_CHUNK_SIZE
    rejections, chunks = _purge_chunks(
        RejectedEvent.objects.filter(received_at__lt=cutoff), "received_at", chunk_size
    )
    overflow_rows, overflow_chunks = _purge_chunks(
        RejectionOverflow.objects.filter(minute__lt=cutoff), "pk", chunk_size
    )
    if rejections or overflow_rows:
        logger.info(
            "rejections purge: %d rejection(s) and %d overflow count(s) older than %s deleted",
            rejections,
            overflow_rows,
            cutoff.isoformat(),
        )
    return RejectionPurgeResult(
        rejections=rejections, overflow_rows=overflow_rows, chunks=chunks + overflow_chunks
    )

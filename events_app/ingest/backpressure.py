"""Backpressure: refuse new events while the backlog waiting for the workers is too long.

When more than BIGMIND_BACKPRESSURE_MAX_PENDING events are `pending`, POST /v1/events and
POST /v1/events/batch answer 503 `overloaded` with `Retry-After`, before reading anything into
the database: a batch is refused whole, nothing is half-written. Off (0) by default.

What counts is `pending` only. `processing` is bounded by the workers themselves (concurrency
times at most 100 ids per message), so it cannot grow without limit; `pending` (new events and
retries waiting for their backoff) is what grows when ingest outpaces processing.

The hot path never counts. The count is bounded (`LIMIT max + 1`: "over the limit" is all we
need to know, and it costs at most that many index entries on `event_status_received`), taken
at most once per BIGMIND_BACKPRESSURE_REFRESH_SECONDS by one process (a `cache.add` lock) and
shared through the cache; each process keeps what it read for up to a second, so most requests
cost nothing at all. If the cache is down, each process counts for itself, at the same
interval. If the count fails, the check lets the request through (fail open, logged): a
database that cannot count will refuse the insert on its own, with a 503 of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.db import DatabaseError, connection

from bigmind.errors import ServiceUnavailable
from events_app.models import Event, EventStatus

logger = logging.getLogger(__name__)

# How long a process trusts what it read, on top of the shared value's own age.
_LOCAL_SECONDS = 1.0
# Whoever takes the refresh lock and dies before releasing it blocks refreshes this long.
_LOCK_SECONDS = 10


class Overloaded(ServiceUnavailable):
    code = "overloaded"


@dataclass(frozen=True)
class _Reading:
    pending: int | None  # counted up to the limit + 1; None when unknown
    until: float  # time.monotonic() after which it is read again


# One reading per limit (a test or a settings change must not reuse another limit's count).
# A plain dict, not a cachetools TTLCache: a reading past its time is still used (when another
# process holds the refresh lock, this one keeps what it last read), so nothing may drop it on
# expiry; and there is one entry per configured limit, nothing to bound.
_readings: dict[int, _Reading] = {}
_readings_lock = threading.Lock()


def backlog_pending_count(*, limit: int) -> int:
    """Pending events, counted up to `limit + 1` and no further (one index range scan)."""
    table = Event._meta.db_table
    sql = f'SELECT COUNT(*) FROM (SELECT 1 FROM "{table}" WHERE "status" = %s LIMIT %s) AS b'  # noqa: S608
    with connection.cursor() as cursor:
        cursor.execute(sql, [EventStatus.PENDING, limit + 1])
        row = cursor.fetchone()
    return int(row[0])


def _count(limit: int) -> int | None:
    try:
        return backlog_pending_count(limit=limit)
    except DatabaseError:
        logger.warning("backpressure: could not count the backlog; accepting", exc_info=True)
        return None


def _remember(limit: int, pending: int | None, seconds: float) -> int | None:
    with _readings_lock:
        _readings[limit] = _Reading(pending=pending, until=time.monotonic() + seconds)
    return pending


def _shared_key(limit: int) -> str:
    return f"backpressure:pending:{limit}"


def _pending(limit: int) -> int | None:
    reading = _readings.get(limit)
    if reading is not None and reading.until > time.monotonic():
        return reading.pending
    refresh = max(1, settings.BIGMIND_BACKPRESSURE_REFRESH_SECONDS)
    local = min(_LOCAL_SECONDS, refresh)
    key = _shared_key(limit)
    try:
        shared = cache.get(key)
        if shared is not None:
            return _remember(limit, int(shared), local)
        # Nobody counted within the interval: one process counts, the others keep what they
        # had (or, knowing nothing yet, let requests through) until its count is shared.
        if not cache.add(f"{key}:lock", 1, _LOCK_SECONDS):
            return _remember(limit, reading.pending if reading else None, local)
    except Exception:
        # The cache is down: count here, at most once per interval in this process.
        logger.warning("backpressure: cache unreachable; counting in this process", exc_info=True)
        return _remember(limit, _count(limit), refresh)
    pending = _count(limit)
    try:
        if pending is not None:
            cache.set(key, pending, refresh)
        cache.delete(f"{key}:lock")
    except Exception:
        logger.warning("backpressure: cache unreachable after counting", exc_info=True)
    return _remember(limit, pending, local)


def ingest_backpressure_check() -> None:
    """Raise `Overloaded` (503, Retry-After) when the pending backlog is over the limit."""
    limit = settings.BIGMIND_BACKPRESSURE_MAX_PENDING
    if limit <= 0:
        return
    pending = _pending(limit)
    if pending is not None and pending > limit:
        retry_after = max(1, settings.BIGMIND_BACKPRESSURE_RETRY_AFTER_SECONDS)
        raise Overloaded(
            "Service overloaded: too many events are waiting to be processed; retry later",
            headers={"Retry-After": str(retry_after)},
        )


def backpressure_reset() -> None:
    """Forget this process's readings (tests; a settings change)."""
    with _readings_lock:
        _readings.clear()

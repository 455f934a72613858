"""Per-organization, per-signal budgets per minute, counted by django-ratelimit (its public
`get_usage`) in the shared store (Redis in production, SQLiteCache on one machine), through
the counter backend of bigmind.cache.CounterCache: one atomic round trip per unit spent, or
per slice of units a process leases when the budget is large (docs/architecture.md, "Rate
limits": a budget is never exceeded; leased units left unused may refuse a few requests early).

Fail-open: if the store cannot be reached the request is accepted and a warning logged.
Losing rate limiting for the length of a cache outage is better than refusing or losing
customer events that the database could store; the limit protects capacity, not data.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.core.cache import caches
from django_ratelimit.core import get_usage

from bigmind.errors import RateLimited
from signals_app.selectors import SignalRef

logger = logging.getLogger(__name__)
WINDOW_SECONDS = 60


@dataclass(frozen=True)
class RateLimitStatus:
    limit: int
    remaining: int
    reset_epoch: int
    exceeded: bool
    degraded: bool = False  # the store was unreachable; counts are unknown

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": _reset_text(self.reset_epoch),
        }

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_epoch - time.time()))


def rate_limited(signal: SignalRef, status: RateLimitStatus) -> RateLimited:
    """The 429 of a request (or a batch item) over its signal's budget: the contract's message,
    and `details` saying which budget, how large, and when it refills; the names follow the
    headers (X-RateLimit-Limit, X-RateLimit-Reset, Retry-After)."""
    retry_after = status.retry_after
    return RateLimited(
        "Rate limit exceeded",
        details=[
            {
                "signal": signal.slug,
                "limit": status.limit,
                "window_seconds": WINDOW_SECONDS,
                "reset_at": _reset_text(status.reset_epoch),
                "retry_after": retry_after,
            }
        ],
        headers={"Retry-After": str(retry_after)},
    )


@functools.lru_cache(maxsize=256)
def _reset_text(epoch: int) -> str:
    # Every request of a signal in a window has the same reset time: format it once.
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rate_limit_for(signal: SignalRef) -> int:
    return signal.rate_limit_per_minute or settings.BIGMIND_RATE_LIMITS[signal.type]


_KEY_VALUE = "signal"


def _signal_key(group: str, request: object) -> str:
    return _KEY_VALUE


def _group(signal: SignalRef) -> str:
    return f"ingest:{signal.organization_id}:{signal.public_id}"


def _degraded(limit: int) -> RateLimitStatus:
    now = int(time.time())
    return RateLimitStatus(
        limit=limit,
        remaining=limit,
        reset_epoch=now - now % WINDOW_SECONDS + WINDOW_SECONDS,
        exceeded=False,
        degraded=True,
    )


def _lease_size(limit: int) -> int:
    """Units a process takes from the shared counter at once: at most 1/1000 of the budget and
    BIGMIND_RATE_LIMIT_LEASE_MAX, so leasing only matters for large budgets (1 below 2,000 a
    minute: every request is counted in the store)."""
    return max(1, min(settings.BIGMIND_RATE_LIMIT_LEASE_MAX, limit // 1000))


def _store_lease(units: int) -> contextlib.AbstractContextManager[None]:
    try:
        lease = getattr(caches[settings.RATELIMIT_USE_CACHE], "lease", None)
    except Exception:  # a misconfigured store: get_usage fails open on its own
        lease = None
    return lease(units) if lease is not None else contextlib.nullcontext()


def _usage(signal: SignalRef, *, increment: bool, limit: int | None = None) -> RateLimitStatus:
    if limit is None:
        limit = rate_limit_for(signal)
    try:
        usage = get_usage(
            None,
            group=_group(signal),
            key=_signal_key,
            rate=(limit, WINDOW_SECONDS),
            increment=increment,
        )
    except Exception:
        # The Redis client raises its own ConnectionError/TimeoutError; any failure of the
        # store means the same thing here.
        usage = None
        logger.warning("rate-limit store unreachable; accepting without limit", exc_info=True)
    if usage is None:  # store failed (RATELIMIT_FAIL_OPEN makes django-ratelimit say None)
        return _degraded(limit)
    now = int(time.time())
    return RateLimitStatus(
        limit=limit,
        remaining=max(0, limit - usage["count"]),
        # django-ratelimit's window value is the window's last second: the next budget
        # starts one second later.
        reset_epoch=now + usage["time_left"] + 1,
        exceeded=usage["should_limit"],
    )


def rate_limit_consume(signal: SignalRef) -> RateLimitStatus:
    """Spend one unit of the signal's budget for this minute: one atomic call to the store, or
    none while this process holds leased units (bigmind.cache.CounterCache)."""
    limit = rate_limit_for(signal)
    with _store_lease(_lease_size(limit)):
        return _usage(signal, increment=True, limit=limit)


def rate_limit_peek(signal: SignalRef) -> RateLimitStatus:
    """The current state of the budget without spending from it (for headers on early errors)."""
    return _usage(signal, increment=False)


def rate_limit_consume_many(signal: SignalRef, units: int) -> list[RateLimitStatus]:
    """Spend `units` of the signal's budget at once (a batch): one status per unit, in order.

    One `get_usage` per unit, as single requests would; the store lease takes the units in one
    round trip.
    """
    limit = rate_limit_for(signal)
    with _store_lease(max(units, _lease_size(limit))):
        return [_usage(signal, increment=True, limit=limit) for _ in range(units)]

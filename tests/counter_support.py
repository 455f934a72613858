"""Run in spawned processes by tests/events_app/test_rate_limit_counters.py: imports no model,
so that a fresh interpreter can load it without Django's app registry."""

from __future__ import annotations

from typing import Any


def spend(store: dict[str, Any], key: str, lease: int, times: int, barrier: Any, out: Any) -> None:
    """Spend `times` units of one counter the way django-ratelimit does, leasing `lease` at once;
    put the unit numbers handed out on `out`."""
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    cache: Any
    if store["kind"] == "redis":
        from bigmind.redis import RateLimitCounterCache

        cache = RateLimitCounterCache(store["location"], {"KEY_PREFIX": store["prefix"]})
    else:
        from bigmind.cache import SQLiteCounterCache

        cache = SQLiteCounterCache(store["location"], {})
    units = []
    barrier.wait(timeout=60)
    with cache.lease(lease):
        for _ in range(times):
            units.append(1 if cache.add(key, 1, 65) else cache.incr(key))
    out.put(units)

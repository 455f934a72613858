"""Redis plumbing for the hot path: one client object per connection pool, reused.

Django's RedisCacheClient and kombu's Redis channel both build a new `redis.Redis` for every
call (`get_client()`, `_create_client()`), and redis-py's constructor fills a table of ~170
response callbacks each time: measured at about 0.25 ms of CPU per object, more than a GET on
a reused client. A `redis.Redis` is only a thin, thread-safe front for its connection pool, so
one per pool is enough. See docs/benchmarks.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.core.cache.backends.redis import RedisCacheClient
from kombu.transport import redis as kombu_redis

from bigmind.cache import CounterCache

# INCRBY only if the key exists (Django's contract for incr), in one round trip instead of
# EXISTS + INCRBY.
_INCR_EXISTING = """
if redis.call('exists', KEYS[1]) == 1 then
  return redis.call('incrby', KEYS[1], ARGV[1])
end
return nil
"""


# Add `delta` to a counter, creating it with its expiry when missing; one round trip.
_COUNT = """
local n = redis.call('incrby', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then
  redis.call('expire', KEYS[1], ARGV[2])
end
return n
"""


class CacheCircuitOpen(redis.exceptions.ConnectionError):
    """The cache failed moments ago; this call was not even tried."""


# When each cache (by its server list) may be tried again. Per process, not per client object:
# Django builds a cache object per thread, and every thread of a gthread worker (or /readyz's
# check thread) would otherwise pay its own time-out.
_open_until: dict[str, float] = {}


class ReusingRedisCacheClient(RedisCacheClient):
    def __init__(self, servers: Any, *args: Any, **kwargs: Any) -> None:
        # The circuit breaker's window, taken out of the options before redis-py sees them.
        self._break_seconds = float(kwargs.pop("circuit_break_seconds", 0) or 0)
        super().__init__(servers, *args, **kwargs)
        self._clients: dict[int, Any] = {}
        self._incr_scripts: dict[int, Any] = {}
        self._count_scripts: dict[int, Any] = {}
        self._breaker_key = repr(servers)

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)  # type: ignore[attr-defined]
        return client

    def incr(self, key: Any, delta: int) -> int:
        client = self.get_client(key, write=True)
        script = self._incr_scripts.get(id(client))
        if script is None:
            script = self._incr_scripts[id(client)] = client.register_script(_INCR_EXISTING)
        value = script(keys=[key], args=[delta])
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    def count(self, key: Any, delta: int, timeout: int | None) -> int:
        client = self.get_client(key, write=True)
        script = self._count_scripts.get(id(client))
        if script is None:
            script = self._count_scripts[id(client)] = client.register_script(_COUNT)
        # A counter always expires (django-ratelimit gives its window plus a margin).
        return int(script(keys=[key], args=[delta, timeout or 3600]))


def _breaker(method: Callable[..., Any]) -> Callable[..., Any]:
    """Fail fast for a while after the cache failed.

    Every caller already treats a cache error as a miss (lookups read the database, rate limits
    fail open), but a hung Redis makes each call wait CACHE_SOCKET_TIMEOUT, and a request makes
    several calls: measured at 1 to 2.5 s per request while the cache hung
    (docs/reliability.md). After a connection error or time-out, calls in this process raise at
    once for CACHE_CIRCUIT_BREAK_SECONDS; the first call after that tries for real again.
    """

    def guarded(self: ReusingRedisCacheClient, *args: Any, **kwargs: Any) -> Any:
        until = _open_until.get(self._breaker_key)
        if until is not None and time.monotonic() < until:
            raise CacheCircuitOpen("cache unavailable (failed moments ago; not retried yet)")
        try:
            return method(self, *args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if self._break_seconds > 0:
                _open_until[self._breaker_key] = time.monotonic() + self._break_seconds
            raise

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded


for _name in (
    "add",
    "get",
    "set",
    "touch",
    "delete",
    "get_many",
    "has_key",
    "incr",
    "count",
    "set_many",
    "delete_many",
    "clear",
):
    setattr(ReusingRedisCacheClient, _name, _breaker(getattr(ReusingRedisCacheClient, _name)))


class RedisCache(DjangoRedisCache):
    """Django's Redis cache with reused clients, a one-round-trip `incr` and a circuit breaker."""

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusingRedisCacheClient


class RateLimitCounterCache(CounterCache, RedisCache):
    """The Redis store of django-ratelimit's counters: one round trip per unit spent, and one
    per signal for a batch (bigmind.cache.CounterCache)."""

    def _count(self, key: str, delta: int, timeout: Any) -> int:
        timeout = self.get_backend_timeout(timeout)
        return int(self._cache.count(key, delta, timeout))  # type: ignore[attr-defined]


class _ReusingChannel(kombu_redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        # Rebuilt if the channel replaced its pool (after a reconnect).
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport whose channels reuse one client for publishing."""

    Channel = _ReusingChannel

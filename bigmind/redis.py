"""Django's Redis cache, on redis-py's public API, with one-round-trip counters and a breaker.

Why a backend of our own rather than `django.core.cache.backends.redis.RedisCache`: Django's can
only be extended through private hooks (`_class`, `_cache`, `_get_connection_pool`), and what we
add needs the client: `incr` and the rate-limit `count` in one Lua call each instead of two round
trips, and a per-process circuit breaker. The rest (key making, timeouts, the value format:
integers as Redis integers, everything else pickled; the first server for writes, the others for
reads; the `serializer`, `pool_class` and `parser_class` OPTIONS, anything else passed to the
connection pool) is Django's, so a cache written by one reads the same through the other.

One `redis.Redis` per server per cache object, built when first used. Django's own backend and
kombu's Redis channel build one per call; with redis-py 8.2 (which caches its response-callback
table) that costs about 6 µs, so the broker uses kombu's stock transport (docs/benchmarks.md).
"""

from __future__ import annotations

import pickle
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis
from cachetools import TLRUCache
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache
from django.utils.module_loading import import_string
from redis.connection import DefaultParser

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


# Open breakers, by server list: the entry lives for its window (the value, in seconds) and is
# gone after it. Per process, not per cache object: Django builds a cache object per thread, and
# every thread of a gthread worker (or /readyz's check thread) would otherwise pay its own
# time-out.
_open_breakers: TLRUCache[str, float] = TLRUCache(
    maxsize=64, ttu=lambda _key, seconds, now: now + seconds, timer=time.monotonic
)
_open_breakers_lock = threading.Lock()


def cache_breakers_reset() -> None:
    """Close every breaker of this process (tests)."""
    with _open_breakers_lock:
        _open_breakers.clear()


class RedisSerializer:
    """Django's format: integers stay Redis integers (so INCRBY works on them), the rest pickled."""

    def __init__(self, protocol: int | None = None) -> None:
        self.protocol = pickle.HIGHEST_PROTOCOL if protocol is None else protocol

    def dumps(self, value: Any) -> Any:
        # type(), not isinstance(): a bool is pickled, as Django does.
        if type(value) is int:
            return value
        return pickle.dumps(value, self.protocol)

    def loads(self, data: bytes) -> Any:
        try:
            return int(data)
        except ValueError:
            return pickle.loads(data)  # noqa: S301 - only this service writes its cache


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _breaker(method: _Method) -> _Method:
    """Fail fast for a while after the cache failed.

    Every caller already treats a cache error as a miss (lookups read the database, rate limits
    fail open), but a hung Redis makes each call wait CACHE_SOCKET_TIMEOUT, and a request makes
    several calls: measured at 1 to 2.5 s per request while the cache hung
    (docs/reliability.md). After a connection error or time-out, calls in this process raise at
    once for CACHE_CIRCUIT_BREAK_SECONDS; the first call after that tries for real again.
    """

    def guarded(self: RedisCache, *args: Any, **kwargs: Any) -> Any:
        with _open_breakers_lock:
            is_open = self._breaker_key in _open_breakers
        if is_open:
            raise CacheCircuitOpen("cache unavailable (failed moments ago; not retried yet)")
        try:
            return method(self, *args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            if self._break_seconds > 0:
                with _open_breakers_lock:
                    _open_breakers[self._breaker_key] = self._break_seconds
            raise

    guarded.__name__ = method.__name__
    guarded.__doc__ = method.__doc__
    return guarded  # type: ignore[return-value]


def _imported(value: Any) -> Any:
    return import_string(value) if isinstance(value, str) else value


class RedisCache(BaseCache):
    """A Redis cache with a one-round-trip `incr` and a circuit breaker (see the module)."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(params)
        self._servers = re.split("[;,]", server) if isinstance(server, str) else list(server)
        options = dict(params.get("OPTIONS") or {})
        # The breaker's window, taken out of the options before redis-py sees them.
        self._break_seconds = float(options.pop("circuit_break_seconds", 0) or 0)
        self._breaker_key = repr(self._servers)
        serializer = _imported(options.pop("serializer", None))
        self._serializer = (serializer() if callable(serializer) else serializer) or (
            RedisSerializer()
        )
        self._pool_class = _imported(options.pop("pool_class", None)) or redis.ConnectionPool
        parser_class = _imported(options.pop("parser_class", None)) or DefaultParser
        self._pool_options = {"parser_class": parser_class, **options}
        self._clients: dict[int, redis.Redis] = {}
        self._scripts: dict[tuple[int, str], Any] = {}

    def _client(self, *, write: bool) -> redis.Redis:
        # Writes to the first server; reads from the others when there are others.
        index = 0 if write or len(self._servers) == 1 else random.randint(1, len(self._servers) - 1)
        client = self._clients.get(index)
        if client is None:
            pool = self._pool_class.from_url(self._servers[index], **self._pool_options)
            client = self._clients.setdefault(index, redis.Redis(connection_pool=pool))
        return client

    def _script(self, source: str) -> Any:
        """`source` registered on the writing client (redis-py sends its SHA, loading it once)."""
        client = self._client(write=True)
        script = self._scripts.get((id(client), source))
        if script is None:
            script = self._scripts[(id(client), source)] = client.register_script(source)
        return script

    def get_backend_timeout(self, timeout: Any = DEFAULT_TIMEOUT) -> int | None:
        # Seconds from now, as Redis takes them: None never expires, 0 deletes.
        if timeout == DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else max(0, int(timeout))

    @_breaker
    def add(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client, seconds = self._client(write=True), self.get_backend_timeout(timeout)
        value = self._serializer.dumps(value)
        if seconds == 0:
            added = bool(client.set(key, value, nx=True))
            if added:
                client.delete(key)
            return added
        return bool(client.set(key, value, ex=seconds, nx=True))

    @_breaker
    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        value: Any = self._client(write=False).get(key)
        return default if value is None else self._serializer.loads(value)

    @_breaker
    def set(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        client, seconds = self._client(write=True), self.get_backend_timeout(timeout)
        if seconds == 0:
            client.delete(key)
        else:
            client.set(key, self._serializer.dumps(value), ex=seconds)

    @_breaker
    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        client, seconds = self._client(write=True), self.get_backend_timeout(timeout)
        if seconds is None:
            return bool(client.persist(key))
        return bool(client.expire(key, seconds))

    @_breaker
    def delete(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(self._client(write=True).delete(key))

    @_breaker
    def get_many(self, keys: Iterable[str], version: int | None = None) -> dict[str, Any]:
        made = {self.make_and_validate_key(key, version=version): key for key in keys}
        if not made:
            return {}
        values: list[Any] = self._client(write=False).mget(list(made))
        return {
            made[key]: self._serializer.loads(value)
            for key, value in zip(made, values, strict=True)
            if value is not None
        }

    @_breaker
    def has_key(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(self._client(write=False).exists(key))

    @_breaker
    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        value = self._script(_INCR_EXISTING)(keys=[key], args=[delta])
        if value is None:
            raise ValueError(f"Key '{key}' not found.")
        return int(value)

    @_breaker
    def set_many(
        self, data: dict[str, Any], timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> list[str]:
        if not data:
            return []
        values = {
            self.make_and_validate_key(key, version=version): self._serializer.dumps(value)
            for key, value in data.items()
        }
        seconds = self.get_backend_timeout(timeout)
        pipeline = self._client(write=True).pipeline()
        pipeline.mset(values)
        if seconds is not None:
            # MSET takes no expiry: one EXPIRE per key, in the same round trip.
            for key in values:
                pipeline.expire(key, seconds)
        pipeline.execute()
        return []

    @_breaker
    def delete_many(self, keys: Iterable[str], version: int | None = None) -> None:
        made = [self.make_and_validate_key(key, version=version) for key in keys]
        if made:
            self._client(write=True).delete(*made)

    @_breaker
    def clear(self) -> None:
        self._client(write=True).flushdb()

    @_breaker
    def count(self, key: str, delta: int, timeout: Any) -> int:
        """Add `delta` to the counter at `key` (a made key); a new one expires after `timeout`."""
        seconds = self.get_backend_timeout(timeout)
        # A counter always expires (django-ratelimit gives its window plus a margin).
        return int(self._script(_COUNT)(keys=[key], args=[delta, seconds or 3600]))


class RateLimitCounterCache(CounterCache, RedisCache):
    """The Redis store of django-ratelimit's counters: one round trip per unit spent, and one
    per signal for a batch (bigmind.cache.CounterCache)."""

    def _count(self, key: str, delta: int, timeout: Any) -> int:
        return self.count(key, delta, timeout)

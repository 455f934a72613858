"""A cache backend in one SQLite file, shared by every process on the machine.

It exists for the embedded default (no Redis): Django's LocMemCache is per process, so a key
revoked by `manage.py revoke_api_key` would stay cached in the web server, and its
FileBasedCache/DatabaseCache implement `incr()` as read-modify-write, so two web processes
could both spend the last unit of a rate-limit budget. Here `add()` is one INSERT and `incr()`
one `UPDATE ... RETURNING` inside SQLite's write lock, so rate-limit counters stay exact across
processes. Integers are stored as SQLite integers (so SQL can add to them), everything else
pickled.
"""

from __future__ import annotations

import logging
import pickle
import random
import sqlite3
import threading
import time
from typing import Any

from cachetools import TLRUCache
from django.core.cache import cache
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    value,
    expires REAL NOT NULL
) WITHOUT ROWID
"""
_FOREVER = 1e18
_PURGE_PROBABILITY = 1 / 1000


class SQLiteCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._path = location
        self._local = threading.local()

    # One connection per thread: sqlite3 connections must not cross threads.
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=10, isolation_level=None)
            # Switching a new file to WAL takes an exclusive lock and SQLite does not wait for
            # it (no busy handler): processes starting together retry instead of failing.
            for attempt in range(100):
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute(_SCHEMA)
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.02 + random.random() * 0.03)
            self._local.conn = conn
        return conn

    def _expiry(self, timeout: Any) -> float:
        # get_backend_timeout() already returns an absolute Unix time (or None: never).
        expires = self.get_backend_timeout(timeout)
        return _FOREVER if expires is None else expires

    def _maybe_purge(self) -> None:
        # Expired rows are invisible but still take space; sweep them now and then
        # (rate-limit counters create one row per signal per minute).
        if random.random() < _PURGE_PROBABILITY:
            self.purge_expired()

    @staticmethod
    def _encode(value: Any) -> Any:
        if type(value) is int and -(2**63) <= value < 2**63:
            return value
        return sqlite3.Binary(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))

    @staticmethod
    def _decode(raw: Any) -> Any:
        if isinstance(raw, int):
            return raw
        return pickle.loads(raw)  # noqa: S301 - only this process family writes the file

    def add(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        now = time.time()
        # Replaces an expired row, never a live one: one statement, atomic under the write lock.
        cur = self._conn().execute(
            "INSERT INTO cache (key, value, expires) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires = excluded.expires "
            "WHERE cache.expires <= ?",
            (key, self._encode(value), self._expiry(timeout), now),
        )
        self._maybe_purge()
        return cur.rowcount == 1

    def get(self, key: str, default: Any = None, version: int | None = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        row = (
            self._conn()
            .execute("SELECT value FROM cache WHERE key = ? AND expires > ?", (key, time.time()))
            .fetchone()
        )
        return default if row is None else self._decode(row[0])

    def set(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        self._conn().execute(
            "INSERT OR REPLACE INTO cache (key, value, expires) VALUES (?, ?, ?)",
            (key, self._encode(value), self._expiry(timeout)),
        )
        self._maybe_purge()

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        cur = self._conn().execute(
            "UPDATE cache SET expires = ? WHERE key = ? AND expires > ?",
            (self._expiry(timeout), key, time.time()),
        )
        return cur.rowcount == 1

    def delete(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        cur = self._conn().execute("DELETE FROM cache WHERE key = ?", (key,))
        return cur.rowcount == 1

    def has_key(self, key: str, version: int | None = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        row = (
            self._conn()
            .execute("SELECT 1 FROM cache WHERE key = ? AND expires > ?", (key, time.time()))
            .fetchone()
        )
        return row is not None

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        key = self.make_and_validate_key(key, version=version)
        row = (
            self._conn()
            .execute(
                "UPDATE cache SET value = value + ? "
                "WHERE key = ? AND expires > ? AND typeof(value) = 'integer' RETURNING value",
                (delta, key, time.time()),
            )
            .fetchone()
        )
        if row is None:
            raise ValueError(f"Key '{key}' not found or not an integer")
        return int(row[0])

    def clear(self) -> None:
        self._conn().execute("DELETE FROM cache")

    def close(self, **kwargs: Any) -> None:
        # Django calls close() after every request; the connection is kept for speed.
        return None

    def purge_expired(self) -> int:
        cur = self._conn().execute("DELETE FROM cache WHERE expires <= ?", (time.time(),))
        return cur.rowcount


# --- Counters for django-ratelimit -------------------------------------------------------------
class _CounterState(threading.local):
    def __init__(self) -> None:
        # The unit number an `add` just took, for the `incr` django-ratelimit sends next.
        self.counted: tuple[str, int] | None = None
        # Units a counting `add` takes from the store when this process holds none (`lease`).
        self.fetch = 1


# Units taken from the store and not handed out yet, per counter key and process (every thread
# and every cache object of the process share them): [first, last] ranges of unit numbers, and
# when the counter expires (time.time()). An entry goes when its counter expires; when the cache
# is full the least recently used goes, which only means its units are refused early.
_leases: TLRUCache[str, tuple[list[list[int]], float]] = TLRUCache(
    maxsize=1000, ttu=lambda _key, entry, _now: entry[1], timer=time.time
)
_leases_lock = threading.Lock()


class CounterCache:
    """Mixin for the cache behind django-ratelimit (`RATELIMIT_USE_CACHE = "ratelimit"`): a
    store of rate-limit counters, not a general cache.

    django-ratelimit's public `get_usage()` spends a unit with two calls: `add(key, 1)`, and
    when the key already exists, `incr(key)`. Against Redis that is two round trips per request.
    Here `add(key, 1)` takes the next unit number of the counter in one atomic step (`_count`:
    "add n, create with its expiry if missing", one Lua call in Redis): it answers True for
    unit 1 (django-ratelimit then counts 1), else False, and the `incr(key)` that
    django-ratelimit always sends next returns that unit's number without a call. Any other
    `add` or `incr` is the backend's own.

    `lease(units)`: inside it, a counting `add` that finds no unit left in this process takes
    `units` at once from the store and keeps the ones it does not use for the process's next
    counting `add`s of that key (any thread). Every unit handed out is a distinct number of
    the shared counter, so a budget of n never admits an (n+1)th request, whatever the number
    of processes; units a process leased and did not use before its window ended are never
    spent, so up to (units - 1) per process and window may be refused early. The rate-limit
    service picks `units` (events_app/ingest/ratelimits.py: small against the budget).
    """

    def _count(self, key: str, delta: int, timeout: Any) -> int:
        raise NotImplementedError

    def _state(self) -> _CounterState:
        state = self.__dict__.get("_counter_state")
        if state is None:
            state = self.__dict__.setdefault("_counter_state", _CounterState())
        return state  # type: ignore[no-any-return]

    def _leased_unit(self, key: str) -> int | None:
        with _leases_lock:
            try:
                ranges = _leases[key][0]
            except KeyError:
                return None
            first = ranges[0]
            unit = first[0]
            first[0] += 1
            if first[0] > first[1]:
                ranges.pop(0)
                if not ranges:
                    # pop, not del: the entry may have expired since the get.
                    _leases.pop(key, None)
            return unit

    def _keep(self, key: str, first: int, last: int, timeout: Any) -> None:
        expires = time.time() + (timeout if isinstance(timeout, int | float) else 60)
        with _leases_lock:
            entry = _leases.get(key)
            if entry is None:
                _leases[key] = ([[first, last]], expires)
            else:
                entry[0].append([first, last])

    def add(
        self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        if type(value) is not int or value != 1:
            return super().add(key, value, timeout, version)  # type: ignore[misc, no-any-return]
        # django-ratelimit's keys are a prefix and a SHA-256 in hex: nothing to validate (the
        # check walks the key character by character, a fifth of a counting call's CPU).
        made = self.make_key(key, version=version)  # type: ignore[attr-defined]
        state = self._state()
        unit = self._leased_unit(made)
        if unit is None:
            fetch = max(1, state.fetch)
            count = self._count(made, fetch, timeout)
            unit = count - fetch + 1
            if fetch > 1:
                self._keep(made, unit + 1, count, timeout)
        if unit == 1:
            return True
        state.counted = (made, unit)
        return False

    def incr(self, key: str, delta: int = 1, version: int | None = None) -> int:
        state = self._state()
        if state.counted is not None and delta == 1:
            made = self.make_key(key, version=version)  # type: ignore[attr-defined]
            if state.counted[0] == made:
                unit = state.counted[1]
                state.counted = None
                return unit
        return super().incr(key, delta, version)  # type: ignore[misc, no-any-return]

    def lease(self, units: int) -> _Lease:
        """A context in which counting `add`s that need the store take `units` at once."""
        return _Lease(self._state(), units)


class _Lease:
    # A class, not contextlib.contextmanager: this runs on every ingest request, and a
    # generator-based context costs several times the calls.
    __slots__ = ("before", "state", "units")

    def __init__(self, state: _CounterState, units: int) -> None:
        self.state, self.units = state, max(1, units)

    def __enter__(self) -> None:
        self.before, self.state.fetch, self.state.counted = self.state.fetch, self.units, None

    def __exit__(self, *exc: object) -> None:
        self.state.fetch = self.before


def counter_leases_clear() -> None:
    """Forget every unit this process holds (tests: a cleared store must start from zero)."""
    with _leases_lock:
        _leases.clear()


class SQLiteCounterCache(CounterCache, SQLiteCache):
    """SQLiteCache with one-statement counting for django-ratelimit (see CounterCache)."""

    def _count(self, key: str, delta: int, timeout: Any) -> int:
        now = time.time()
        # A live integer counter grows; a missing, expired or non-integer entry starts afresh.
        row = (
            self._conn()
            .execute(
                "INSERT INTO cache (key, value, expires) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "value = CASE WHEN cache.expires > ? AND typeof(cache.value) = 'integer' "
                "THEN cache.value + excluded.value ELSE excluded.value END, "
                "expires = CASE WHEN cache.expires > ? AND typeof(cache.value) = 'integer' "
                "THEN cache.expires ELSE excluded.expires END "
                "RETURNING value",
                (key, delta, self._expiry(timeout), now, now),
            )
            .fetchone()
        )
        self._maybe_purge()
        return int(row[0])


# --- Fail-soft access for lookups -------------------------------------------------------------
# The lookup caches only save database round trips. When the cache store is down, a lookup
# falls through to the database instead of failing the request; the outage is logged.
_log = logging.getLogger("bigmind.cache")


def cache_get(key: str, default: Any = None) -> Any:
    try:
        return cache.get(key, default)
    except Exception:
        _log.warning("cache unreachable on get; using the database", exc_info=True)
        return default


def cache_set(key: str, value: Any, timeout: int) -> None:
    try:
        cache.set(key, value, timeout)
    except Exception:
        _log.warning("cache unreachable on set", exc_info=True)


def cache_add(key: str, value: Any, timeout: int) -> None:
    try:
        cache.add(key, value, timeout)
    except Exception:
        _log.warning("cache unreachable on add", exc_info=True)


def cache_delete(key: str) -> None:
    try:
        cache.delete(key)
    except Exception:
        # The entry may outlive its row for up to BIGMIND_LOOKUP_CACHE_SECONDS.
        _log.error("cache unreachable on delete of %s; stale until it expires", key, exc_info=True)


# --- Two levels for the hot-path lookups ------------------------------------------------------
MISSING: Any = object()
# Left by an invalidation so that a slower reader cannot re-cache the old row (see `fill`).
_TOMBSTONE = "__invalidated__"
_TOMBSTONE_SECONDS = 30
# Bound on the process-local level: the least recently used entry goes first (entries are tiny
# and cheap to refetch).
_LOCAL_MAX_ENTRIES = 10_000


class LookupCache:
    """A process-local level (`BIGMIND_LOCAL_CACHE_SECONDS`, default 2 s) in front of the
    shared cache.

    Under load the two lookups of every ingest request (API key, signal) are then answered from
    memory instead of two Redis round trips (about a fifth of a worker's time, measured with
    py-spy). The price: a change made in *another* process (a key revoked by a management
    command or another web server) takes effect here within that many seconds; in the process
    that makes the change, and in the shared level, at once.
    """

    def __init__(self) -> None:
        # Each entry lives for its own number of seconds (the value's first item): the
        # setting, or less when the shared level keeps the entry for less.
        self._local: TLRUCache[str, tuple[float, Any]] = TLRUCache(
            maxsize=_LOCAL_MAX_ENTRIES,
            ttu=lambda _key, entry, now: now + entry[0],
            timer=time.monotonic,
        )
        # Request threads share the level; cachetools' caches are not thread-safe.
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        # Indexing, not .get(): one look-up instead of two, on the path of every request.
        try:
            with self._lock:
                return self._local[key][1]
        except KeyError:
            pass
        value = cache_get(key, MISSING)
        if value is MISSING or value == _TOMBSTONE:
            return MISSING
        self._remember(key, value, None)
        return value

    def fill(self, key: str, value: Any, timeout: int) -> None:
        """Store what a miss read from the database, unless an invalidation came since.

        `add`, not `set`: a request that read the row just before a change committed must not
        put the old row back after the change's invalidation (which leaves a tombstone).
        """
        cache_add(key, value, timeout)
        self._remember(key, value, timeout)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._local.pop(key, None)
        cache_set(key, _TOMBSTONE, _TOMBSTONE_SECONDS)

    def clear_local(self) -> None:
        with self._lock:
            self._local.clear()

    def _remember(self, key: str, value: Any, timeout: int | None) -> None:
        from django.conf import settings

        seconds: float = settings.BIGMIND_LOCAL_CACHE_SECONDS
        if timeout is not None:
            seconds = min(seconds, timeout)
        if seconds <= 0:
            return
        with self._lock:
            self._local[key] = (seconds, value)

"""Reads from PostgreSQL streaming replicas (DATABASE_REPLICA_URLS, docs/replicas.md).

Nothing reads from a replica by default. Only code run inside `replica_reads()` (the read API
views and the admin lists, through `read_from_replica` and `ReplicaListAdmin`) does, so that a
read that is followed by a write, or that must see a write just made, never goes to a replica
by accident. Writes and migrations always go to `default`, the primary.

A scope picks one replica when it starts (its reads see one consistent server) among those
judged healthy: reachable, in recovery (still a replica), and no further behind the primary
than BIGMIND_REPLICA_MAX_LAG_SECONDS. None healthy, the primary serves the scope. A verdict is
kept for BIGMIND_REPLICA_CHECK_SECONDS per process, so the hot read path does not pay a check per
request; a replica found down is tried again after a back-off (doubling, up to
BIGMIND_REPLICA_RETRY_MAX_SECONDS). A read that fails on its replica (the replica went away
since the last check) is marked down and run again on the primary.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast

from django.conf import settings
from django.contrib import admin
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
)
from django.db.models import Model
from django.http import HttpRequest

from bigmind.db import primary_reads, read_on_live_connection, replica_var
from bigmind.metrics import REPLICA_CHECKS, REPLICA_FALLBACKS, REPLICA_READS, metric_child
from bigmind.replica_settings import REPLICA_ALIAS_PREFIX

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# Always the primary, even inside a scope: a session read must see the log-in that wrote it.
_PRIMARY_ONLY_APPS = frozenset({"sessions"})


def replica_aliases() -> list[str]:
    return [alias for alias in settings.DATABASES if alias.startswith(REPLICA_ALIAS_PREFIX)]


class ReplicaRouter:
    """DATABASE_ROUTERS' entry when replicas are configured (bigmind/replica_settings.py)."""

    def db_for_read(self, model: type[Model], **hints: Any) -> str:
        alias = replica_var.get()
        if alias is None or model._meta.app_label in _PRIMARY_ONLY_APPS:
            return DEFAULT_DB_ALIAS
        # A transaction on the primary reads its own writes: a scope entered inside one, or a
        # transaction opened inside a scope, stays on the primary.
        if connections[DEFAULT_DB_ALIAS].in_atomic_block:
            return DEFAULT_DB_ALIAS
        return alias

    def db_for_write(self, model: type[Model], **hints: Any) -> str:
        return DEFAULT_DB_ALIAS

    def allow_relation(self, obj1: Model, obj2: Model, **hints: Any) -> bool | None:
        # A replica holds the primary's rows: an object read from one may point to another.
        known = settings.DATABASES
        if obj1._state.db in known and obj2._state.db in known:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        # A replica replays the primary's WAL, schema changes included; it cannot be written.
        return db == DEFAULT_DB_ALIAS


# --- Health ------------------------------------------------------------------------------------
HEALTHY = "healthy"
LAGGING = "lagging"
DOWN = "down"
NOT_A_REPLICA = "not_in_recovery"


def lsn_int(text: str) -> int:
    """A PostgreSQL WAL position ("16/B374D848") as a number that orders like it."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class LagReading:
    """What one check read (bigmind.replicas.replica_check)."""

    in_recovery: bool
    primary_lsn: int  # the primary's WAL flush position, read first
    replay_lsn: int | None  # how far the replica has replayed (None: not a replica)
    # The primary's time now - the time of the last commit the replica replayed.
    replay_age_seconds: float | None


# Positions the replica has not replayed yet, kept per replica: enough for minutes of checks.
_SAMPLES_MAX = 600


@dataclass
class ReplicaState:
    """A process's verdict on one replica."""

    verdict: str | None = None  # None: never checked
    lag_seconds: float | None = None
    checked_at: float = 0.0  # time.monotonic() of the verdict
    retry_after: float = 0.0  # a down replica is not tried before this
    backoff: float = 0.0  # the current back-off of a down replica
    checking: bool = False
    # (when, the primary's flush position then) of this process's checks, oldest first, that
    # the replica had not replayed at the last check; and the latest such moment it has since
    # replayed past: it then held every commit acknowledged before that moment.
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=_SAMPLES_MAX))
    current_at: float | None = None

    def lag_update(self, reading: LagReading, *, sampled_at: float, now: float) -> float | None:
        """An upper bound of the replica's lag in seconds (None: cannot tell) after
        `reading`, taken at `sampled_at` (before the primary's position was read).

        Caught up with the primary's position: 0. Behind: the oldest commit it has not
        replayed was made after the last commit it replayed (`replay_age_seconds` ago) and
        after the latest earlier check whose position it has replayed past (`current_at`);
        the smaller bound holds. The replay age alone would call a replica of a primary that
        was idle for an hour an hour late the instant after one new commit.
        """
        self.samples.append((sampled_at, reading.primary_lsn))
        if reading.replay_lsn is not None:
            while self.samples and self.samples[0][1] <= reading.replay_lsn:
                self.current_at = self.samples.popleft()[0]
        if not self.samples:
            return 0.0
        bounds = [] if reading.replay_age_seconds is None else [reading.replay_age_seconds]
        if self.current_at is not None:
            bounds.append(now - self.current_at)
        return max(0.0, min(bounds)) if bounds else None


_CHECK_REPLICA = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
)


def _primary_position() -> tuple[str, datetime]:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_flush_lsn()::text, clock_timestamp()")
        lsn, now = cursor.fetchone()
        return str(lsn), now


def replica_check(alias: str) -> LagReading:
    """Read the replica's position against the primary's (this thread's connections to both).
    Raises the database's error when either cannot be read."""
    # First: every commit acknowledged before this moment is at or before this position. On a
    # live connection: after a restart of the primary, the thread's old one must not make the
    # replica look down.
    primary_lsn, primary_now = read_on_live_connection(_primary_position)
    with connections[alias].cursor() as cursor:
        cursor.execute(_CHECK_REPLICA)
        in_recovery, replay_lsn, replayed_commit_at = cursor.fetchone()
    # Both times are the primary's clock (a replayed commit carries its primary's time): the
    # replica's clock, if it ran slow, would make a late replica look on time.
    age = None
    if replayed_commit_at is not None:
        age = (primary_now - replayed_commit_at).total_seconds()
    return LagReading(
        in_recovery=bool(in_recovery),
        primary_lsn=lsn_int(primary_lsn),
        replay_lsn=None if replay_lsn is None else lsn_int(str(replay_lsn)),
        replay_age_seconds=age,
    )


class ReplicaMonitor:
    """The process's verdicts on its replicas, shared by its threads."""

    def __init__(
        self,
        check: Callable[[str], LagReading] = replica_check,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, ReplicaState] = {}

    def state(self, alias: str) -> ReplicaState:
        with self._lock:
            return self._states.setdefault(alias, ReplicaState())

    def healthy(self, aliases: list[str]) -> list[str]:
        """The replicas to read from now; checks (in this thread) those whose verdict is stale.
        While another thread checks a replica, its previous verdict stands."""
        found = []
        for alias in aliases:
            if self._due(alias):
                self._run_check(alias)
            if self.state(alias).verdict == HEALTHY:
                found.append(alias)
        return found

    def _due(self, alias: str) -> bool:
        now = self._clock()
        health = settings.BIGMIND_REPLICA_HEALTH
        with self._lock:
            state = self._states.setdefault(alias, ReplicaState())
            if state.checking:
                return False
            if state.verdict == DOWN:
                due = now >= state.retry_after
            else:
                due = state.verdict is None or now - state.checked_at >= health.check_seconds
            if due:
                state.checking = True
            return due

    def _run_check(self, alias: str) -> None:
        health = settings.BIGMIND_REPLICA_HEALTH
        state = self.state(alias)
        sampled_at = self._clock()
        try:
            reading = self._check(alias)
        except DatabaseError as exc:
            # Unreachable, refusing us, or no PostgreSQL replica at all: skipped either way.
            _connection_drop(alias)
            self.mark_down(alias, reason=f"{type(exc).__name__}: {exc}".strip())
            return
        except BaseException:
            with self._lock:
                state.checking = False
            raise
        with self._lock:
            lag = state.lag_update(reading, sampled_at=sampled_at, now=self._clock())
            if not reading.in_recovery:
                verdict = NOT_A_REPLICA
            elif lag is None or lag > health.max_lag_seconds:
                verdict = LAGGING
            else:
                verdict = HEALTHY
            changed = verdict != state.verdict
            state.verdict = verdict
            state.lag_seconds = lag
            state.checked_at = self._clock()
            state.backoff = 0.0
            state.checking = False
        if changed:
            log = logger.info if verdict == HEALTHY else logger.warning
            log("replica %s: %s (lag %s s)", alias, verdict, _seconds(lag))
        metric_child(REPLICA_CHECKS, alias, verdict).inc()

    def mark_down(self, alias: str, *, reason: str) -> None:
        """Skip `alias` until its back-off has passed (a failed check or a failed read)."""
        health = settings.BIGMIND_REPLICA_HEALTH
        with self._lock:
            state = self._states.setdefault(alias, ReplicaState())
            was = state.verdict
            state.backoff = min(
                health.retry_max_seconds, max(health.check_seconds, state.backoff * 2)
            )
            state.verdict = DOWN
            state.lag_seconds = None
            state.checked_at = self._clock()
            state.retry_after = state.checked_at + state.backoff
            state.checking = False
            backoff = state.backoff
        if was != DOWN:
            logger.warning("replica %s: down (%s); retried in %.1f s", alias, reason, backoff)
        metric_child(REPLICA_CHECKS, alias, DOWN).inc()


def _seconds(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def _connection_drop(alias: str) -> None:
    """Close this thread's connection to `alias` (broken, or to a server that went away): the
    next use opens a new one instead of failing on the dead one."""
    with contextlib.suppress(Exception):
        connections[alias].close()


_monitor = ReplicaMonitor()


def replica_choose(aliases: list[str]) -> str | None:
    """A healthy one of `aliases` (the configured replicas) to read from now, or None (the
    primary). Not inside a transaction: the router would send its reads to the primary anyway,
    and the health check would be wasted."""
    if not aliases or connections[DEFAULT_DB_ALIAS].in_atomic_block:
        return None
    healthy = _monitor.healthy(aliases)
    return random.choice(healthy) if healthy else None


# --- Scopes ------------------------------------------------------------------------------------
@contextlib.contextmanager
def replica_reads() -> Iterator[str | None]:
    """Inside: reads go to a healthy replica (yielded), or to the primary (None) if none is."""
    aliases = replica_aliases()
    alias = replica_choose(aliases)
    if aliases:
        metric_child(REPLICA_READS, alias or DEFAULT_DB_ALIAS).inc()
    token = replica_var.set(alias)
    try:
        yield alias
    finally:
        replica_var.reset(token)


def replica_in_use() -> str | None:
    return replica_var.get()


def read_from_replica(*, primary_on: tuple[type[BaseException], ...] = ()) -> Callable[[F], F]:
    """Run the decorated function (a read: it must write nothing) inside `replica_reads()`.

    Run again on the primary when, on a replica, it raises one of `primary_on` (a 404 that may
    only mean the replica has not replayed the row yet) or the replica's connection fails.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with replica_reads() as alias:
                if alias is None:
                    return func(*args, **kwargs)
                try:
                    return func(*args, **kwargs)
                except primary_on:
                    reason = "not_found"
                except (OperationalError, InterfaceError) as exc:
                    if not connections[alias].errors_occurred:
                        raise  # not the replica's: the primary's error is the answer
                    _connection_drop(alias)
                    _monitor.mark_down(alias, reason=f"a read failed: {type(exc).__name__}")
                    reason = "error"
            metric_child(REPLICA_FALLBACKS, reason).inc()
            with primary_reads():
                return func(*args, **kwargs)

        wrapper.reads_from_replica = True  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


class ReplicaListAdmin(admin.ModelAdmin):
    """A ModelAdmin whose list page (GET) reads from a replica. Its POST (actions, list edits),
    the change forms and every other page read from the primary."""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        if request.method not in ("GET", "HEAD") or not replica_aliases():
            return super().changelist_view(request, extra_context)
        return _changelist_rendered(super().changelist_view, request, extra_context)


@read_from_replica()
def _changelist_rendered(view: Callable[..., Any], request: HttpRequest, extra: Any) -> Any:
    response = view(request, extra)
    # A TemplateResponse runs the page's queries when it is rendered, which Django would do
    # after the view has returned, outside the scope.
    render = getattr(response, "render", None)
    if callable(render):
        response = render()
    return response

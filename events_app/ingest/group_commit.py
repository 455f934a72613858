"""Group commit: one writer per process stores what many request threads hand it, together.

A request thread of POST /v1/events checks its event, hands the row to `GroupWriter.write`
and waits. The process's writer thread takes every row handed over meanwhile (at most
`max_rows`; if fewer are waiting it may wait up to `max_wait` seconds for more), stores them
with one call of its store function (on PostgreSQL: one statement in autocommit, so one round
trip and one WAL flush for the group), and only then releases each request with that row's own
outcome. So a 202 still means "committed": the writer answers nobody before the commit, and a
process that dies first has answered nobody of its group. Each row's outcome is its own: the
store function gives one per row (stored, an existing event with that idempotency key, or an
error of that row alone).

Under load, groups form by themselves: while the writer waits for one group's commit, the
next group queues. With no load, a row waits for nothing but its own statement (and
`max_wait`, 0 by default; docs/benchmarks.md measures the choice).

After commits, the writer runs an after-commit step (ingest: the wake-up decision for the
processing workers, one cache call) for all the groups committed since it last ran, at most once
per `after_commit_interval` and never later than that after a commit: a cost per interval, not
per request.

The writer thread has its own database connection (Django's connections are per thread), kept
open for good: no per-request health check; a failed connection is closed and the group tried
again (up to `tries` times), which the store function must make safe (store.py: the group's
own event ids are recognised as stored).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Outcome = TypeVar("Outcome")


_STOP = object()  # put on the queue by `stop`


class WriterTimeout(Exception):
    """The writer did not settle this row in time (the database hangs); its fate is unknown."""


class _Slot(Generic[Row, Outcome]):
    __slots__ = ("done", "error", "outcome", "row", "tag")

    def __init__(self, row: Row, tag: Any) -> None:
        self.row = row
        # The caller's label (ingest: its request id), for the after-commit step.
        self.tag = tag
        self.outcome: Outcome | None = None
        self.error: BaseException | None = None
        # Held until the writer settles the row: a lock is the cheapest one-shot signal.
        self.done = threading.Lock()
        self.done.acquire()


class GroupWriter(Generic[Row, Outcome]):
    """A per-process writer thread storing rows in groups (see the module)."""

    def __init__(
        self,
        *,
        store: Callable[[list[Row]], Sequence[Outcome]],
        after_commit: Callable[[list[Row], Sequence[Outcome], Any], None] | None = None,
        max_rows: int,
        max_wait: float,
        after_commit_interval: float = 0.0,
        tries: int = 3,
        name: str = "group-writer",
    ) -> None:
        self._store = store
        self._after_commit = after_commit
        self._after_interval = max(0.0, after_commit_interval)
        # Committed rows whose after-commit step has not run yet, and when it may run next.
        self._after_rows: list[Row] = []
        self._after_outcomes: list[Outcome] = []
        self._after_tag: Any = None
        self._after_next = 0.0
        self.max_rows = max(1, max_rows)
        self.max_wait = max(0.0, max_wait)
        self._tries = max(1, tries)
        self._name = name
        self._lock = threading.Lock()  # starting and stopping the thread
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        # Observers (tests, metrics): called with each group's size and seconds after commit.
        self.on_group: Callable[[int, float], None] | None = None

    def write(self, row: Row, *, timeout: float, tag: Any = None) -> Outcome:
        """Store `row` with the next group; block until it is committed (or refused).

        Raises the row's own error, the group's database error, or WriterTimeout. `tag` is
        handed to the after-commit step that covers the row, if it is the first one it covers.
        """
        slot: _Slot[Row, Outcome] = _Slot(row, tag)
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._start()  # first use in this process (gunicorn forks its workers)
        # SimpleQueue's put and get are C: handing a row over costs no Python-level locking.
        self._queue.put(slot)
        if not slot.done.acquire(timeout=timeout):
            raise WriterTimeout(f"no commit within {timeout:g} s")
        if slot.error is not None:
            raise slot.error
        return slot.outcome  # type: ignore[return-value]

    def stop(self, timeout: float = 10.0) -> None:
        """Store what is queued, close the writer's connection and end its thread (tests; a
        process that exits needs no call: its requests have all been answered by then)."""
        with self._lock:
            thread = self._thread if self._pid == os.getpid() else None
            if thread is not None:
                self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._pid = self._thread = None

    def _start(self) -> None:
        # A forked child inherits the parent's queue and a thread object that does not run
        # in it: start afresh.
        self._queue = queue.SimpleQueue()
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _take(self, timeout: float | None) -> list[_Slot[Row, Outcome]] | None:
        """The next group; [] when `timeout` passed first; None when asked to stop."""
        try:
            if timeout is None:
                first = self._queue.get()
            elif timeout > 0:
                first = self._queue.get(timeout=timeout)
            else:
                first = self._queue.get_nowait()
        except queue.Empty:
            return []
        if first is _STOP:
            return None
        group = [first]
        deadline = time.monotonic() + self.max_wait if self.max_wait else 0.0
        while len(group) < self.max_rows:
            try:
                slot = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic() if deadline else 0.0
                if left <= 0:
                    break
                try:
                    slot = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if slot is _STOP:
                self._queue.put(_STOP)  # after this group
                break
            group.append(slot)
        return group

    def _run(self) -> None:
        while True:
            timeout = None
            if self._after_rows:
                timeout = self._after_next - time.monotonic()
            group = self._take(timeout)
            if group is None:
                self._run_after_commit()
                _close_connection()
                return
            try:
                if group:
                    self._commit(group)
                if self._after_rows and time.monotonic() >= self._after_next:
                    self._run_after_commit()
            except BaseException:  # never let the thread die with requests waiting
                logger.exception("group writer: unexpected error")
                for slot in group:
                    if slot.done.locked():
                        slot.error = slot.error or RuntimeError("group writer failed")
                        slot.done.release()

    def _run_after_commit(self) -> None:
        """The after-commit step for every group committed since it last ran: at most once per
        `after_commit_interval`, and never later than that after a commit."""
        rows, outcomes, tag = self._after_rows, self._after_outcomes, self._after_tag
        self._after_rows, self._after_outcomes, self._after_tag = [], [], None
        self._after_next = time.monotonic() + self._after_interval
        if self._after_commit is None or not rows:
            return
        try:
            self._after_commit(rows, outcomes, tag)
        except Exception:
            logger.exception("group writer: after-commit step failed")

    def _commit(self, group: list[_Slot[Row, Outcome]]) -> None:
        rows = [slot.row for slot in group]
        started = time.perf_counter()
        try:
            outcomes = self._store_with_retries(rows)
        except Exception as exc:
            for slot in group:
                slot.error = exc
                slot.done.release()
            return
        for slot, outcome in zip(group, outcomes, strict=True):
            slot.outcome = outcome
            slot.done.release()
        if self.on_group is not None:
            self.on_group(len(group), time.perf_counter() - started)
        if self._after_commit is not None:
            if not self._after_rows:
                self._after_tag = group[0].tag
            self._after_rows.extend(rows)
            self._after_outcomes.extend(outcomes)

    def _store_with_retries(self, rows: list[Row]) -> Sequence[Outcome]:
        for attempt in range(1, self._tries + 1):
            try:
                return self._store(rows)
            except (OperationalError, InterfaceError):
                # The connection broke, the server restarted, or a deadlock: a fresh
                # connection and another try. Whether the failed try committed is unknown;
                # the store function recognises its own rows if it did.
                _close_connection()
                if attempt == self._tries:
                    raise
                logger.warning("group writer: database error, try %d", attempt, exc_info=True)
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")


def _close_connection() -> None:
    try:
        connection.close()
    except Exception:
        logger.debug("closing a broken connection failed", exc_info=True)

"""SQLiteCache on its own: Django's cache semantics, and add/incr that stay exact across processes.

No Django database is involved; every test gets its own cache file under tmp_path.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import bigmind.cache
from bigmind.cache import SQLiteCache


class Clock:
    """Stands in for time.time() in bigmind.cache and Django's BaseCache (both call it)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def cache_path(tmp_path: Path) -> str:
    return str(tmp_path / "c.sqlite3")


@pytest.fixture
def cache(cache_path: str) -> SQLiteCache:
    return SQLiteCache(cache_path, {})


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(time.time())
    monkeypatch.setattr(time, "time", fake)
    return fake


# --- get / set ----------------------------------------------------------------------------------
def test_get_returns_the_default_for_a_missing_key(cache: SQLiteCache) -> None:
    assert cache.get("missing") is None
    assert cache.get("missing", "fallback") == "fallback"


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        -5,
        2**62,
        2**63,
        -(2**63) - 1,
        1.5,
        "text",
        b"\x00bytes",
        True,
        False,
        None,
        {"a": [1, 2, {"b": None}]},
        (1, "two"),
    ],
    ids=repr,
)
def test_set_then_get_returns_an_equal_value_of_the_same_type(
    cache: SQLiteCache, value: Any
) -> None:
    cache.set("k", value)
    got = cache.get("k", "sentinel")
    assert got == value
    assert type(got) is type(value)


def test_set_replaces_an_existing_value(cache: SQLiteCache) -> None:
    cache.set("k", "old")
    cache.set("k", "new")
    assert cache.get("k") == "new"


def test_keys_of_different_versions_are_different_entries(cache: SQLiteCache) -> None:
    cache.set("k", "v1")
    cache.set("k", "v2", version=2)
    assert cache.get("k") == "v1"
    assert cache.get("k", version=2) == "v2"


def test_two_instances_on_the_same_file_see_each_others_entries(cache_path: str) -> None:
    first, second = SQLiteCache(cache_path, {}), SQLiteCache(cache_path, {})
    first.set("k", {"shared": True})
    assert second.get("k") == {"shared": True}
    second.delete("k")
    assert first.get("k") is None


def test_the_key_prefix_separates_two_caches_on_one_file(cache_path: str) -> None:
    one = SQLiteCache(cache_path, {"KEY_PREFIX": "one"})
    two = SQLiteCache(cache_path, {"KEY_PREFIX": "two"})
    one.set("k", 1)
    assert two.get("k") is None
    assert one.get("k") == 1


# --- add ----------------------------------------------------------------------------------------
def test_add_stores_a_value_only_when_the_key_is_absent(cache: SQLiteCache) -> None:
    assert cache.add("k", "first") is True
    assert cache.add("k", "second") is False
    assert cache.get("k") == "first"


def test_add_does_not_replace_a_value_stored_by_set(cache: SQLiteCache) -> None:
    cache.set("k", 7)
    assert cache.add("k", 8) is False
    assert cache.get("k") == 7


def test_add_after_delete_stores_again(cache: SQLiteCache) -> None:
    cache.add("k", 1)
    cache.delete("k")
    assert cache.add("k", 2) is True
    assert cache.get("k") == 2


def test_add_replaces_an_entry_that_has_expired(cache: SQLiteCache, clock: Clock) -> None:
    assert cache.add("k", "old", timeout=10) is True
    clock.advance(11)
    assert cache.add("k", "new", timeout=10) is True
    assert cache.get("k") == "new"


# --- delete / has_key / clear -------------------------------------------------------------------
def test_delete_says_whether_it_deleted_something(cache: SQLiteCache) -> None:
    cache.set("k", 1)
    assert cache.delete("k") is True
    assert cache.delete("k") is False
    assert cache.get("k") is None


def test_has_key_is_true_only_for_a_stored_key(cache: SQLiteCache) -> None:
    assert cache.has_key("k") is False
    cache.set("k", None)
    assert cache.has_key("k") is True
    cache.delete("k")
    assert cache.has_key("k") is False


def test_clear_removes_every_entry(cache: SQLiteCache) -> None:
    cache.set_many({"a": 1, "b": "two"})
    cache.clear()
    assert cache.get_many(["a", "b"]) == {}


def test_get_many_and_set_many_work_on_several_keys(cache: SQLiteCache) -> None:
    assert cache.set_many({"a": 1, "b": "two"}) == []
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": "two"}


# --- expiry -------------------------------------------------------------------------------------
def test_an_entry_is_there_until_its_timeout(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("k", "v", timeout=10)
    clock.advance(9)
    assert cache.get("k") == "v"
    assert cache.has_key("k") is True


def test_an_entry_is_gone_after_its_timeout(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("k", "v", timeout=10)
    clock.advance(11)
    assert cache.get("k", "gone") == "gone"
    assert cache.has_key("k") is False


def test_the_default_timeout_comes_from_the_cache_params(cache_path: str, clock: Clock) -> None:
    cache = SQLiteCache(cache_path, {"TIMEOUT": 10})
    cache.set("k", "v")
    clock.advance(11)
    assert cache.get("k") is None


def test_a_timeout_of_zero_does_not_keep_the_value(cache: SQLiteCache) -> None:
    cache.set("k", "v", timeout=0)
    assert cache.get("k") is None


def test_a_timeout_of_none_keeps_the_value_for_good(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("k", "v", timeout=None)
    clock.advance(10 * 365 * 24 * 3600)
    assert cache.get("k") == "v"


def test_touch_says_false_for_a_missing_key(cache: SQLiteCache) -> None:
    assert cache.touch("missing", timeout=10) is False


def test_touch_gives_a_live_entry_a_new_timeout(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("k", "v", timeout=10)
    clock.advance(5)
    assert cache.touch("k", timeout=100) is True
    clock.advance(50)
    assert cache.get("k") == "v"
    clock.advance(51)
    assert cache.get("k") is None


def test_touch_does_not_revive_an_expired_entry(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("k", "v", timeout=10)
    clock.advance(11)
    assert cache.touch("k", timeout=100) is False
    assert cache.get("k") is None


def test_writes_now_and_then_sweep_expired_entries(
    cache: SQLiteCache, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.set("old", 1, timeout=10)
    clock.advance(11)
    monkeypatch.setattr(bigmind.cache.random, "random", lambda: 0.0)
    cache.set("new", 2, timeout=10)
    assert cache.purge_expired() == 0  # the write swept the expired entry already
    assert cache.get("new") == 2


def test_purge_expired_removes_only_expired_entries(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("old", 1, timeout=10)
    cache.set("live", 2, timeout=100)
    clock.advance(11)
    assert cache.purge_expired() == 1
    assert cache.get("live") == 2


# --- incr / decr --------------------------------------------------------------------------------
def test_incr_adds_to_an_integer_and_returns_the_new_value(cache: SQLiteCache) -> None:
    cache.set("n", 1)
    assert cache.incr("n") == 2
    assert cache.incr("n", 10) == 12
    assert cache.decr("n", 5) == 7
    assert cache.get("n") == 7


def test_incr_keeps_the_entry_timeout(cache: SQLiteCache, clock: Clock) -> None:
    cache.add("n", 1, timeout=10)
    clock.advance(5)
    cache.incr("n")
    clock.advance(4)
    assert cache.get("n") == 2


def test_incr_of_a_missing_key_raises_value_error(cache: SQLiteCache) -> None:
    with pytest.raises(ValueError):
        cache.incr("missing")


def test_incr_of_a_value_that_is_not_an_integer_raises_value_error(cache: SQLiteCache) -> None:
    cache.set("s", "text")
    with pytest.raises(ValueError):
        cache.incr("s")
    cache.set("b", True)
    with pytest.raises(ValueError):
        cache.incr("b")
    assert cache.get("b") is True


def test_incr_of_an_expired_key_raises_value_error(cache: SQLiteCache, clock: Clock) -> None:
    cache.set("n", 1, timeout=10)
    clock.advance(11)
    with pytest.raises(ValueError):
        cache.incr("n")


def test_incr_from_many_threads_loses_no_increment(cache: SQLiteCache) -> None:
    cache.add("n", 0)

    def work() -> None:
        for _ in range(100):
            cache.incr("n")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("n") == 800


# --- across processes ---------------------------------------------------------------------------
# Module-level so that spawned processes can import them.
def _incr_many(path: str, key: str, times: int, barrier: Any) -> None:
    cache = SQLiteCache(path, {})
    barrier.wait(timeout=30)
    for _ in range(times):
        cache.incr(key)


def _add_once(path: str, key: str, value: int, barrier: Any, results: Any) -> None:
    cache = SQLiteCache(path, {})
    barrier.wait(timeout=30)
    results.put((value, cache.add(key, value)))


def _run_processes(
    target: Callable[..., None], args_for: Callable[[int], tuple[Any, ...]], n: int
) -> None:
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=target, args=args_for(i)) for i in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    for process in processes:
        assert process.exitcode == 0, f"a worker process failed with exit code {process.exitcode}"


def test_incr_from_several_processes_at_once_loses_no_increment(
    cache: SQLiteCache, cache_path: str
) -> None:
    processes, times = 4, 200
    assert cache.add("counter", 1) is True
    barrier = multiprocessing.get_context("spawn").Barrier(processes)
    _run_processes(_incr_many, lambda i: (cache_path, "counter", times, barrier), processes)
    assert cache.get("counter") == 1 + processes * times


def test_add_by_many_processes_at_once_succeeds_for_exactly_one(
    cache: SQLiteCache, cache_path: str
) -> None:
    processes = 8
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    _run_processes(_add_once, lambda i: (cache_path, "lock", i, barrier, results), processes)
    outcomes = [results.get(timeout=10) for _ in range(processes)]
    winners = [value for value, added in outcomes if added]
    assert len(winners) == 1
    assert cache.get("lock") == winners[0]

"""The rate-limit counters behind django-ratelimit (bigmind.cache.CounterCache): one round trip
per unit spent, units leased per process for large budgets, and a budget never exceeded."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches

from bigmind.cache import CounterCache, SQLiteCounterCache, counter_leases_clear
from events_app.ingest.ratelimits import (
    rate_limit_consume,
    rate_limit_consume_many,
    rate_limit_peek,
)
from signals_app.selectors import signal_get_active_ref
from tests.conftest import Tenant
from tests.harness import spend


def _ref(tenant: Tenant, slug: str, limit: int) -> Any:
    tenant.signal(slug, rate_limit_per_minute=limit)
    ref = signal_get_active_ref(organization_id=tenant.organization.pk, slug=slug)
    assert ref is not None
    return ref


@pytest.fixture
def counted() -> Any:
    """How many times the store was asked to count (each is one round trip on Redis)."""
    store = caches["ratelimit"]
    assert isinstance(store, CounterCache)
    with mock.patch.object(
        type(store), "_count", autospec=True, side_effect=type(store)._count
    ) as m:
        yield m


def test_each_request_spends_one_unit_in_one_call_to_the_store(
    tenant: Tenant, counted: Any
) -> None:
    signal = _ref(tenant, "small", 100)  # a small budget: no leasing

    statuses = [rate_limit_consume(signal) for _ in range(102)]

    assert counted.call_count == 102
    assert [s.remaining for s in statuses[:3]] == [99, 98, 97]
    assert [s.exceeded for s in statuses] == [False] * 100 + [True, True]


def test_a_large_budget_is_taken_in_slices_and_every_unit_is_counted_once(
    tenant: Tenant, counted: Any, settings: Any
) -> None:
    settings.BIGMIND_RATE_LIMIT_LEASE_MAX = 64
    signal = _ref(tenant, "large", 1_000_000)  # 1/1000 of it is 1,000: slices of 64

    statuses = [rate_limit_consume(signal) for _ in range(200)]

    assert counted.call_count == 4  # 64 + 64 + 64 + 64 units taken for 200 spent
    assert [s.remaining for s in statuses] == [1_000_000 - n for n in range(1, 201)]
    # What the store holds: every unit taken, including the 56 this process still holds.
    assert rate_limit_peek(signal).remaining == 1_000_000 - 256


def test_leasing_stops_short_of_the_budget_and_never_goes_past_it(
    tenant: Tenant, settings: Any
) -> None:
    settings.BIGMIND_RATE_LIMIT_LEASE_MAX = 64
    signal = _ref(tenant, "edge", 2_500)  # slices of 2
    # All 2,503 calls in one minute's window: on a loaded machine they may take seconds, and a
    # new window would give a new budget (seen in CI: call 2,501 allowed).
    left = rate_limit_peek(signal).reset_epoch - time.time()
    if left < 20:
        time.sleep(left + 0.5)

    statuses = [rate_limit_consume(signal) for _ in range(2_503)]

    assert [s.exceeded for s in statuses] == [False] * 2_500 + [True] * 3


def test_a_lease_max_of_one_counts_every_request_in_the_store(
    tenant: Tenant, counted: Any, settings: Any
) -> None:
    settings.BIGMIND_RATE_LIMIT_LEASE_MAX = 1
    signal = _ref(tenant, "exact", 1_000_000)
    for _ in range(10):
        rate_limit_consume(signal)
    assert counted.call_count == 10


def test_a_batch_takes_its_units_in_one_call(tenant: Tenant, counted: Any) -> None:
    signal = _ref(tenant, "batch", 150)

    statuses = rate_limit_consume_many(signal, 100)
    more = rate_limit_consume_many(signal, 100)

    assert counted.call_count == 2
    assert [s.remaining for s in statuses] == [150 - n for n in range(1, 101)]
    assert sum(not s.exceeded for s in statuses + more) == 150
    assert [s.exceeded for s in more] == [False] * 50 + [True] * 50


def test_a_peek_spends_nothing(tenant: Tenant) -> None:
    signal = _ref(tenant, "peek", 10)
    rate_limit_consume(signal)
    assert rate_limit_peek(signal).remaining == 9
    assert rate_limit_peek(signal).remaining == 9
    assert rate_limit_consume(signal).remaining == 8


def test_other_cache_uses_of_add_and_incr_are_the_backends_own(tmp_path: Path) -> None:
    cache = SQLiteCounterCache(str(tmp_path / "c.sqlite3"), {})
    assert cache.add("flag", "x", 30) is True
    assert cache.add("flag", "y", 30) is False
    assert cache.get("flag") == "x"
    assert cache.add("n", 5, 30) is True
    assert cache.incr("n", 2) == 7


# --- Several processes on one counter -----------------------------------------------------------
def _stores(tmp_path: Path) -> list[dict[str, Any]]:
    stores = [{"kind": "sqlite", "location": str(tmp_path / "counters.sqlite3")}]
    if os.environ.get("REDIS_URL"):
        stores.append(
            {
                "kind": "redis",
                "location": os.environ["REDIS_URL"],
                "prefix": f"lease-test-{os.getpid()}",
            }
        )
    return stores


@pytest.mark.parametrize("lease", [1, 7])
def test_units_handed_out_by_several_processes_are_all_different(
    tmp_path: Path, lease: int
) -> None:
    for store in _stores(tmp_path):
        ctx = multiprocessing.get_context("spawn")
        processes, times = 4, 150
        barrier, out = ctx.Barrier(processes), ctx.Queue()
        key = f"units-{lease}"
        workers = [
            ctx.Process(target=spend, args=(store, key, lease, times, barrier, out))
            for _ in range(processes)
        ]
        for worker in workers:
            worker.start()
        units = [unit for _ in workers for unit in out.get(timeout=120)]
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        # Every request got its own unit number of the shared counter: with a budget of n,
        # exactly the requests holding units 1..n are admitted, whatever the process.
        assert len(units) == len(set(units)) == processes * times
        # Units leased and not used (at most lease - 1 per process) are the only gap.
        assert max(units) <= processes * times + processes * (lease - 1)


def test_clearing_the_leases_forgets_what_this_process_held(tenant: Tenant, settings: Any) -> None:
    settings.BIGMIND_RATE_LIMIT_LEASE_MAX = 64
    signal = _ref(tenant, "forget", 1_000_000)
    rate_limit_consume(signal)
    caches["ratelimit"].clear()
    counter_leases_clear()
    assert rate_limit_consume(signal).remaining == 1_000_000 - 1

"""The pipeline's delivery guarantees, proved with real Celery worker processes (SPEC section 3).

Events go in through the HTTP stack of this process (published after commit, for real: the
tests use `transactional_db`), a `celery worker` subprocess processes them against the same
PostgreSQL test database, and the sweep is run from here. Needs PostgreSQL and a network broker
(Redis or RabbitMQ); skipped on the embedded defaults.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from events_app.models import Event, Insight, MetricAggregate, RecordState
from events_app.pipeline.sweep import events_sweep
from signals_app.models import Signal
from tests.conftest import ApiClient, Tenant
from tests.harness import (
    SLOW_DELAY_ENV,
    SLOW_PROCESSOR,
    Worker,
    wait_for,
    worker_env,
    worker_start,
    workers_stop,
)

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ACCOUNT = {"type": "account", "id": "001-e2e"}
# Rate limits out of the way: these tests send many events of one signal within a minute.
UNLIMITED = 100_000
# The SIGKILL tests: the processor sleeps this long, within time limits that fit a batch.
SLOW_SECONDS = 1.5
SLOW_SOFT_LIMIT = 6
SLOW_HARD_LIMIT = 7


StartWorker = Callable[..., list[Worker]]


@pytest.fixture
def start_worker(celery_stack: None, tmp_path: Path) -> Iterator[StartWorker]:
    """Start a worker on the test database and wait until it consumes; all stop at teardown.

    Depends on the database fixtures, so workers are gone before the tables are flushed.
    """
    started: list[Worker] = []
    base_env = {
        **worker_env(tmp_path / "var"),
        "CELERY_TASK_SOFT_TIME_LIMIT": "30",
        "CELERY_TASK_TIME_LIMIT": "40",
        # Retries (a state moved under a concurrent worker) come back quickly.
        "BIGMIND_RETRY_BACKOFF_SECONDS": "0.2",
        "BIGMIND_RETRY_BACKOFF_MAX_SECONDS": "1",
    }

    def start(*, count: int = 1, concurrency: int = 1, **env: str) -> list[Worker]:
        workers = [
            worker_start(env={**base_env, **env}, log_dir=tmp_path, concurrency=concurrency)
            for _ in range(count)
        ]
        started.extend(workers)
        for worker in workers:
            worker.wait_ready()
        return workers

    yield start
    workers_stop(started)
    for worker in started:
        # Shown by pytest only when the test failed.
        print(f"===== worker {worker.name} (exit {worker.process.returncode}) =====")
        print(worker.log())


# --- helpers -------------------------------------------------------------------------------


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_body(
    signal: Signal, data: dict[str, Any], *, at: datetime | None = None, identity: dict = ACCOUNT
) -> dict[str, Any]:
    body: dict[str, Any] = {"signal": signal.slug, "identity": identity, "data": data}
    if at is not None:
        body["timestamp"] = iso(at)
    return body


def post_one(api: ApiClient, body: dict[str, Any]) -> str:
    response = api.post("/v1/events", body)
    assert response.status_code == 202, response.content
    return str(response.json()["data"]["id"])


def post_batch(api: ApiClient, bodies: list[dict[str, Any]]) -> list[str]:
    response = api.post("/v1/events/batch", {"events": bodies})
    assert response.status_code == 202, response.content
    slots = response.json()["data"]
    assert [slot["status"] for slot in slots] == ["pending"] * len(bodies)
    return [str(slot["id"]) for slot in slots]


def statuses(ids: list[str]) -> str:
    rows = Event.objects.filter(pk__in=ids)
    counts = Counter(rows.values_list("status", flat=True))
    errors = sorted(set(rows.exclude(last_error="").values_list("last_error", flat=True)))
    return f"statuses {dict(counts)} of {len(ids)}; errors {errors}"


def wait_completed(ids: list[str], *, timeout: float = 60.0, sweep: bool = False) -> None:
    """Until every event is completed; a `failed` one fails at once. `sweep`: run the sweep
    from here about once a second meanwhile, as Celery beat would."""
    last_sweep = 0.0

    def done() -> bool:
        nonlocal last_sweep
        events = Event.objects.filter(pk__in=ids)
        assert not events.filter(status="failed").exists(), statuses(ids)
        if sweep and time.monotonic() - last_sweep >= 1.0:
            events_sweep()
            last_sweep = time.monotonic()
        return events.filter(status="completed").count() == len(ids)

    wait_for(done, timeout=timeout, interval=0.1, message=lambda: statuses(ids))


def result_of(event: Event) -> dict[str, Any]:
    assert event.result is not None, f"event {event.pk} has no result"
    return event.result


def completions(workers: list[Worker], event_id: str) -> int:
    """How many times the workers' logs say this event was completed."""
    return sum(w.count(f"process_event: event {event_id} completed") for w in workers)


def aggregate(signal: Signal, day: datetime) -> MetricAggregate:
    return MetricAggregate.objects.get(signal=signal, period="day", bucket_start=day)


def a_past_day(days_ago: int = 2) -> datetime:
    """Midnight UTC, `days_ago` days back: a whole day of timestamps that are all accepted."""
    now = timezone.now().astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days_ago)


# --- 1. end to end ------------------------------------------------------------------------


@pytest.fixture
def three_signals(tenant: Tenant) -> tuple[Signal, Signal, Signal]:
    return (
        tenant.signal("visited-pricing", type="event", rate_limit_per_minute=UNLIMITED),
        tenant.signal(
            "seats-used",
            type="metric",
            aggregation="sum",
            period="day",
            rate_limit_per_minute=UNLIMITED,
        ),
        tenant.signal("account-health", type="state", rate_limit_per_minute=UNLIMITED),
    )


def assert_processed_by_type(
    ids: dict[str, list[str]], signals: tuple[Signal, Signal, Signal], day: datetime
) -> None:
    event_signal, metric_signal, state_signal = signals
    every = [event_id for group in ids.values() for event_id in group]
    assert Event.objects.filter(pk__in=every).count() == len(every)
    for event in Event.objects.filter(pk__in=every):
        assert event.status == "completed"
        assert event.attempts == 1
        assert event.processed_at is not None and event.last_error == ""
        assert result_of(event)["processor"] == {"name": "local", "version": "1"}

    (visit,) = Event.objects.filter(pk__in=ids["event"])
    assert result_of(visit)["signal_type"] == "event"
    assert result_of(visit)["insight"]["kind"] == "event"
    insight = Insight.objects.get(event_id=visit.pk)
    assert insight.signal_id == event_signal.pk and insight.crm_record_id == visit.crm_record_id
    assert 0 <= insight.score <= 100 and insight.summary and insight.next_action
    assert insight.reasons and insight.processor == "local"
    assert insight.summary == result_of(visit)["insight"]["summary"]
    assert visit.crm_record.engagement_mass > 0

    metrics = Event.objects.filter(pk__in=ids["metric"])
    assert all(result_of(m)["insight"] is None for m in metrics)  # no earlier periods to compare
    bucket = aggregate(metric_signal, day)
    assert (bucket.count, bucket.sum, bucket.min, bucket.max) == (2, 7.5, 3.0, 4.5)
    assert MetricAggregate.objects.filter(signal=metric_signal).count() == 1

    (status,) = Event.objects.filter(pk__in=ids["state"])
    state = RecordState.objects.get(signal=state_signal, crm_record_id=status.crm_record_id)
    assert state.value == {"status": "red"}
    assert state.event_id == status.pk and state.timestamp == status.timestamp
    assert result_of(status)["insight"]["kind"] == "state_change"
    assert Insight.objects.get(event_id=status.pk).kind == "state_change"


def test_a_worker_processes_each_signal_type_to_completion(
    start_worker: StartWorker, api: ApiClient, three_signals: tuple[Signal, Signal, Signal]
) -> None:
    event_signal, metric_signal, state_signal = three_signals
    (worker,) = start_worker()
    day = a_past_day()

    ids = {
        "event": [post_one(api, event_body(event_signal, {"page": "/pricing"}))],
        "metric": [
            post_one(api, event_body(metric_signal, {"value": 3}, at=day + timedelta(hours=1))),
            post_one(api, event_body(metric_signal, {"value": 4.5}, at=day + timedelta(hours=23))),
        ],
        "state": [post_one(api, event_body(state_signal, {"status": "red"}))],
    }
    wait_completed([i for group in ids.values() for i in group])

    assert_processed_by_type(ids, three_signals, day)
    # Single-event messages only: one per wake-up, at most one per event (an event that arrives
    # while a wake-up waits unstarted publishes nothing; events_app/pipeline/queue.py).
    assert 1 <= worker.received("events.process_event") <= 4
    assert worker.received("events.process_events") == 0


def test_a_batch_request_is_processed_from_one_message(
    start_worker: StartWorker, api: ApiClient, three_signals: tuple[Signal, Signal, Signal]
) -> None:
    event_signal, metric_signal, state_signal = three_signals
    (worker,) = start_worker()
    day = a_past_day()

    ids = post_batch(
        api,
        [
            event_body(event_signal, {"page": "/pricing"}),
            event_body(metric_signal, {"value": 3}, at=day + timedelta(minutes=5)),
            event_body(state_signal, {"status": "red"}),
            event_body(metric_signal, {"value": 4.5}, at=day + timedelta(hours=12)),
        ],
    )
    wait_completed(ids)

    assert_processed_by_type(
        {"event": ids[:1], "metric": [ids[1], ids[3]], "state": ids[2:3]}, three_signals, day
    )
    assert worker.received("events.process_events") == 1
    assert worker.received("events.process_event") == 0


# --- 2. a worker killed mid-event --------------------------------------------------------


@pytest.mark.parametrize("victim", ["pool child", "whole worker"])
def test_a_worker_killed_mid_event_loses_nothing_and_counts_nothing_twice(
    victim: str, start_worker: StartWorker, api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    # The sweep (run here) uses the workers' hard limit: a claim older than that is dead.
    settings.CELERY_TASK_TIME_LIMIT = SLOW_HARD_LIMIT
    settings.BIGMIND_SWEEP_STUCK_MARGIN_SECONDS = 0.5
    settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS = 0
    slow = {
        "BIGMIND_PROCESSOR": SLOW_PROCESSOR,
        SLOW_DELAY_ENV: str(SLOW_SECONDS),
        "CELERY_TASK_SOFT_TIME_LIMIT": str(SLOW_SOFT_LIMIT),
        "CELERY_TASK_TIME_LIMIT": str(SLOW_HARD_LIMIT),
    }
    signal = tenant.signal("api-calls", type="metric", rate_limit_per_minute=UNLIMITED)
    day = a_past_day(days_ago=1)
    # Three earlier days of 10 make every value below unusual: each one asks the (slow)
    # processor for an insight, which is the window in which the worker dies. (The earlier
    # days themselves have too little history to be unusual: they need no processor.)
    seeds = [
        post_one(api, event_body(signal, {"value": 10}, at=day - timedelta(days=n)))
        for n in (3, 2, 1)
    ]
    workers = start_worker(**slow)
    first = workers[0]
    wait_completed(seeds)

    values = [1000.0, 1250.5, 1500.25, 1750.0]
    ids = [
        post_one(api, event_body(signal, {"value": v}, at=day + timedelta(hours=i)))
        for i, v in enumerate(values)
    ]
    killed_id = wait_for(
        lambda: (
            Event.objects.filter(pk__in=ids, status="processing")
            .values_list("pk", flat=True)
            .first()
        ),
        timeout=30,
        interval=0.02,
        message=lambda: f"an event being processed; {statuses(ids)}",
    )
    if victim == "pool child":
        child = first.kill_pool_child()
        # The main process survives and replaces its pool process.
        wait_for(
            lambda: first.pool_children() and first.pool_children() != [child],
            timeout=30,
            message="a new pool process",
        )
        assert first.alive()
    else:
        first.kill_group()
        workers += start_worker(**slow)
    killed = Event.objects.get(pk=killed_id)
    assert killed.status == "processing"  # nothing of it was written

    wait_completed(ids, timeout=60, sweep=True)

    bucket = aggregate(signal, day)
    assert bucket.count == len(values)
    assert bucket.sum == sum(values)
    assert (bucket.min, bucket.max) == (min(values), max(values))
    assert Event.objects.get(pk=killed_id).attempts >= 2
    for event_id in ids:
        event = Event.objects.get(pk=event_id)
        assert result_of(event)["processor"]["name"] == "slow-local"
        assert result_of(event)["insight"]["kind"] == "metric_unusual"
        assert Insight.objects.filter(event_id=event_id).count() == 1
        assert completions(workers, event_id) == 1, event_id


# --- 3. broker unreachable at commit -------------------------------------------------------


def test_an_event_whose_publish_failed_is_processed_once_after_the_sweep(
    start_worker: StartWorker, api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS = 0
    signal = tenant.signal("visited-pricing", rate_limit_per_minute=UNLIMITED)
    (worker,) = start_worker()

    with mock.patch(
        "events_app.tasks.process_event_task.delay",
        side_effect=OperationalError("[Errno 111] Connection refused"),
    ) as publish:
        event_id = post_one(api, event_body(signal, {"page": "/pricing"}))
        # The publish is attempted after the commit, by the process's ingest writer (group
        # commit), which may be just after the answer: wait for it.
        wait_for(lambda: publish.call_count >= 1, timeout=5, message="the publish attempt")
    assert publish.call_count == 1  # attempted once, and failed
    time.sleep(1.5)  # the worker is idle: nothing reached the broker
    assert Event.objects.get(pk=event_id).status == "pending"
    assert worker.count("Task events.process") == 0

    result = events_sweep()

    assert result.requeued == 1
    wait_completed([event_id])
    event = Event.objects.get(pk=event_id)
    assert event.attempts == 1
    assert result_of(event)["insight"]["kind"] == "event"
    assert Insight.objects.filter(event_id=event_id).count() == 1
    assert completions([worker], event_id) == 1


# --- 4. metric aggregates under concurrent workers ----------------------------------------


def test_two_workers_add_every_metric_value_exactly_once(
    start_worker: StartWorker, api: ApiClient, tenant: Tenant
) -> None:
    signal = tenant.signal("seats-used", type="metric", rate_limit_per_minute=UNLIMITED)
    day = a_past_day()
    total = 200
    # Multiples of 0.25 (some negative): every partial sum is exact in a double, so the sum
    # does not depend on the order in which the workers add them.
    values = [((i * 37) % 101 - 50) * 0.25 for i in range(total)]
    bodies = [
        # Spread over the whole day, first and last second included.
        event_body(
            signal,
            {"value": value},
            at=day + timedelta(seconds=round(i * (86399 / (total - 1)))),
        )
        for i, value in enumerate(values)
    ]
    workers = start_worker(count=2)

    ids: list[str] = []
    # Batches (one message each) interleaved with single events.
    for chunk in (bodies[0:50], bodies[50:100], bodies[100:150], bodies[150:200]):
        ids += post_batch(api, chunk[:34])
        ids += [post_one(api, body) for body in chunk[34:]]
    assert len(ids) == total
    wait_completed(ids, timeout=120)

    bucket = aggregate(signal, day)
    assert bucket.count == total
    assert bucket.sum == sum(values)
    assert (bucket.min, bucket.max) == (min(values), max(values))
    assert MetricAggregate.objects.filter(signal=signal).count() == 1
    assert not Event.objects.filter(pk__in=ids, rollup__isnull=True).exists()
    # Both workers added to the same bucket, or this proved nothing about concurrency.
    done = [sum(completions([worker], event_id) for event_id in ids) for worker in workers]
    assert sum(done) == total
    assert min(done) > 0, done


# --- 5. state ordering --------------------------------------------------------------------


def test_the_newest_state_wins_whatever_order_two_workers_see_it_in(
    start_worker: StartWorker, api: ApiClient, tenant: Tenant
) -> None:
    signal = tenant.signal("account-health", type="state", rate_limit_per_minute=UNLIMITED)
    base = a_past_day() + timedelta(hours=8)
    total = 24
    bodies = [
        event_body(signal, {"status": f"step-{i}"}, at=base + timedelta(minutes=i))
        for i in range(total)
    ]
    # The newest arrives first; the rest in a shuffled order, half singly, half in one batch.
    rest = list(range(total - 1))
    random.Random(7).shuffle(rest)
    order = [total - 1, *rest]
    ids: dict[int, str] = {}
    for i in order[: total // 2]:
        ids[i] = post_one(api, bodies[i])
    batch = order[total // 2 :]
    ids.update(zip(batch, post_batch(api, [bodies[i] for i in batch]), strict=True))
    # Queued before the workers start, so that both take messages at once rather than keep
    # pace with this process's requests one at a time.
    start_worker(count=2)
    wait_completed(list(ids.values()))

    newest = Event.objects.get(pk=ids[total - 1])
    state = RecordState.objects.get(signal=signal, crm_record_id=newest.crm_record_id)
    assert state.value == {"status": f"step-{total - 1}"}
    assert (state.event_id, state.timestamp) == (newest.pk, newest.timestamp)
    assert RecordState.objects.filter(signal=signal).count() == 1

    # An event older than all of them, arriving last, is recorded but does not take over.
    before = (state.value, state.timestamp, state.event_id, state.updated_at)
    late_id = post_one(api, event_body(signal, {"status": "stale"}, at=base - timedelta(hours=1)))
    wait_completed([late_id])
    state.refresh_from_db()
    assert (state.value, state.timestamp, state.event_id, state.updated_at) == before
    late = Event.objects.get(pk=late_id)
    assert result_of(late)["rollup"]["state"]["newer"] is False
    assert result_of(late)["insight"] is None
    assert not Insight.objects.filter(event_id=late_id).exists()

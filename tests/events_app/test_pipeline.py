"""The processing pipeline in-process: claim, work by signal type, retries, sweep, reprocess.

Events are ingested through the real HTTP stack; `events_process` is what the Celery task runs,
called here directly (tests/events_app/test_worker_e2e.py runs real worker processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from events_app.models import Event, Insight, MetricAggregate, RecordState
from events_app.pipeline import completion, facts, processing
from events_app.pipeline.claims import events_claim
from events_app.pipeline.engagement import engagement_score
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import (
    InsightDraft,
    PermanentProcessingError,
    ProcessingInput,
    TransientProcessingError,
    processor_get,
)
from events_app.pipeline.reprocess import events_reprocess, events_reprocess_queryset
from events_app.pipeline.sweep import events_sweep
from tests.conftest import ApiClient, Tenant

URL = "/v1/events"
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# Nothing reaches a broker: tests that check what would have been published take the fixture.
pytestmark = pytest.mark.usefixtures("pipeline_in_process")


@pytest.fixture
def signals(tenant: Tenant) -> dict[str, Any]:
    return {
        "visit": tenant.signal(
            "visit", ai_instructions="Pricing visits matter.", rate_limit_per_minute=10000
        ),
        "calls": tenant.signal(
            "calls", type="metric", aggregation="sum", period="day", rate_limit_per_minute=10000
        ),
        "health": tenant.signal(
            "health", type="state", ai_instructions="Red needs a call.", rate_limit_per_minute=10000
        ),
    }


def ingest(
    api: ApiClient, signal: str, data: dict, at: datetime = T0, record: str = "acc-1"
) -> str:
    response = api.post(
        URL,
        {
            "signal": signal,
            "identity": {"type": "account", "id": record},
            "data": data,
            "timestamp": iso(at),
        },
    )
    assert response.status_code == 202, response.content
    return response.json()["data"]["id"]


def process(*ids: str) -> list[Event]:
    events_process(event_ids=list(ids))
    by_id = {str(e.id): e for e in Event.objects.filter(pk__in=ids)}
    return [by_id[i] for i in ids]


def profile(api: ApiClient, record: str = "acc-1") -> dict:
    response = Client().get(
        f"/v1/records/account/{record}", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 200, response.content
    return response.json()["data"]


class FakeProcessor:
    """A processor whose answer or failure each test chooses."""

    name = "fake"
    version = "7"
    wants_context = True
    calls: list[ProcessingInput] = []
    outcome: Any = None

    def insight(self, job: ProcessingInput) -> InsightDraft:
        FakeProcessor.calls.append(job)
        if isinstance(FakeProcessor.outcome, BaseException):
            raise FakeProcessor.outcome
        return FakeProcessor.outcome or InsightDraft(
            summary="fake", score=80, next_action="call", reasons=["because"]
        )


@pytest.fixture
def fake(settings) -> Iterator[type[FakeProcessor]]:
    settings.BIGMIND_PROCESSOR = f"{__name__}.FakeProcessor"
    FakeProcessor.calls = []
    FakeProcessor.outcome = None
    yield FakeProcessor


# --- event signals ----------------------------------------------------------------------------
def test_an_event_is_completed_with_an_insight_and_the_processor_recorded(
    api: ApiClient, signals
) -> None:
    [event] = process(ingest(api, "visit", {"page": "/pricing"}))

    assert event.status == "completed"
    assert event.attempts == 1
    assert event.processed_at is not None
    assert event.result["processor"] == {"name": "local", "version": "1"}
    insight = event.result["insight"]
    assert insight["kind"] == "event"
    assert "account acc-1" in insight["summary"] and "page=/pricing" in insight["summary"]
    assert 0 <= insight["score"] <= 100 and insight["next_action"] and insight["reasons"]
    stored = Insight.objects.get(event_id=event.id)
    assert (stored.summary, stored.score, stored.processor) == (
        insight["summary"],
        insight["score"],
        "local",
    )


def test_the_local_processor_is_deterministic_and_weighs_repeat_activity(
    api: ApiClient, signals
) -> None:
    first = process(ingest(api, "visit", {"page": "/a"}, at=T0))[0]
    later = [ingest(api, "visit", {"page": "/b"}, at=T0 + timedelta(hours=h)) for h in (1, 2, 3)]
    events = process(*later)

    scores = [e.result["insight"]["score"] for e in events]
    assert scores == sorted(scores) and scores[-1] > first.result["insight"]["score"]
    # Same input, same answer.
    again = events_reprocess(events=Event.objects.filter(pk=events[-1].pk))
    assert again == 1
    [reprocessed] = process(str(events[-1].id))
    assert reprocessed.result["insight"] == events[-1].result["insight"]


def test_engagement_score_rises_with_events_and_decays_with_time(api: ApiClient, signals) -> None:
    now = timezone.now()
    process(ingest(api, "visit", {"page": "/a"}, at=now))
    one = profile(api)["engagement_score"]
    process(ingest(api, "visit", {"page": "/b"}, at=now))
    two = profile(api)["engagement_score"]
    assert 0 < one < two < 100

    mass = Event.objects.first().crm_record.__class__.objects.get().engagement_mass
    in_a_month = engagement_score(mass=mass, at=now + timedelta(days=30))
    assert in_a_month < two / 3  # two half-lives and more


def test_events_processed_in_any_order_give_the_same_engagement(
    api: ApiClient, signals, make_tenant
) -> None:
    ids = [ingest(api, "visit", {"n": n}, at=T0 + timedelta(days=n)) for n in range(4)]
    for event_id in reversed(ids):
        process(event_id)
    reversed_mass = Event.objects.get(pk=ids[0]).crm_record.engagement_mass

    other = make_tenant("other")
    other.signal("visit", ai_instructions="Pricing visits matter.", rate_limit_per_minute=10000)
    other_api = ApiClient(other.raw_key)
    other_ids = [ingest(other_api, "visit", {"n": n}, at=T0 + timedelta(days=n)) for n in range(4)]
    # Scores depend on earlier events (context), so process in timestamp order in both: what
    # must match is the sum, not the order in which workers add to it.
    process(*other_ids)
    assert reversed_mass > 0
    assert Event.objects.get(pk=other_ids[0]).crm_record.engagement_mass > 0


# --- metric signals ---------------------------------------------------------------------------
def test_metric_values_are_aggregated_per_period_bucket(api: ApiClient, signals) -> None:
    day2 = T0 + timedelta(days=1)
    process(
        ingest(api, "calls", {"value": 5}, at=T0),
        ingest(api, "calls", {"value": 7.5}, at=T0 + timedelta(hours=3)),
        ingest(api, "calls", {"value": 2}, at=day2),
    )
    buckets = {b.bucket_start: b for b in MetricAggregate.objects.filter(signal=signals["calls"])}
    first = buckets[datetime(2026, 3, 10, tzinfo=UTC)]
    assert (first.count, first.sum, first.min, first.max) == (2, 12.5, 5.0, 7.5)
    second = buckets[datetime(2026, 3, 11, tzinfo=UTC)]
    assert (second.count, second.sum) == (1, 2.0)

    [series] = profile(api)["aggregates"]
    assert series["signal"] == "calls" and series["aggregation"] == "sum"
    assert [(b["start"], b["value"]) for b in series["buckets"]] == [
        ("2026-03-11T00:00:00Z", 2.0),
        ("2026-03-10T00:00:00Z", 12.5),
    ]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("sum", 12.0), ("count", 3), ("avg", 4.0), ("min", 1.0), ("max", 8.0)],
)
def test_each_aggregation_reads_from_the_same_bucket(
    api: ApiClient, tenant: Tenant, aggregation: str, expected: float
) -> None:
    tenant.signal("m", type="metric", aggregation=aggregation, period="hour")
    process(*(ingest(api, "m", {"value": v}) for v in (3, 1, 8)))
    [series] = profile(api)["aggregates"]
    assert series["period"] == "hour"
    assert series["buckets"][0]["value"] == expected
    assert series["buckets"][0]["start"] == "2026-03-10T12:00:00Z"


def test_week_and_month_buckets_start_on_monday_and_the_first(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("w", type="metric", aggregation="sum", period="week")
    tenant.signal("mo", type="metric", aggregation="sum", period="month")
    process(ingest(api, "w", {"value": 1}), ingest(api, "mo", {"value": 1}))  # a Tuesday
    starts = dict(MetricAggregate.objects.values_list("period", "bucket_start"))
    assert starts == {
        "week": datetime(2026, 3, 9, tzinfo=UTC),
        "month": datetime(2026, 3, 1, tzinfo=UTC),
    }


def test_a_metric_reads_the_signals_value_field(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("calls2", type="metric", aggregation="sum", period="day", value_field="n")
    process(ingest(api, "calls2", {"n": 4, "value": 100}))
    assert MetricAggregate.objects.get().sum == 4.0


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"other": 1}, "Metric value field 'value' is missing from data"),
        ({"value": "12"}, "Metric value field 'value' must be a number, got str"),
        ({"value": True}, "Metric value field 'value' must be a number, got bool"),
        ({"value": None}, "Metric value field 'value' must be a number, got NoneType"),
    ],
)
def test_a_metric_without_a_numeric_value_fails_at_once_with_a_clear_error(
    api: ApiClient, signals, data: dict, error: str
) -> None:
    [event] = process(ingest(api, "calls", data))
    assert event.status == "failed"
    assert event.attempts == 1
    assert event.last_error == error
    assert not MetricAggregate.objects.exists()


def test_an_unusual_metric_value_gets_an_insight_and_a_usual_one_does_not(
    api: ApiClient, signals
) -> None:
    for day, value in enumerate([10, 12, 11, 13]):
        process(ingest(api, "calls", {"value": value}, at=T0 + timedelta(days=day)))
    assert not Insight.objects.exists()  # no history yet, then usual values

    usual, spike, drop = process(
        ingest(api, "calls", {"value": 12}, at=T0 + timedelta(days=4)),
        ingest(api, "calls", {"value": 90}, at=T0 + timedelta(days=5)),
        ingest(api, "calls", {"value": -50}, at=T0 + timedelta(days=6)),
    )
    assert usual.result["insight"] is None
    assert spike.result["insight"]["kind"] == "metric_unusual"
    assert "above the usual range 10 to 13" in spike.result["insight"]["summary"]
    assert "below the usual range" in drop.result["insight"]["summary"]
    assert spike.rollup["metric"]["unusual"]["direction"] == "above"
    assert Insight.objects.count() == 2


def test_metric_history_needs_three_earlier_periods(api: ApiClient, signals) -> None:
    for day, value in enumerate([10, 11]):
        process(ingest(api, "calls", {"value": value}, at=T0 + timedelta(days=day)))
    [event] = process(ingest(api, "calls", {"value": 1000}, at=T0 + timedelta(days=2)))
    assert event.result["insight"] is None


# --- state signals ----------------------------------------------------------------------------
def test_a_newer_state_replaces_the_older_and_a_change_gets_an_insight(
    api: ApiClient, signals
) -> None:
    first, same, changed = process(
        ingest(api, "health", {"state": "green"}, at=T0),
        ingest(api, "health", {"state": "green"}, at=T0 + timedelta(hours=1)),
        ingest(api, "health", {"state": "red"}, at=T0 + timedelta(hours=2)),
    )
    assert first.result["insight"]["summary"] == "Health for account acc-1 is green"
    assert same.result["insight"] is None
    assert changed.result["insight"]["summary"] == (
        "Health for account acc-1 changed from green to red"
    )
    assert changed.result["insight"]["score"] >= 80  # 'red' is trouble and in the instructions
    state = RecordState.objects.get()
    assert state.value == {"state": "red"} and state.event_id == changed.id
    [shown] = profile(api)["states"]
    assert shown["value"] == {"state": "red"} and shown["event_id"] == str(changed.id)


def test_an_older_state_arriving_late_never_overwrites_a_newer_one(api: ApiClient, signals) -> None:
    newest = ingest(api, "health", {"state": "red"}, at=T0 + timedelta(hours=5))
    process(newest)
    late = process(ingest(api, "health", {"state": "green"}, at=T0))[0]

    assert late.status == "completed"
    assert late.result["rollup"]["state"]["newer"] is False
    assert late.result["insight"] is None
    assert RecordState.objects.get().value == {"state": "red"}


def test_states_in_shuffled_order_end_on_the_latest_timestamp(api: ApiClient, signals) -> None:
    hours = [3, 0, 7, 1, 5, 2]
    ids = {h: ingest(api, "health", {"state": f"s{h}"}, at=T0 + timedelta(hours=h)) for h in hours}
    for h in hours:
        process(ids[h])
    state = RecordState.objects.get()
    assert state.value == {"state": "s7"}
    assert str(state.event_id) == ids[7]


def test_equal_timestamps_are_ordered_by_event_id(api: ApiClient, signals) -> None:
    a = ingest(api, "health", {"state": "a"})
    b = ingest(api, "health", {"state": "b"})  # same timestamp, later UUIDv7
    process(b)
    process(a)
    assert RecordState.objects.get().value == {"state": "b"}


def test_a_state_moved_by_another_worker_meanwhile_is_worked_out_again(
    api: ApiClient, signals
) -> None:
    process(ingest(api, "health", {"state": "green"}, at=T0))
    event_id = ingest(api, "health", {"state": "red"}, at=T0 + timedelta(hours=2))
    original = facts.record_states_current
    moves = iter([True])

    def read_then_move(**kwargs: Any) -> Any:
        current = original(**kwargs)
        if next(moves, False):
            # Another worker lands a state newer than the stored one, older than ours.
            RecordState.objects.update(value={"state": "yellow"}, timestamp=T0 + timedelta(hours=1))
        return current

    with mock.patch.object(facts, "record_states_current", side_effect=read_then_move):
        [event] = process(event_id)
    # Worked out again within the same attempt, against the state that was really replaced.
    assert (event.status, event.attempts) == ("completed", 1)
    assert event.result["insight"]["summary"].endswith("from yellow to red")
    assert event.rollup["state"]["previous"] == {"state": "yellow"}
    assert RecordState.objects.get().value == {"state": "red"}


def test_a_state_that_keeps_moving_is_retried_as_a_transient_failure(
    api: ApiClient, signals
) -> None:
    process(ingest(api, "health", {"state": "green"}, at=T0))
    event_id = ingest(api, "health", {"state": "red"}, at=T0 + timedelta(hours=2))
    original = facts.record_states_current
    minutes = iter(range(1, 100))

    def read_then_move(**kwargs: Any) -> Any:
        current = original(**kwargs)
        minute = next(minutes)
        RecordState.objects.update(
            value={"state": f"v{minute}"}, timestamp=T0 + timedelta(minutes=minute)
        )
        return current

    with mock.patch.object(facts, "record_states_current", side_effect=read_then_move):
        [event] = process(event_id)
    assert (event.status, event.attempts) == ("pending", 1)
    assert "state changed while" in event.last_error

    Event.objects.filter(pk=event_id).update(due_at=None)
    [event] = process(event_id)
    assert event.status == "completed"
    assert RecordState.objects.get().value == {"state": "red"}


def test_an_older_state_is_not_retried_when_the_state_moves_meanwhile(
    api: ApiClient, signals
) -> None:
    process(ingest(api, "health", {"state": "green"}, at=T0 + timedelta(hours=5)))
    event_id = ingest(api, "health", {"state": "red"}, at=T0)
    original = facts.record_states_current

    def read_then_move(**kwargs: Any) -> Any:
        current = original(**kwargs)
        RecordState.objects.update(timestamp=T0 + timedelta(hours=6))
        return current

    with mock.patch.object(facts, "record_states_current", side_effect=read_then_move):
        [event] = process(event_id)
    assert (event.status, event.attempts) == ("completed", 1)
    assert event.result["insight"] is None


# --- delivery ---------------------------------------------------------------------------------
def test_a_redelivered_message_does_nothing_once_the_event_is_completed(
    api: ApiClient, signals
) -> None:
    event_id = ingest(api, "calls", {"value": 5})
    process(event_id)
    process(event_id)
    process(event_id, event_id)
    event = Event.objects.get(pk=event_id)
    assert (event.status, event.attempts) == ("completed", 1)
    assert MetricAggregate.objects.get().count == 1


def test_only_one_claim_wins(api: ApiClient, signals) -> None:
    event_id = ingest(api, "visit", {})
    first = events_claim(event_ids=[event_id])
    second = events_claim(event_ids=[event_id])
    assert [str(c.event_id) for c in first] == [event_id] and first[0].attempt == 1
    assert second == []


def test_a_worker_that_lost_its_claim_writes_nothing(api: ApiClient, signals, fake) -> None:
    event_id = ingest(api, "calls", {"value": 5})
    [stale] = events_claim(event_ids=[event_id])
    # The sweep gave the event to another worker, which claimed it again.
    Event.objects.filter(pk=event_id).update(status="pending", claimed_at=None)
    [fresh] = events_claim(event_ids=[event_id])

    processing.chunk_run([stale], processor_get())
    event = Event.objects.get(pk=event_id)
    assert (event.status, event.claimed_at) == ("processing", fresh.claimed_at)
    assert not MetricAggregate.objects.exists()


def test_a_transient_error_is_retried_with_backoff_then_fails_after_the_last_try(
    api: ApiClient, signals, fake, settings, pipeline_in_process
) -> None:
    settings.BIGMIND_PROCESSING_MAX_ATTEMPTS = 3
    fake.outcome = TransientProcessingError("AI endpoint answered 503")
    event_id = ingest(api, "visit", {})

    before = timezone.now()
    [event] = process(event_id)
    assert (event.status, event.attempts) == ("pending", 1)
    assert event.last_error == "AI endpoint answered 503"
    assert event.due_at > before
    _, kwargs = pipeline_in_process.later.call_args
    assert 1.0 <= kwargs["countdown"] <= 2.0  # base 2 s, half fixed, half jitter

    process(event_id)
    _, kwargs = pipeline_in_process.later.call_args
    assert 2.0 <= kwargs["countdown"] <= 4.0
    [event] = process(event_id)
    assert (event.status, event.attempts) == ("failed", 3)
    assert event.last_error == "AI endpoint answered 503 (gave up after 3 attempts)"
    assert pipeline_in_process.later.call_count == 2


def test_backoff_is_capped(settings) -> None:
    settings.BIGMIND_RETRY_BACKOFF_MAX_SECONDS = 10
    delays = [completion.retry_delay(n) for n in range(1, 30)]
    assert all(0 < d <= 10 for d in delays)
    assert min(delays[5:]) >= 5


def test_a_permanent_processor_error_fails_at_once(api: ApiClient, signals, fake) -> None:
    fake.outcome = PermanentProcessingError("AI endpoint answered 401")
    [event] = process(ingest(api, "visit", {}))
    assert (event.status, event.attempts, event.last_error) == (
        "failed",
        1,
        "AI endpoint answered 401",
    )
    assert not Insight.objects.exists()


def test_an_unexpected_exception_fails_the_event_with_its_name(
    api: ApiClient, signals, fake
) -> None:
    fake.outcome = ZeroDivisionError("boom")
    [event] = process(ingest(api, "visit", {}))
    assert event.status == "failed"
    assert event.last_error == "Internal error: ZeroDivisionError: boom"


def test_the_processor_gets_the_signal_event_facts_and_context(
    api: ApiClient, signals, fake
) -> None:
    process(ingest(api, "health", {"state": "green"}, at=T0))
    process(ingest(api, "visit", {"page": "/x"}, at=T0 + timedelta(hours=1)))
    fake.calls.clear()
    process(ingest(api, "health", {"state": "red"}, at=T0 + timedelta(hours=2)))

    [job] = fake.calls
    assert job.kind == "state_change"
    assert job.signal.ai_instructions == "Red needs a call." and job.signal.type == "state"
    assert job.event.data == {"state": "red"} and job.event.identity_id == "acc-1"
    assert job.facts == {"previous": {"state": "green"}, "current": {"state": "red"}}
    assert job.context.events_7d == 2 and job.context.signal_events_7d == 1
    assert job.context.states == {"health": {"state": "green"}}
    assert [i["signal"] for i in job.context.recent_insights] == ["visit", "health"]
    stored = Insight.objects.filter(kind="state_change").latest("occurred_at")
    assert (stored.processor, stored.processor_version) == ("fake", "7")


def test_a_batch_that_runs_out_of_time_hands_the_rest_back(
    api: ApiClient, signals, pipeline_in_process, settings
) -> None:
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 1  # the budget is checked between chunks
    ids = [ingest(api, "visit", {"n": n}) for n in range(3)]
    ticks = iter([0.0, 0.0, 10.0, 10.0, 10.0])
    with mock.patch.object(processing.time, "monotonic", side_effect=lambda: next(ticks)):
        events_process(event_ids=ids, time_budget=5.0)
    statuses = list(
        Event.objects.filter(pk__in=ids).order_by("pk").values_list("status", "attempts")
    )
    assert statuses == [("completed", 1), ("pending", 0), ("pending", 0)]
    [(args, _)] = pipeline_in_process.many.call_args_list
    assert args[0] == ids[1:]


def test_malformed_ids_in_a_message_are_ignored(api: ApiClient, signals) -> None:
    event_id = ingest(api, "visit", {})
    events_process(event_ids=["not-a-uuid", event_id, "00000000-0000-0000-0000-000000000000"])
    assert Event.objects.get(pk=event_id).status == "completed"


# --- sweep ------------------------------------------------------------------------------------
def test_the_sweep_requeues_pending_events_left_behind_once_per_interval(
    api: ApiClient, signals, settings, pipeline_in_process
) -> None:
    settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS = 60
    old = ingest(api, "visit", {"n": 1})
    fresh = ingest(api, "visit", {"n": 2})
    now = timezone.now()
    Event.objects.filter(pk=old).update(received_at=now - timedelta(minutes=5))

    assert events_sweep(now=now).requeued == 1
    [(args, _)] = pipeline_in_process.many.call_args_list
    assert args[0] == [old]
    # Queued again only after another interval, however long the queue is.
    assert Event.objects.get(pk=fresh).due_at is None
    assert events_sweep(now=now + timedelta(seconds=30)).requeued == 0
    # A minute on, both: the first once more, the second now old enough.
    assert events_sweep(now=now + timedelta(seconds=61)).requeued == 2


def test_the_sweep_requeues_a_retry_whose_message_was_lost(
    api: ApiClient, signals, fake, settings, pipeline_in_process
) -> None:
    settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS = 60
    fake.outcome = TransientProcessingError("flaky")
    event_id = ingest(api, "visit", {})
    process(event_id)
    due = Event.objects.get(pk=event_id).due_at
    assert events_sweep(now=due + timedelta(seconds=30)).requeued == 0
    assert events_sweep(now=due + timedelta(seconds=61)).requeued == 1


def test_the_sweep_returns_events_stuck_in_processing_and_fails_them_after_the_last_try(
    api: ApiClient, signals, settings, pipeline_in_process
) -> None:
    settings.CELERY_TASK_TIME_LIMIT = 90
    settings.BIGMIND_SWEEP_STUCK_MARGIN_SECONDS = 30
    settings.BIGMIND_PROCESSING_MAX_ATTEMPTS = 2
    event_id = ingest(api, "calls", {"value": 3})
    [claim] = events_claim(event_ids=[event_id])  # the worker then dies

    assert events_sweep(now=claim.claimed_at + timedelta(seconds=100)).unstuck == 0
    result = events_sweep(now=claim.claimed_at + timedelta(seconds=121))
    assert (result.unstuck, result.requeued) == (1, 1)
    event = Event.objects.get(pk=event_id)
    assert event.status == "pending" and "stopped before finishing" in event.last_error

    [claim] = events_claim(event_ids=[event_id])  # dies again: the last try
    result = events_sweep(now=claim.claimed_at + timedelta(seconds=121))
    assert (result.failed, result.requeued) == (1, 0)
    event = Event.objects.get(pk=event_id)
    assert event.status == "failed" and "gave up after 2 attempts" in event.last_error
    assert not MetricAggregate.objects.exists()


def test_a_worker_finishing_late_after_the_sweep_took_its_event_writes_nothing(
    api: ApiClient, signals, settings
) -> None:
    event_id = ingest(api, "calls", {"value": 3})
    [claim] = events_claim(event_ids=[event_id])
    events_sweep(now=claim.claimed_at + timedelta(hours=1))
    process(event_id)  # the new worker
    assert MetricAggregate.objects.get().count == 1

    processing.chunk_run([claim], processor_get())  # the old one wakes up
    assert MetricAggregate.objects.get().count == 1


# --- reprocessing -----------------------------------------------------------------------------
def test_reprocessing_never_counts_rollups_twice(api: ApiClient, signals) -> None:
    ids = [
        ingest(api, "calls", {"value": 5}),
        ingest(api, "health", {"state": "red"}),
        ingest(api, "visit", {"page": "/x"}),
    ]
    process(*ids)
    mass = Event.objects.get(pk=ids[2]).crm_record.engagement_mass
    insights = dict(Insight.objects.values_list("event_id", "summary"))

    for _ in range(2):
        assert events_reprocess(events=Event.objects.filter(pk__in=ids)) == 3
        assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"pending"}
        process(*ids)

    bucket = MetricAggregate.objects.get()
    assert (bucket.count, bucket.sum) == (1, 5.0)
    assert RecordState.objects.get().value == {"state": "red"}
    record = Event.objects.get(pk=ids[2]).crm_record
    assert record.engagement_mass == pytest.approx(mass)
    assert dict(Insight.objects.values_list("event_id", "summary")) == insights
    assert Insight.objects.count() == 2  # the metric value was not unusual


def test_reprocessing_with_another_processor_swaps_the_engagement_weight(
    api: ApiClient, signals, settings
) -> None:
    event_id = ingest(api, "visit", {})
    process(event_id)
    local_mass = Event.objects.get(pk=event_id).crm_record.engagement_mass
    local_weight = Event.objects.get(pk=event_id).rollup["engagement"]["weight"]

    settings.BIGMIND_PROCESSOR = f"{__name__}.FakeProcessor"
    processor_get.cache_clear()
    FakeProcessor.outcome = None  # score 80
    events_reprocess(events=Event.objects.filter(pk=event_id))
    [event] = process(event_id)
    assert event.rollup["engagement"] == {"weight": 0.8}
    assert event.crm_record.engagement_mass == pytest.approx(local_mass / local_weight * 0.8)
    assert Insight.objects.get(event_id=event_id).processor == "fake"


def test_a_failed_event_reprocessed_after_a_fix_completes(api: ApiClient, signals, fake) -> None:
    fake.outcome = PermanentProcessingError("bad config")
    event_id = ingest(api, "visit", {})
    process(event_id)
    fake.outcome = None
    assert events_reprocess(events=events_reprocess_queryset(status="failed")) == 1
    [event] = process(event_id)
    assert (event.status, event.attempts, event.last_error) == ("completed", 1, "")


def test_reprocessing_leaves_events_in_progress_alone(api: ApiClient, signals) -> None:
    event_id = ingest(api, "visit", {})
    events_claim(event_ids=[event_id])
    assert events_reprocess(events=Event.objects.all()) == 0
    assert Event.objects.get(pk=event_id).status == "processing"


def test_the_reprocess_command_filters_counts_and_queues(
    api: ApiClient, signals, capsys, pipeline_in_process, django_capture_on_commit_callbacks
) -> None:
    ids = [ingest(api, "visit", {"n": n}) for n in range(3)] + [ingest(api, "calls", {"value": 1})]
    process(*ids)

    call_command("reprocess_events", "--signal", "visit", "--dry-run")
    assert (
        capsys.readouterr().out.strip()
        == "3 event(s) would be reprocessed (dry run, nothing changed)"
    )
    assert set(Event.objects.values_list("status", flat=True)) == {"completed"}

    with django_capture_on_commit_callbacks(execute=True):
        call_command("reprocess_events", "--signal", "visit", "--status", "completed")
    captured = capsys.readouterr()
    assert captured.out.strip() == "3 event(s) queued for reprocessing"
    assert "3/3" in captured.err  # the progress bar
    assert Event.objects.filter(status="pending").count() == 3
    [(args, _)] = pipeline_in_process.many.call_args_list
    assert sorted(args[0]) == sorted(ids[:3])


def test_the_reprocess_command_refuses_a_time_without_zone(db) -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="--since must be an ISO 8601 time with a zone"):
        call_command("reprocess_events", "--since", "2026-01-01")


# --- record profile ---------------------------------------------------------------------------
def test_a_new_record_profile_has_empty_rollups_and_zero_engagement(
    api: ApiClient, signals
) -> None:
    ingest(api, "visit", {})
    data = profile(api)
    assert (data["states"], data["aggregates"], data["insights"]) == ([], [], [])
    assert data["engagement_score"] == 0.0


def test_the_profile_lists_the_latest_insights_newest_first(api: ApiClient, signals) -> None:
    ids = [ingest(api, "visit", {"n": n}, at=T0 + timedelta(minutes=n)) for n in range(12)]
    process(*ids)
    insights = profile(api)["insights"]
    assert len(insights) == 10
    assert [i["event_id"] for i in insights] == list(reversed(ids))[:10]
    assert insights[0]["processor"] == {"name": "local", "version": "1"}


def test_another_organizations_rollups_never_show(api: ApiClient, signals, make_tenant) -> None:
    process(ingest(api, "calls", {"value": 5}))
    other = make_tenant("other")
    response = Client().get(
        "/v1/records/account/acc-1", headers={"Authorization": f"Bearer {other.raw_key}"}
    )
    assert response.status_code == 404


# --- admin --------------------------------------------------------------------------------
def test_staff_reprocess_events_from_the_admin_without_double_counting(
    api: ApiClient, signals, staff: Client, pipeline_in_process, django_capture_on_commit_callbacks
) -> None:
    ids = [ingest(api, "calls", {"value": 5}), ingest(api, "visit", {})]
    process(*ids)
    in_progress = ingest(api, "visit", {"n": 2})
    events_claim(event_ids=[in_progress])

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/events_app/event/",
            {"action": "reprocess", "_selected_action": [*ids, in_progress]},
            follow=True,
        )
    assert response.status_code == 200
    text = response.content.decode()
    assert "2 events queued for reprocessing." in text and "1 skipped" in text
    [(args, _)] = pipeline_in_process.many.call_args_list
    assert sorted(args[0]) == sorted(ids)

    process(*ids)
    assert MetricAggregate.objects.get().count == 1
    assert staff.get(f"/admin/events_app/insight/?q={ids[1]}").status_code == 200
    assert staff.get("/admin/events_app/metricaggregate/").status_code == 200
    assert staff.get("/admin/events_app/recordstate/").status_code == 200


def test_a_processor_that_cannot_be_built_claims_nothing(api: ApiClient, signals, settings) -> None:
    settings.BIGMIND_PROCESSOR = "no.such.Processor"
    event_id = ingest(api, "visit", {})
    with pytest.raises(ImportError):
        events_process(event_ids=[event_id])
    event = Event.objects.get(pk=event_id)
    assert (event.status, event.attempts) == ("pending", 0)


@pytest.mark.django_db(transaction=True)
def test_concurrent_workers_add_every_metric_value_exactly_once(
    api: ApiClient, signals, settings
) -> None:
    """Threads with their own connections process events of one bucket at the same time."""
    import threading

    from django.db import connection as default_connection

    if default_connection.vendor != "postgresql":
        pytest.skip("SQLite serialises writers; the race needs PostgreSQL")
    values = [n * 1.5 for n in range(1, 61)]
    ids = [ingest(api, "calls", {"value": v}) for v in values]
    chunks = [ids[i::4] for i in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        from django.db import connection

        try:
            barrier.wait()
            for event_id in chunk:
                events_process(event_ids=[event_id])
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(Event.objects.values_list("status", flat=True)) == {"completed"}
    bucket = MetricAggregate.objects.get()
    assert (bucket.count, bucket.sum, bucket.min, bucket.max) == (60, sum(values), 1.5, 90.0)


# --- review regressions -------------------------------------------------------------------
class WorkerKilled(BaseException):
    """A SIGKILL as seen from inside: nothing after it runs, nothing catches it."""


class PoisonProcessor:
    """The local processor, but the worker dies on one chosen event."""

    name = "poison"
    version = "1"
    wants_context = False
    max_chunk_size = 100
    poison = ""

    def insight(self, job: ProcessingInput) -> InsightDraft:
        if job.event.id == PoisonProcessor.poison:
            raise WorkerKilled
        return InsightDraft(summary="ok", score=50, next_action="none", reasons=["ok"])


def test_a_worker_dying_mid_chunk_charges_that_chunk_once_then_the_culprit_goes_alone(
    api: ApiClient, signals, settings, pipeline_in_process
) -> None:
    """A chunk is one unit of work: a death charges each of its events an attempt, and no event
    of any other chunk. Claimed again, those events go one at a time (a chunk takes only first
    attempts), so the one that kills its worker uses up only its own attempts."""
    settings.BIGMIND_PROCESSING_MAX_ATTEMPTS = 2
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 3
    settings.BIGMIND_PROCESSOR = f"{__name__}.PoisonProcessor"
    ids = [ingest(api, "visit", {"n": n}) for n in range(5)]
    PoisonProcessor.poison = ids[1]

    def attempts() -> list[tuple[str, int]]:
        by_id = {str(e.pk): (e.status, e.attempts) for e in Event.objects.filter(pk__in=ids)}
        return [by_id[i] for i in ids]

    with pytest.raises(WorkerKilled):
        events_process(event_ids=ids)  # the chunk ids[0:3] dies; ids[3:] never claimed
    assert attempts() == [("processing", 1)] * 3 + [("pending", 0)] * 2
    events_sweep(now=timezone.now() + timedelta(hours=1))

    with pytest.raises(WorkerKilled):
        events_process(event_ids=ids)  # ids[3:] as a chunk; then ids[0], then ids[1] dies
    assert attempts() == [
        ("completed", 2),
        ("processing", 2),
        ("pending", 1),
        ("completed", 1),
        ("completed", 1),
    ]
    events_sweep(now=timezone.now() + timedelta(hours=1))
    events_process(event_ids=ids)
    assert attempts() == [
        ("completed", 2),
        ("failed", 2),
        ("completed", 2),
        ("completed", 1),
        ("completed", 1),
    ]
    assert "gave up after 2 attempts" in Event.objects.get(pk=ids[1]).last_error


def test_a_batch_counts_one_attempt_per_event_it_processes(api: ApiClient, signals) -> None:
    ids = [ingest(api, "visit", {"n": n}) for n in range(3)]
    events = process(*ids)
    assert [(e.status, e.attempts) for e in events] == [("completed", 1)] * 3


def test_reprocessing_after_a_signal_changes_type_applies_each_rollup_once(
    api: ApiClient, signals
) -> None:
    from signals_app.models import Signal

    event_id = ingest(api, "visit", {"state": "red"})
    process(event_id)
    record = Event.objects.get(pk=event_id).crm_record
    mass = type(record).objects.get(pk=record.pk).engagement_mass

    for new_type in ("state", "event", "state", "event"):
        Signal.objects.filter(pk=signals["visit"].pk).update(type=new_type)
        events_reprocess(events=Event.objects.filter(pk=event_id))
        [event] = process(event_id)
        assert event.status == "completed"

    assert RecordState.objects.get().value == {"state": "red"}
    assert type(record).objects.get(pk=record.pk).engagement_mass == pytest.approx(mass)
    assert set(event.rollup) == {"engagement", "state"}


def test_a_metric_value_too_large_to_sum_exactly_fails_with_a_clear_error(
    api: ApiClient, signals
) -> None:
    [event] = process(ingest(api, "calls", {"value": 1e308}))
    assert event.status == "failed"
    assert event.last_error == (
        "Metric value field 'value' is out of range (at most 1e+15 in magnitude)"
    )
    [ok] = process(ingest(api, "calls", {"value": -1e15}))
    assert ok.status == "completed"


def test_an_event_from_the_first_week_of_year_one_is_processed(api: ApiClient, signals) -> None:
    first_week = datetime(1, 1, 3, tzinfo=UTC)
    events = process(
        ingest(api, "visit", {}, at=first_week),
        ingest(api, "health", {"state": "red"}, at=first_week),
        ingest(api, "calls", {"value": 1}, at=first_week),
    )
    assert [e.status for e in events] == ["completed"] * 3


def test_an_empty_state_label_is_not_read_as_named_in_the_instructions(
    api: ApiClient, signals
) -> None:
    [event] = process(ingest(api, "health", {"state": ""}))
    assert not any("instructions mention" in r for r in event.result["insight"]["reasons"])
    [event] = process(ingest(api, "health", {"state": "Red"}, at=T0 + timedelta(hours=1)))
    assert any("instructions mention 'Red'" in r for r in event.result["insight"]["reasons"])


def test_the_admin_counts_skipped_events_before_reprocessing_moves_them(
    api: ApiClient, signals, staff: Client, pipeline_in_process
) -> None:
    ids = [ingest(api, "visit", {"n": n}) for n in range(2)]
    process(*ids)
    response = staff.post(
        "/admin/events_app/event/?status__exact=completed",
        {"action": "reprocess", "_selected_action": ids},
        follow=True,
    )
    text = response.content.decode()
    assert "2 events queued for reprocessing." in text and "skipped" not in text


def test_the_sweep_leaves_the_backoff_of_an_event_that_failed_meanwhile(
    api: ApiClient, signals, settings, pipeline_in_process
) -> None:
    settings.BIGMIND_SWEEP_PENDING_AFTER_SECONDS = 60
    event_id = ingest(api, "visit", {})
    now = timezone.now()
    Event.objects.filter(pk=event_id).update(received_at=now - timedelta(minutes=5))
    backoff_until = now + timedelta(minutes=4)

    def fail_meanwhile(*, event_ids: list, received_at: list) -> int:
        Event.objects.filter(pk=event_id).update(due_at=backoff_until)
        return len(event_ids)

    with mock.patch("events_app.pipeline.sweep.events_enqueue", side_effect=fail_meanwhile):
        assert events_sweep(now=now).requeued == 1
    assert Event.objects.get(pk=event_id).due_at == backoff_until


def test_each_status_change_is_kept_in_the_events_history(
    api: ApiClient, signals, fake, settings, pipeline_in_process
) -> None:
    fake.outcome = TransientProcessingError("AI endpoint answered 503")
    event_id = ingest(api, "visit", {})
    process(event_id)
    fake.outcome = None
    Event.objects.filter(pk=event_id).update(due_at=None)
    process(event_id)
    events_reprocess(events=Event.objects.filter(pk=event_id))
    process(event_id)

    history = list(
        Event.objects.get(pk=event_id)
        .transitions.order_by("at", "id")
        .values_list("status", "attempt", "note")
    )
    assert [(s, a) for s, a, _ in history] == [
        ("processing", 1),
        ("pending", 1),
        ("processing", 2),
        ("completed", 2),
        ("pending", 0),
        ("processing", 1),
        ("completed", 1),
    ]
    assert history[1][2].startswith("retry in ") and "503" in history[1][2]
    assert history[4][2] == "reprocess requested"


def test_a_batch_records_history_only_for_events_it_started(
    api: ApiClient, signals, pipeline_in_process, settings
) -> None:
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 1  # the budget is checked between chunks
    ids = [ingest(api, "visit", {"n": n}) for n in range(3)]
    ticks = iter([0.0, 0.0, 10.0, 10.0, 10.0])
    with mock.patch.object(processing.time, "monotonic", side_effect=lambda: next(ticks)):
        events_process(event_ids=ids, time_budget=5.0)
    counts = [Event.objects.get(pk=i).transitions.count() for i in ids]
    assert sorted(counts) == [0, 0, 2]


def test_the_sweep_writes_why_it_moved_an_event(
    api: ApiClient, signals, pipeline_in_process
) -> None:
    event_id = ingest(api, "visit", {})
    [claim] = events_claim(event_ids=[event_id])
    events_sweep(now=claim.claimed_at + timedelta(hours=1))
    last = Event.objects.get(pk=event_id).transitions.order_by("at", "id").last()
    assert last.status == "pending" and "stopped before finishing" in last.note

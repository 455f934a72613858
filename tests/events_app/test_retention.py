"""Retention: expired events and metric buckets are deleted in chunks, and nothing they added up
to (states, buckets, engagement, the record profile) changes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events_app.models import (
    CrmRecord,
    Event,
    EventStatus,
    EventTransition,
    Insight,
    MetricAggregate,
    PurgedEventCount,
    RecordState,
)
from events_app.pipeline.processing import events_process
from events_app.pipeline.reprocess import events_reprocess
from events_app.retention import retention_cutoffs, retention_purge
from events_app.tasks import purge_task
from signals_app.models import Signal
from tests.conftest import ApiClient, Tenant

DAY = timedelta(days=1)


def send(api: ApiClient, signal: str, data: dict[str, Any], **fields: Any) -> str:
    body = {"signal": signal, "identity": {"type": "account", "id": "A1"}, "data": data} | fields
    response = api.post("/v1/events", body)
    assert response.status_code == 202, response.content
    return str(response.json()["data"]["id"])


def age(event_ids: list[str], days: float) -> None:
    """Make these events look received `days` ago."""
    Event.objects.filter(pk__in=event_ids).update(received_at=timezone.now() - days * DAY)


def profile(api: ApiClient) -> dict[str, Any]:
    response = api.client.get(
        "/v1/records/account/A1", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 200, response.content
    return response.json()["data"]


def rollups() -> dict[str, Any]:
    """Everything the record's events added up to, as stored."""
    return {
        "states": list(
            RecordState.objects.order_by("pk").values("signal_id", "value", "timestamp", "event_id")
        ),
        "buckets": list(
            MetricAggregate.objects.order_by("pk").values(
                "signal_id", "period", "bucket_start", "count", "sum", "min", "max"
            )
        ),
        "engagement": list(
            CrmRecord.objects.order_by("pk").values_list("engagement_mass", flat=True)
        ),
        "insights": list(
            Insight.objects.order_by("event_id").values("event_id", "summary", "score", "kind")
        ),
    }


@pytest.fixture
def signals(tenant: Tenant) -> dict[str, Signal]:
    return {
        "visit": tenant.signal("visit"),
        "calls": tenant.signal("calls", type="metric"),
        "health": tenant.signal("health", type="state"),
    }


@pytest.fixture
def settings_short(settings: Any) -> Any:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 10
    settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS = 30
    settings.BIGMIND_IDEMPOTENCY_KEY_RETENTION_DAYS = 30
    settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS = 0
    settings.BIGMIND_RETENTION_CHUNK_SIZE = 1000
    return settings


def completed_events(api: ApiClient, count: int, signal: str = "visit", **fields: Any) -> list[str]:
    ids = [send(api, signal, {"n": n, "value": n}, **fields) for n in range(count)]
    events_process(event_ids=ids)
    assert Event.objects.filter(pk__in=ids, status=EventStatus.COMPLETED).count() == count
    return ids


# --- What is deleted --------------------------------------------------------------------------
def test_it_deletes_expired_completed_events_in_chunks_and_keeps_recent_ones(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    settings_short.BIGMIND_RETENTION_CHUNK_SIZE = 3
    old = completed_events(api, 8)
    recent = completed_events(api, 2)
    age(old, 11)
    age(recent, 9)
    assert EventTransition.objects.filter(event_id__in=old).exists()

    result = retention_purge()

    assert result.completed_events == 8
    assert result.chunks == 3  # 3 + 3 + 2
    assert result.finished
    assert set(Event.objects.values_list("pk", flat=True)) == {
        Event.objects.get(pk=pk).pk for pk in recent
    }
    assert not EventTransition.objects.filter(event_id__in=old).exists()
    assert EventTransition.objects.filter(event_id__in=recent).exists()
    assert retention_purge().completed_events == 0


def test_pending_and_processing_events_are_never_deleted_however_old(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    pending = send(api, "visit", {"n": 1})
    processing = send(api, "visit", {"n": 2})
    Event.objects.filter(pk=processing).update(status=EventStatus.PROCESSING)
    age([pending, processing], 1000)

    result = retention_purge()

    assert result.completed_events == result.failed_events == 0
    assert Event.objects.filter(pk__in=[pending, processing]).count() == 2


def test_failed_events_are_kept_for_their_own_longer_period(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    ids = [send(api, "visit", {"n": n}) for n in range(3)]
    Event.objects.filter(pk__in=ids).update(status=EventStatus.FAILED, last_error="boom")
    age(ids[:1], 20)  # past the completed period (10), within the failed one (30)
    age(ids[1:], 31)

    result = retention_purge()

    assert result.failed_events == 2
    assert list(Event.objects.values_list("pk", flat=True)) == [Event.objects.get(pk=ids[0]).pk]


def test_failed_events_are_never_purged_before_completed_ones(settings: Any) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 60
    settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS = 7
    now = datetime(2026, 6, 1, tzinfo=UTC)

    cutoffs = retention_cutoffs(now=now)

    assert cutoffs["completed"] == cutoffs["failed"] == now - 60 * DAY
    settings.BIGMIND_EVENT_RETENTION_DAYS = 0
    assert retention_cutoffs(now=now)["failed"] is None  # completed forever: failed too


def test_zero_days_keeps_everything_forever(
    api: ApiClient, signals: dict[str, Signal], settings: Any
) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 0
    settings.BIGMIND_FAILED_EVENT_RETENTION_DAYS = 0
    settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS = 0
    ids = completed_events(api, 2, signal="calls")
    age(ids, 5000)

    result = retention_purge(now=timezone.now() + 5000 * DAY)

    assert (result.completed_events, result.failed_events, result.metric_buckets) == (0, 0, 0)
    assert Event.objects.count() == 2 and MetricAggregate.objects.count() == 1


def test_the_purge_reads_no_payloads(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    """Pins the statements on purpose: reading payloads would cost I/O without changing any
    result, so only the captured SQL can show the purge leaves the column alone."""
    age(completed_events(api, 3), 11)

    with CaptureQueriesContext(connection) as captured:
        assert retention_purge().completed_events == 3

    column = f'"{Event._meta.db_table}"."{Event._meta.get_field("data").column}"'
    assert not any(column in q["sql"] for q in captured.captured_queries)


def test_a_run_stops_when_its_time_budget_is_spent_and_the_next_one_carries_on(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    age(completed_events(api, 2), 11)

    stopped = retention_purge(time_budget=0)
    assert not stopped.finished
    assert stopped.completed_events == 0

    assert retention_purge(time_budget=60).completed_events == 2


# --- What stays the same ----------------------------------------------------------------------
def test_purging_processed_events_changes_no_state_bucket_engagement_or_profile(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    long_ago = (timezone.now() - 40 * DAY).isoformat()
    old = completed_events(api, 3, timestamp=long_ago)
    old += completed_events(api, 4, signal="calls", timestamp=long_ago)
    old += [send(api, "health", {"state": "green"}, timestamp=long_ago)]
    old += [send(api, "health", {"state": "red"}, timestamp=long_ago)]
    events_process(event_ids=old[-2:])
    recent = completed_events(api, 2)
    age(old, 40)
    # The record's current state points at an event that is about to be deleted.
    assert str(RecordState.objects.get().event_id) in old
    before, before_profile = rollups(), profile(api)
    assert before_profile["event_count"] == 11

    result = retention_purge()

    assert result.completed_events == 9
    assert set(map(str, Event.objects.values_list("pk", flat=True))) == set(recent)
    assert rollups() == before
    assert profile(api) == before_profile
    assert PurgedEventCount.objects.count() == 3


def test_reprocessing_the_remaining_events_after_a_purge_counts_nothing_twice(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    long_ago = (timezone.now() - 40 * DAY).isoformat()
    old = completed_events(api, 2, timestamp=long_ago)
    old += completed_events(api, 2, signal="calls", timestamp=long_ago)
    old += [send(api, "health", {"state": "green"}, timestamp=long_ago)]
    events_process(event_ids=old[-1:])
    recent = completed_events(api, 2)
    recent += completed_events(api, 2, signal="calls")
    recent += [send(api, "health", {"state": "red"})]
    events_process(event_ids=recent[-1:])
    age(old, 40)
    assert retention_purge().completed_events == 5
    before, before_profile = rollups(), profile(api)

    assert events_reprocess(events=Event.objects.all()) == 5
    events_process(event_ids=recent)

    assert Event.objects.filter(status=EventStatus.COMPLETED).count() == 5
    after = rollups()
    assert after["states"] == before["states"]
    assert after["buckets"] == before["buckets"]
    assert after["engagement"] == pytest.approx(before["engagement"])
    # Reprocessing writes each insight again (same content, a new `created_at`).
    assert without_insight_times(profile(api)) == without_insight_times(before_profile)


def without_insight_times(data: dict[str, Any]) -> dict[str, Any]:
    return data | {"insights": [i | {"created_at": None} for i in data["insights"]]}


def test_a_purged_events_idempotency_key_is_kept_until_its_own_retention_has_passed(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    body = {"signal": "visit", "identity": {"type": "account", "id": "A1"}, "data": {}}
    first = api.post("/v1/events", body, **{"Idempotency-Key": "k-1"})
    first_id = first.json()["data"]["id"]
    events_process(event_ids=[first_id])

    retention_purge(now=timezone.now() + 11 * DAY)  # the event's retention: 10 days
    replay = api.post("/v1/events", body, **{"Idempotency-Key": "k-1"})
    retention_purge(now=timezone.now() + 31 * DAY)  # the key's: 30 days
    again = api.post("/v1/events", body, **{"Idempotency-Key": "k-1"})

    assert (replay.status_code, replay.json()["data"]["id"]) == (200, first_id)
    assert again.status_code == 202
    assert again.json()["data"]["id"] != first_id


# --- Metric buckets ---------------------------------------------------------------------------
def bucket(record: CrmRecord, signal: Signal, period: str, start: datetime) -> MetricAggregate:
    return MetricAggregate.objects.create(
        crm_record=record,
        signal=signal,
        period=period,
        bucket_start=start,
        count=1,
        sum=1.0,
        min=1.0,
        max=1.0,
        updated_at=start,
    )


def test_metric_buckets_are_deleted_only_when_their_whole_period_is_past_the_cutoff(
    tenant: Tenant, signals: dict[str, Signal], settings: Any
) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 0
    settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS = 30
    settings.BIGMIND_RETENTION_CHUNK_SIZE = 2
    now = datetime(2026, 6, 17, 12, 30, tzinfo=UTC)  # cutoff: Monday 2026-05-18 12:30
    record = CrmRecord.objects.create(
        organization=tenant.organization,
        type="account",
        external_id="A1",
        first_seen_at=now,
        last_seen_at=now,
    )
    calls = signals["calls"]
    gone = [
        bucket(record, calls, "hour", datetime(2026, 5, 18, 11, tzinfo=UTC)),
        bucket(record, calls, "hour", datetime(2026, 5, 1, 0, tzinfo=UTC)),
        bucket(record, calls, "hour", datetime(2025, 1, 1, 0, tzinfo=UTC)),
        bucket(record, calls, "day", datetime(2026, 5, 17, tzinfo=UTC)),
        bucket(record, calls, "week", datetime(2026, 5, 11, tzinfo=UTC)),  # ended on the 18th
        bucket(record, calls, "month", datetime(2026, 4, 1, tzinfo=UTC)),
    ]
    kept = [
        bucket(record, calls, "hour", datetime(2026, 5, 18, 12, tzinfo=UTC)),  # holds the cutoff
        bucket(record, calls, "day", datetime(2026, 5, 18, tzinfo=UTC)),
        bucket(record, calls, "week", datetime(2026, 5, 18, tzinfo=UTC)),
        bucket(record, calls, "month", datetime(2026, 5, 1, tzinfo=UTC)),
        bucket(record, calls, "day", datetime(2026, 6, 17, tzinfo=UTC)),
    ]
    newer = {b.pk: (b.count, b.sum) for b in kept}

    result = retention_purge(now=now)

    assert result.metric_buckets == len(gone)
    assert result.chunks == 5  # hour: 2 + 1, then day, week and month: 1 each
    remaining = MetricAggregate.objects.order_by("pk")
    assert [b.pk for b in remaining] == [b.pk for b in kept]
    assert {b.pk: (b.count, b.sum) for b in remaining} == newer


def test_buckets_and_events_have_their_own_periods(
    api: ApiClient, signals: dict[str, Signal], settings: Any
) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 10
    settings.BIGMIND_METRIC_BUCKET_RETENTION_DAYS = 400
    ids = completed_events(api, 2, signal="calls")
    age(ids, 11)

    result = retention_purge()

    assert result.completed_events == 2 and result.metric_buckets == 0
    assert MetricAggregate.objects.get().count == 2


# --- Running it -------------------------------------------------------------------------------
def test_the_purge_runs_as_a_beat_task(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    entry = settings_short.CELERY_BEAT_SCHEDULE["events-purge"]
    assert entry["task"] == purge_task.name == "events.purge"
    assert entry["schedule"] == settings_short.BIGMIND_RETENTION_INTERVAL_SECONDS
    age(completed_events(api, 2), 11)

    purge_task()

    assert Event.objects.count() == 0


def test_the_command_counts_in_a_dry_run_and_deletes_without_one(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    age(completed_events(api, 2), 11)

    out = StringIO()
    call_command("purge_expired", "--dry-run", stdout=out)
    assert "completed events: 2 would be deleted (dry run, nothing changed)" in out.getvalue()
    assert "metric buckets: 0 would be deleted (dry run, nothing changed) (kept forever" in (
        out.getvalue()
    )
    assert Event.objects.count() == 2

    out = StringIO()
    call_command("purge_expired", stdout=out)
    assert "completed events: 2 deleted" in out.getvalue()
    assert "rejected events: 0 deleted" in out.getvalue()
    assert Event.objects.count() == 0


def test_the_record_profile_adds_purged_counts_to_kept_ones(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    long_ago = (timezone.now() - 40 * DAY).isoformat()
    old = completed_events(api, 3, timestamp=long_ago)
    age(old, 40)
    retention_purge()
    newest = json.loads(json.dumps(profile(api)))["events_by_signal"][0]["last_event_at"]
    completed_events(api, 1)

    data = profile(api)

    assert data["event_count"] == 4
    [visits] = data["events_by_signal"]
    assert visits["count"] == 4
    assert visits["last_event_at"] > newest


# --- Concurrency (PostgreSQL row locks) -------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_rows_another_transaction_holds_are_skipped_not_waited_for(
    api: ApiClient, signals: dict[str, Signal], settings_short: Any
) -> None:
    import threading

    from django.db import connections, transaction

    if connection.vendor != "postgresql":
        pytest.skip("row locks: run with DATABASE_URL=postgres://...")
    ids = completed_events(api, 3)
    age(ids, 11)
    locked, release = threading.Event(), threading.Event()

    def hold_one() -> None:  # a reprocess, say, holding one of the rows
        try:
            with transaction.atomic():
                Event.objects.select_for_update().get(pk=ids[0])
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_one)
    holder.start()
    try:
        assert locked.wait(10)
        result = retention_purge(time_budget=5)
    finally:
        release.set()
        holder.join()

    assert result.completed_events == 2
    assert list(Event.objects.values_list("pk", flat=True)) == [Event.objects.get(pk=ids[0]).pk]
    assert retention_purge().completed_events == 1


def test_finished_webhook_deliveries_are_purged_after_their_retention_and_pending_ones_never(
    tenant: Tenant, settings: Any, pipeline_in_process: Any
) -> None:
    from events_app.models import WebhookDelivery
    from events_app.webhooks.endpoints import endpoint_create
    from events_app.webhooks.sending import ping_create

    settings.BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS = 30
    endpoint = endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/hooks", events=["*"]
    ).endpoint
    old_done, old_failed, recent, owed = (ping_create(endpoint=endpoint) for _ in range(4))
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=old_done.pk).update(
        status="succeeded", completed_at=now - 31 * DAY
    )
    WebhookDelivery.objects.filter(pk=old_failed.pk).update(
        status="failed", completed_at=now - 31 * DAY
    )
    WebhookDelivery.objects.filter(pk=recent.pk).update(
        status="succeeded", completed_at=now - 29 * DAY
    )
    WebhookDelivery.objects.filter(pk=owed.pk).update(created_at=now - 300 * DAY)

    assert retention_purge(dry_run=True).webhook_deliveries == 2
    assert retention_purge().webhook_deliveries == 2
    assert set(WebhookDelivery.objects.values_list("pk", flat=True)) == {recent.pk, owed.pk}

    settings.BIGMIND_WEBHOOK_DELIVERY_RETENTION_DAYS = 0  # kept forever
    WebhookDelivery.objects.update(completed_at=now - 1000 * DAY)
    assert retention_purge().webhook_deliveries == 0
    assert WebhookDelivery.objects.count() == 2

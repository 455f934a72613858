"""The events table's range partitions on PostgreSQL (events_app/partitions): in place after
migrate, rows in the partition of their received_at, upkeep ahead and idempotent (also when two
run at once), the default partition drained, retention dropping whole expired partitions while
the one straddling the cutoff is purged row by row, and SQLite keeping a plain table."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone

from events_app.models import Event, EventStatus, EventTransition, PurgedEventCount
from events_app.partitions.upkeep import (
    TABLE,
    interval_end,
    interval_start,
    is_partitioned,
    partition_name,
    partitions_ensure,
    partitions_list,
)
from events_app.pipeline.processing import events_process
from events_app.retention import retention_purge
from events_app.tasks import partitions_task
from signals_app.models import Signal
from tests.conftest import ApiClient, on_postgres

DAY = timedelta(days=1)


def needs_postgres() -> None:
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")


def partition_of(event_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f'SELECT tableoid::regclass::text FROM "{TABLE}" WHERE id = %s', [event_id])  # noqa: S608
        return str(cursor.fetchone()[0])


def relkind(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE relname = %s", [name])
        row = cursor.fetchone()
    return row[0] if row else None


def send(api: ApiClient, n: int = 0, **fields: Any) -> str:
    body = {"signal": "visit", "identity": {"type": "account", "id": "A1"}, "data": {"n": n}}
    response = api.post("/v1/events", body | fields)
    assert response.status_code == 202, response.content
    return str(response.json()["data"]["id"])


def received(event_ids: list[str], at: datetime) -> None:
    """Move these events to `at` (an UPDATE of the partition key moves the rows)."""
    Event.objects.filter(pk__in=event_ids).update(received_at=at)


def profile(api: ApiClient) -> dict[str, Any]:
    response = api.client.get(
        "/v1/records/account/A1", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 200, response.content
    return response.json()["data"]


# --- The layout -------------------------------------------------------------------------------
@pytest.mark.postgres
def test_the_events_table_is_partitioned_after_migrate_with_partitions_ahead(db: None) -> None:
    needs_postgres()
    assert relkind(TABLE) == "p"
    parts = partitions_list()
    assert parts[-1].is_default and parts[-1].name == f"{TABLE}_default"
    start = interval_start(timezone.now(), "month")
    for _ in range(4):  # this month and BIGMIND_EVENT_PARTITIONS_AHEAD (3) more
        end = interval_end(start, "month")
        assert any(p.start == start and p.end == end for p in parts), (start, parts)
        assert relkind(partition_name(start, end)) == "r"
        start = end
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = %s::regclass AND contype = 'p'",
            [TABLE],
        )
        assert cursor.fetchone()[0] == "PRIMARY KEY (id, received_at)"
        # Every index of the model is a partitioned index (relkind 'I').
        cursor.execute(
            "SELECT c.relname, c.relkind FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass",
            [TABLE],
        )
        indexes = dict(cursor.fetchall())
    expected = {index.name for index in Event._meta.indexes} | {f"{TABLE}_pkey"}
    assert set(indexes) == expected
    assert set(indexes.values()) == {"I"}


@pytest.mark.postgres
def test_events_at_a_month_boundary_land_in_the_partition_of_their_received_at(
    api: ApiClient, visit: Signal
) -> None:
    needs_postgres()
    boundary = interval_end(interval_start(timezone.now(), "month"), "month")
    before, at = send(api, 1), send(api, 2)
    received([before], boundary - timedelta(microseconds=1))
    received([at], boundary)

    assert partition_of(before) == partition_name(interval_start(boundary - DAY, "month"), boundary)
    assert partition_of(at) == partition_name(boundary, interval_end(boundary, "month"))
    # Found by id alone (the model's primary key), whatever the partition.
    response = api.client.get(
        f"/v1/events/{at}", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 200, response.content


# --- Upkeep -----------------------------------------------------------------------------------
@pytest.mark.postgres
def test_upkeep_creates_the_partitions_ahead_once(db: None) -> None:
    needs_postgres()
    later = timezone.now() + 400 * DAY

    created = partitions_ensure(now=later, ahead=2)

    start = interval_start(later, "month")
    second = interval_end(start, "month")
    third = interval_end(second, "month")
    assert created == [
        partition_name(start, second),
        partition_name(second, third),
        partition_name(third, interval_end(third, "month")),
    ]
    assert all(relkind(name) == "r" for name in created)
    assert partitions_ensure(now=later, ahead=2) == []


@pytest.mark.postgres
def test_upkeep_by_week_fills_around_monthly_partitions_without_overlap(db: None) -> None:
    needs_postgres()
    # A Monday 500 days ahead: the weeks straddling a month's turn must not overlap a month.
    month = interval_start(timezone.now() + 500 * DAY, "month")
    partitions_ensure(now=month, ahead=0, interval="month")
    week = interval_start(month + 6 * DAY, "week")  # the week holding the 7th: inside the month

    assert partitions_ensure(now=week, ahead=0, interval="week") == []
    spill = interval_start(interval_end(month, "month") - DAY, "week")
    created = partitions_ensure(now=spill, ahead=0, interval="week")
    if spill + 7 * DAY > interval_end(month, "month"):  # the week runs into the next month
        assert created == [partition_name(interval_end(month, "month"), spill + 7 * DAY)]


@pytest.mark.postgres
def test_upkeep_moves_rows_out_of_the_default_partition_into_their_own(
    api: ApiClient, visit: Signal
) -> None:
    needs_postgres()
    long_ago = timezone.now() - 700 * DAY
    event_id = send(api)
    received([event_id], long_ago)
    assert partition_of(event_id) == f"{TABLE}_default"

    partitions_task.apply()  # beat's task

    start = interval_start(long_ago, "month")
    name = partition_name(start, interval_end(start, "month"))
    assert partition_of(event_id) == name
    assert Event.objects.get(pk=event_id).received_at == long_ago
    assert partitions_ensure() == []


@pytest.fixture
def future_partitions(transactional_db: None) -> Iterator[datetime]:
    """A far-future month; the partitions the test makes there are dropped after it."""
    start = interval_start(timezone.now() + 3000 * DAY, "month")
    yield start
    with connection.cursor() as cursor:
        for part in partitions_list():
            if part.start is not None and part.start >= start:
                cursor.execute(f'DROP TABLE "{part.name}"')


@pytest.mark.postgres
def test_two_upkeeps_at_once_create_each_partition_once(future_partitions: datetime) -> None:
    needs_postgres()
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            barrier.wait()
            results.append(partitions_ensure(now=future_partitions, ahead=5))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    made = sorted(results[0] + results[1])
    assert len(made) == 6 == len(set(made))


def test_the_beat_schedule_runs_upkeep(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["events-partitions"]
    assert entry["task"] == partitions_task.name == "events.partitions"


@pytest.mark.parametrize(
    ("name", "value", "check"),
    [
        ("BIGMIND_EVENT_PARTITION_INTERVAL", "year", "events_app.E001"),
        ("BIGMIND_EVENT_PARTITIONS_AHEAD", 0, "events_app.E002"),
    ],
)
def test_a_bad_partition_setting_is_refused_by_the_checks(
    settings: Any, name: str, value: Any, check: str
) -> None:
    setattr(settings, name, value)
    assert check in [message.id for message in run_checks()]


def test_sqlite_keeps_a_plain_table_and_upkeep_does_nothing(db: None) -> None:
    if on_postgres():
        pytest.skip("SQLite only")
    assert not is_partitioned()
    assert partitions_ensure() == []
    assert partitions_list() == []


# --- Retention by partition -------------------------------------------------------------------
def processed(api: ApiClient, count: int, start: int = 0) -> list[str]:
    ids = [send(api, start + n) for n in range(count)]
    events_process(event_ids=ids)
    return ids


@pytest.mark.postgres
def test_retention_drops_a_whole_expired_partition_and_purges_the_straddling_one_by_rows(
    api: ApiClient, visit: Signal, retention: Any
) -> None:
    """Months M-1, M0, M1, the cutoff in the middle of M1: M0 (only completed events) is
    dropped whole; M-1 (a pending event) and M1 (straddling) lose their expired rows only."""
    needs_postgres()
    m_1 = interval_start(timezone.now() - 150 * DAY, "month")
    m0 = interval_end(m_1, "month")
    m1 = interval_end(m0, "month")
    cutoff = m1 + 14 * DAY
    now = cutoff + 10 * DAY  # completed events: 10 days; failed: 30 (before m1 - 6 days)
    partitions_ensure(now=m_1, ahead=2)
    dropped = processed(api, 3)
    straddling_expired = processed(api, 2, start=10)
    straddling_kept = processed(api, 2, start=20)
    old_completed = processed(api, 1, start=30)
    old_pending = send(api, 40)
    received(dropped, m0 + 2 * DAY)
    received(straddling_expired, m1 + DAY)
    received(straddling_kept, cutoff + DAY)
    received([*old_completed, old_pending], m_1 + DAY)
    assert EventTransition.objects.filter(event_id__in=dropped).exists()
    before = profile(api)
    m0_name = partition_name(m0, m1)
    assert relkind(m0_name) == "r"

    result = retention_purge(now=now)

    assert result.dropped_partitions == [m0_name]
    assert relkind(m0_name) is None  # gone from pg_class
    assert relkind(partition_name(m_1, m0)) == "r"
    assert relkind(partition_name(m1, interval_end(m1, "month"))) == "r"
    assert result.completed_events == 3 + 2 + 1
    assert set(Event.objects.values_list("pk", flat=True)) == {
        Event.objects.get(pk=pk).pk for pk in [*straddling_kept, old_pending]
    }
    assert not EventTransition.objects.filter(event_id__in=dropped).exists()
    assert PurgedEventCount.objects.get().count == 6
    after = profile(api)
    assert after["event_count"] == before["event_count"] == 9
    assert after["events_by_signal"] == before["events_by_signal"]


@pytest.mark.postgres
def test_a_partition_holding_a_failed_event_younger_than_its_cutoff_is_purged_by_rows(
    api: ApiClient, visit: Signal, retention: Any
) -> None:
    needs_postgres()
    month = interval_start(timezone.now() - 150 * DAY, "month")
    end = interval_end(month, "month")
    now = end + 20 * DAY  # the month ended before the completed cutoff, not the failed one
    partitions_ensure(now=month, ahead=0)
    completed = processed(api, 2)
    failed = send(api, 9)
    Event.objects.filter(pk=failed).update(status=EventStatus.FAILED)
    received(completed, month + DAY)
    received([failed], end - 5 * DAY)  # after the failed events' cutoff (end - 10 days)

    result = retention_purge(now=now)

    assert result.dropped_partitions == []
    assert result.completed_events == 2
    assert list(Event.objects.values_list("pk", flat=True)) == [Event.objects.get(pk=failed).pk]
    assert relkind(partition_name(month, end)) == "r"

    # Once the failed events' cutoff has passed its end, the partition goes whole.
    assert retention_purge(now=end + 31 * DAY).dropped_partitions == [partition_name(month, end)]
    assert Event.objects.count() == 0


@pytest.mark.postgres
def test_the_command_lists_the_partitions_a_dry_run_would_drop_and_drops_them(
    api: ApiClient, visit: Signal, retention: Any
) -> None:
    needs_postgres()
    month = interval_start(timezone.now() - 200 * DAY, "month")
    name = partition_name(month, interval_end(month, "month"))
    partitions_ensure(now=month, ahead=0)
    received(processed(api, 2), month + DAY)

    out = StringIO()
    call_command("purge_expired", "--dry-run", stdout=out)
    assert f"event partitions: 1 would be dropped whole ({name};" in out.getvalue()
    assert relkind(name) == "r"

    out = StringIO()
    call_command("purge_expired", stdout=out)
    assert f"event partitions: 1 dropped whole ({name};" in out.getvalue()
    assert "completed events: 2 deleted" in out.getvalue()
    assert relkind(name) is None


@pytest.mark.postgres
def test_the_partitions_command_lists_ranges_and_creates_ahead(db: None) -> None:
    needs_postgres()
    out = StringIO()
    call_command("event_partitions", "--create", stdout=out)
    text = out.getvalue()
    assert "created: none needed" in text  # migrate made them
    start = interval_start(timezone.now(), "month")
    end = interval_end(start, "month")
    assert (
        f"{partition_name(start, end)}  {start:%Y-%m-%d} 00:00 to {end:%Y-%m-%d} 00:00 UTC" in text
    )
    assert f"{TABLE}_default  DEFAULT" in text


def test_interval_starts_are_utc_month_monday_and_midnight() -> None:
    moment = datetime(2027, 3, 17, 22, 30, tzinfo=UTC)
    assert interval_start(moment, "month") == datetime(2027, 3, 1, tzinfo=UTC)
    assert interval_start(moment, "week") == datetime(2027, 3, 15, tzinfo=UTC)  # a Monday
    assert interval_start(moment, "day") == datetime(2027, 3, 17, tzinfo=UTC)
    assert interval_end(datetime(2027, 12, 1, tzinfo=UTC), "month") == datetime(
        2028, 1, 1, tzinfo=UTC
    )
    assert partition_name(datetime(2027, 12, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC)) == (
        "events_app_event_p20271201_20280101"
    )

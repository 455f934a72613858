"""The workers' statements on the partitioned events table name their events' partitions.

With 24 daily partitions and events in several, the real statements of a claim by ids, a
drain's claim, a completion and a settle (retry) are captured as they run, then explained as
generic plans of prepared statements (what a worker runs after `prepare_threshold` executions):
each visits only the partitions its events are in (pruned at executor start-up, "Subplans
Removed"), or for the drain's claim, whose rows come from its own SELECT, at run time ("never
executed"). SQLite: the same code processes the events (the conditions are harmless there).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from events_app.models import Event, EventStatus
from events_app.partitions.upkeep import (
    TABLE,
    interval_end,
    interval_start,
    partition_name,
    partitions_ensure,
)
from events_app.pipeline.claims import events_claim, events_claim_due
from events_app.pipeline.facts import event_counts
from events_app.pipeline.processing import chunk_run
from events_app.pipeline.processors import processor_get
from signals_app.models import Signal
from tests.conftest import ApiClient, Tenant, on_postgres

DAY = timedelta(days=1)
DAYS = 24

Statement = tuple[str, list[Any]]


@pytest.fixture
def days(db: None) -> list[datetime]:
    """24 daily partitions far ahead of the monthly ones migrate made (in the test's
    transaction, so they go with it); their starts."""
    start = interval_start(timezone.now() + 4000 * DAY, "month")
    if on_postgres():
        partitions_ensure(now=start, ahead=DAYS - 1, interval="day")
    return [start + i * DAY for i in range(DAYS)]


def send(api: ApiClient, n: int) -> str:
    body = {"signal": "visit", "identity": {"type": "account", "id": f"A{n}"}, "data": {"n": n}}
    response = api.post("/v1/events", body)
    assert response.status_code == 202, response.content
    return str(response.json()["data"]["id"])


def stored(api: ApiClient, at: list[datetime]) -> list[str]:
    """An event received at each of `at` (the partition key moved by UPDATE), still pending."""
    ids = []
    for n, moment in enumerate(at):
        event_id = send(api, n)
        Event.objects.filter(pk=event_id).update(received_at=moment)
        ids.append(event_id)
    # Made pending again whatever eager processing did, for the claims under test.
    Event.objects.filter(pk__in=ids).update(
        status=EventStatus.PENDING, attempts=0, claimed_at=None, due_at=None
    )
    return ids


@contextmanager
def captured() -> Iterator[list[Statement]]:
    """The statements run on the events table meanwhile (UPDATEs of it), with parameters."""
    found: list[Statement] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        if f'UPDATE "{TABLE}"' in sql and not many:
            found.append((sql, list(params or [])))
        return execute(sql, params, many, ctx)

    with connection.execute_wrapper(wrapper):
        yield found


def generic_plan(sql: str, params: list[Any]) -> str:
    """EXPLAIN (ANALYZE, COSTS OFF) of `sql` as a prepared statement's generic plan, rolled back."""
    numbers = iter(range(1, len(params) + 1))
    text = re.sub(r"%s", lambda _: f"${next(numbers)}", sql)
    arguments = ", ".join(["%s"] * len(params))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE pruning_check AS {text}")
        try:
            with transaction.atomic():
                cursor.execute(
                    f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE pruning_check({arguments})", params
                )
                plan = "\n".join(row[0] for row in cursor.fetchall())
                transaction.set_rollback(True)
        finally:
            cursor.execute("DEALLOCATE pruning_check")
    assert "Generic Plan" in plan or "$1" in text, plan
    return plan


def partitions_visited(plan: str) -> set[str]:
    """The partitions of the events table a plan really scanned (not pruned, executed)."""
    visited = set()
    for line in plan.splitlines():
        match = re.search(rf" on ({TABLE}_\w+)", line)
        if match and "Scan" in line and "never executed" not in line:
            visited.add(match.group(1))
    return visited


def partition_of(day: datetime) -> str:
    return partition_name(day, interval_end(day, "day"))


@pytest.mark.postgres
def test_claims_and_completions_visit_only_their_events_partitions(
    api: ApiClient, visit: Signal, days: list[datetime]
) -> None:
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")
    hour = timedelta(hours=1)
    # The events under test on days 3 and 4; others on days 10 and 20 that nothing touches.
    chunk = stored(api, [days[3] + hour, days[3] + 2 * hour, days[4] + hour])
    stored(api, [days[10] + hour, days[20] + hour])
    times = dict(Event.objects.filter(pk__in=chunk).values_list("pk", "received_at"))
    processor = processor_get()

    with captured() as statements:
        claims = events_claim(event_ids=chunk, received=times)
        assert sorted(str(c.event_id) for c in claims) == sorted(chunk)
        chunk_run(claims, processor)
    assert set(Event.objects.filter(pk__in=chunk).values_list("status", flat=True)) == {
        EventStatus.COMPLETED
    }
    claim, complete = statements
    mine = {partition_of(days[3]), partition_of(days[4])}
    for sql, params in (claim, complete):
        plan = generic_plan(sql, params)
        assert "Subplans Removed" in plan, plan
        assert partitions_visited(plan) == mine, plan
    # The completion looks each row's values up by id: no join the planner could turn into a
    # rescan of the values for every row (a nested loop on a guess of one row).
    plan = generic_plan(*complete)
    assert "Loop" not in plan and "Join" not in plan, plan


@pytest.mark.postgres
def test_a_settle_visits_only_its_event_partition(
    api: ApiClient, visit: Signal, days: list[datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")
    [event_id] = stored(api, [days[7] + timedelta(hours=5)])
    stored(api, [days[8], days[15]])
    processor = processor_get()

    def broken(*args: Any, **kwargs: Any) -> Any:
        from django.db import OperationalError

        raise OperationalError("connection lost")

    monkeypatch.setattr("events_app.pipeline.processing._chunk_round", broken)
    times = dict(Event.objects.filter(pk=event_id).values_list("pk", "received_at"))
    with captured() as statements:
        [claim] = events_claim(event_ids=[event_id], received=times)
        chunk_run([claim], processor)  # the database error: a retry, settled
    assert Event.objects.get(pk=event_id).status == EventStatus.PENDING
    settle = statements[-1]
    assert "CASE WHEN" in settle[0]  # the settle's processed_at, not the completion
    plan = generic_plan(*settle)
    assert partitions_visited(plan) == {partition_of(days[7])}, plan


@pytest.mark.postgres
def test_the_drains_claim_visits_only_the_partitions_of_what_it_picked(
    api: ApiClient, visit: Signal, days: list[datetime]
) -> None:
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")
    Event.objects.exclude(received_at__gte=days[0]).update(status=EventStatus.COMPLETED)
    stored(api, [days[2], days[2] + timedelta(hours=3), days[9]])
    with captured() as statements:
        claims = events_claim_due(limit=2)  # the two oldest, both on day 2
    assert len(claims) == 2
    [(sql, params)] = statements
    Event.objects.filter(received_at__lt=days[9]).update(status=EventStatus.PENDING, attempts=0)
    plan = generic_plan(sql, params)
    # The pick (a SELECT, not captured) reads every partition's (status, received_at) index:
    # finding the oldest due events is its job. The claim, by the ids it picked, visits only
    # their partitions, and joins nothing (see events_claim_due).
    assert partitions_visited(plan) == {partition_of(days[2])}, plan
    assert "Loop" not in plan and "Join" not in plan, plan


def test_a_claim_with_and_without_times_claims_every_event(
    api: ApiClient, visit: Signal, days: list[datetime]
) -> None:
    """An id of a message without times (an earlier release) is claimed all the same, with
    those whose times are known; on SQLite too."""
    ids = stored(api, [days[1], days[5], days[6]])
    times = dict(Event.objects.filter(pk__in=ids[:2]).values_list("pk", "received_at"))
    claims = events_claim(event_ids=ids, received=times)
    assert sorted(str(c.event_id) for c in claims) == sorted(ids)
    chunk_run(claims, processor_get())
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        EventStatus.COMPLETED
    }


def test_messages_with_without_or_with_bad_times_process_every_event(
    api: ApiClient, visit: Signal, days: list[datetime]
) -> None:
    """A message of an earlier release has ids only; one of this release adds their times; a
    time that cannot be read leaves its event to the claim by id alone. None is missed."""
    from events_app.tasks import process_event_task, process_events_task

    old = stored(api, [days[1], days[2]])
    process_events_task.run(old)
    new = stored(api, [days[3], days[4], days[5]])
    times = [Event.objects.get(pk=i).received_at.isoformat() for i in new]
    process_events_task.run(new, ["not a time", None, times[2]])
    [single] = stored(api, [days[6]])
    process_event_task.run(single, Event.objects.get(pk=single).received_at.isoformat())
    assert set(
        Event.objects.filter(pk__in=[*old, *new, single]).values_list("status", flat=True)
    ) == {EventStatus.COMPLETED}


def test_a_webhook_delivery_reads_its_event_in_the_events_partition(
    api: ApiClient, tenant: Tenant, visit: Signal, days: list[datetime]
) -> None:
    """A delivery keeps its event's received_at; its first attempt reads the event by it (on
    PostgreSQL, only that partition). One written by an earlier release, without it, reads the
    event by id alone; both get their body."""
    from events_app.models import WebhookDelivery
    from events_app.webhooks.endpoints import endpoint_create
    from events_app.webhooks.sending import bodies_build

    endpoint_create(
        organization=tenant.organization, url="https://93.184.215.14/hooks", events=["*"]
    )
    ids = stored(api, [days[11] + timedelta(hours=2), days[12]])
    times = dict(Event.objects.filter(pk__in=ids).values_list("pk", "received_at"))
    WebhookDelivery.objects.all().delete()  # any written when the request was processed
    chunk_run(events_claim(event_ids=ids, received=times), processor_get())
    deliveries = list(WebhookDelivery.objects.filter(event_id__in=ids))
    assert deliveries and {d.event_received_at for d in deliveries} == set(times.values())
    older = deliveries[-1]
    WebhookDelivery.objects.filter(pk=older.pk).update(event_received_at=None)
    older.event_received_at = None

    if on_postgres():
        timed = [d for d in deliveries if d is not older]
        span = [d.event_received_at for d in timed if d.event_received_at is not None]
        query = Event.objects.filter(
            id__in={d.event_id for d in timed}, received_at__range=(min(span), max(span))
        )
        sql, params = query.query.sql_with_params()
        plan = generic_plan(sql, list(params))
        visited = partitions_visited(plan)
        assert "Subplans Removed" in plan and 1 <= len(visited) <= 2, plan
        assert visited <= {partition_of(days[11]), partition_of(days[12])}, plan

    sent = bodies_build(deliveries, organization=tenant.organization.slug, now=timezone.now())
    assert len(sent) == len(deliveries)
    assert all(d.body and d.status == "pending" for d in sent)


@pytest.mark.postgres
def test_the_seven_day_counts_skip_partitions_received_before_their_window(
    api: ApiClient, visit: Signal
) -> None:
    """A count by the client's timestamp is bounded on received_at too: no stored event was
    received more than MAX_FUTURE_SKEW before its timestamp, so older partitions are skipped."""
    if not on_postgres():
        pytest.skip("the events table is partitioned on PostgreSQL only")
    start = interval_start(timezone.now() - 400 * DAY, "month")
    partitions_ensure(now=start, ahead=DAYS - 1, interval="day")
    days = [start + i * DAY for i in range(DAYS)]
    hour = timedelta(hours=1)
    early, inside = stored(api, [days[0] + hour, days[10] + hour])
    Event.objects.filter(pk=early).update(timestamp=days[0] + hour)
    Event.objects.filter(pk=inside).update(timestamp=days[10] + hour)
    record = Event.objects.get(pk=inside).crm_record_id
    key = (record, days[10] - 7 * DAY, days[10] + 2 * hour)

    with captured_selects() as statements:
        counts = event_counts(keys=[key])
    assert counts[key] == {visit.pk: 1}
    ((sql, params),) = statements
    plan = generic_plan(sql, params)
    # Pruned per key as the nested loop runs: the skipped partitions show "(never executed)".
    visited = partitions_visited(plan)
    assert partition_of(days[10]) in visited, plan
    assert not visited & {partition_of(days[0]), partition_of(days[1])}, plan
    # And once per statement, on the bounds of all the keys, before any key is looked at
    # (when planning, or at a generic plan's start: "Subplans Removed"): the partitions made
    # ahead, received after the newest possible event, are never even opened per key.
    assert "Subplans Removed" in plan, plan


@contextmanager
def captured_selects() -> Iterator[list[Statement]]:
    """The counting statements run meanwhile, with parameters."""
    found: list[Statement] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, ctx: Any) -> Any:
        if "COUNT(*)" in sql and f'"{TABLE}"' in sql:
            found.append((sql, list(params or [])))
        return execute(sql, params, many, ctx)

    with connection.execute_wrapper(wrapper):
        yield found

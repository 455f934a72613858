"""Group commit (events_app/ingest/group_commit.py, events_app/ingest/store.py): many requests' events stored
by one writer per process, each answered with its own outcome, and only after the commit.

The writer is used whenever a request is not inside a transaction, so these tests run with real
transactions (`transaction=True`) and real threads; the rest of the suite, inside a test
transaction, stores each event on the request's own connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from django.db import IntegrityError, OperationalError, connection
from django.utils import timezone

from events_app import metrics
from events_app.ingest import services
from events_app.ingest.group_commit import GroupWriter, WriterTimeout
from events_app.ingest.store import NewEvent, StoreOutcome, events_store
from events_app.models import CrmRecord, Event, IdempotencyKey
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

URL = "/v1/events"


# --- The writer, on its own ----------------------------------------------------------------------
class SlowStore:
    """A store function that records the groups it got and takes `delay` seconds each."""

    def __init__(self, delay: float = 0.05, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.groups: list[list[int]] = []
        self.lock = threading.Lock()

    def __call__(self, rows: list[int]) -> list[int]:
        with self.lock:
            self.groups.append(list(rows))
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [row * 10 for row in rows]


def _write_all(writer: GroupWriter[int, int], rows: list[int]) -> dict[int, Any]:
    results: dict[int, Any] = {}

    def one(row: int) -> None:
        try:
            results[row] = writer.write(row, timeout=10)
        except Exception as exc:
            results[row] = exc

    threads = [threading.Thread(target=one, args=(row,)) for row in rows]
    for thread in threads:
        thread.start()
        time.sleep(0.002)  # arrive while the first group is being stored
    for thread in threads:
        thread.join(20)
    return results


def test_rows_that_arrive_while_a_group_commits_go_together_in_the_next() -> None:
    store = SlowStore(delay=0.1)
    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=128, max_wait=0)
    try:
        results = _write_all(writer, list(range(1, 21)))
    finally:
        writer.stop()
    # Each caller got its own row's outcome ...
    assert results == {row: row * 10 for row in range(1, 21)}
    # ... and the 19 rows that came during the first group's commit were stored together.
    assert len(store.groups) < 5
    assert sorted(row for group in store.groups for row in group) == list(range(1, 21))
    assert max(len(group) for group in store.groups) >= 10


def test_a_group_never_holds_more_than_max_rows() -> None:
    store = SlowStore(delay=0.1)
    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=4, max_wait=0)
    try:
        _write_all(writer, list(range(1, 21)))
    finally:
        writer.stop()
    assert max(len(group) for group in store.groups) == 4


def test_with_a_wait_a_lone_row_waits_for_company_at_most_that_long() -> None:
    store = SlowStore(delay=0)
    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=128, max_wait=0.2)
    try:
        started = time.monotonic()
        assert writer.write(7, timeout=5) == 70
        elapsed = time.monotonic() - started
    finally:
        writer.stop()
    assert 0.15 <= elapsed < 2


def test_nothing_is_answered_before_the_store_returns() -> None:
    entered, release = threading.Event(), threading.Event()

    def store(rows: list[int]) -> list[int]:
        entered.set()
        release.wait(10)
        return rows

    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=8, max_wait=0)
    answered = threading.Event()
    thread = threading.Thread(target=lambda: (writer.write(1, timeout=10), answered.set()))
    try:
        thread.start()
        assert entered.wait(5)
        time.sleep(0.1)
        assert not answered.is_set()  # the commit has not returned: no answer yet
        release.set()
        thread.join(5)
        assert answered.is_set()
    finally:
        release.set()
        writer.stop()


def test_a_failed_group_fails_each_of_its_callers_with_the_error() -> None:
    store = SlowStore(delay=0.05, fail=IntegrityError("refused"))
    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=128, max_wait=0)
    try:
        results = _write_all(writer, [1, 2, 3])
    finally:
        writer.stop()
    assert all(isinstance(result, IntegrityError) for result in results.values())


def test_a_connection_error_is_tried_again_on_a_new_connection() -> None:
    calls: list[int] = []

    def store(rows: list[int]) -> list[int]:
        calls.append(len(rows))
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return rows

    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=8, max_wait=0, tries=3)
    try:
        assert writer.write(5, timeout=10) == 5
    finally:
        writer.stop()
    assert calls == [1, 1, 1]


def test_when_every_try_fails_the_caller_gets_the_database_error() -> None:
    def store(rows: list[int]) -> list[int]:
        raise OperationalError("connection refused")

    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=8, max_wait=0, tries=2)
    try:
        with pytest.raises(OperationalError):
            writer.write(5, timeout=10)
    finally:
        writer.stop()


def test_a_caller_whose_commit_hangs_gets_a_timeout() -> None:
    release = threading.Event()

    def store(rows: list[int]) -> list[int]:
        release.wait(10)
        return rows

    writer: GroupWriter[int, int] = GroupWriter(store=store, max_rows=8, max_wait=0)
    try:
        with pytest.raises(WriterTimeout):
            writer.write(5, timeout=0.2)
    finally:
        release.set()
        writer.stop()


def test_the_after_commit_step_covers_every_group_once_per_interval() -> None:
    steps: list[tuple[list[int], Any]] = []
    writer: GroupWriter[int, int] = GroupWriter(
        store=SlowStore(delay=0.01),
        after_commit=lambda rows, outcomes, tag: steps.append((list(rows), tag)),
        max_rows=2,
        max_wait=0,
        after_commit_interval=10.0,
    )
    try:
        assert writer.write(1, timeout=5, tag="first") == 10
        # The first commit after a quiet spell is followed by the step at once.
        deadline = time.monotonic() + 5
        while not steps and time.monotonic() < deadline:
            time.sleep(0.01)
        assert steps == [([1], "first")]
        for row in (2, 3, 4):
            writer.write(row, timeout=5, tag=f"r{row}")
        time.sleep(0.2)
        assert len(steps) == 1  # within the interval: no second step yet
    finally:
        writer.stop()  # stopping runs the step for what is left
    assert steps == [([1], "first"), ([2, 3, 4], "r2")]


# --- The store function, against the database --------------------------------------------------
def _row(tenant: Tenant, signal_id: int, **overrides: Any) -> NewEvent:
    now = datetime.now(tz=UTC)
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "organization_id": tenant.organization.pk,
        "signal_id": signal_id,
        "schema_version": None,
        "identity_type": "account",
        "identity_id": "acct-1",
        "data": {"n": 1},
        "timestamp": now,
        "received_at": now,
        "reference": None,
        "idempotency_key": None,
        "request_hash": "h" * 64,
    }
    fields.update(overrides)
    return NewEvent(**fields)


@pytest.fixture
def signal_id(tenant: Tenant) -> int:
    return tenant.signal("visited-documentation-page").pk


@pytest.mark.django_db(transaction=True)
def test_each_row_of_a_group_gets_its_own_outcome(tenant: Tenant, signal_id: int) -> None:
    held = _row(tenant, signal_id, idempotency_key="held", request_hash="a" * 64)
    assert events_store([held]) == [StoreOutcome(inserted=True)]
    rows = [
        _row(tenant, signal_id, identity_id="acct-1"),
        _row(tenant, signal_id, idempotency_key="held", request_hash="a" * 64),  # a replay
        _row(tenant, signal_id, idempotency_key="held", request_hash="b" * 64),  # a conflict
        _row(tenant, signal_id, identity_id="acct-2", idempotency_key="new"),
        _row(tenant, signal_id, identity_id="acct-1"),
    ]

    outcomes = events_store(rows)

    assert [o.inserted for o in outcomes] == [True, False, False, True, True]
    for outcome in outcomes[1:3]:
        assert outcome.existing is not None and outcome.existing.id == held.id
    assert outcomes[1].existing.request_hash == "a" * 64  # type: ignore[union-attr]
    assert Event.objects.count() == 4
    # Two identities, one record each, whatever the number of their events in the group.
    assert CrmRecord.objects.count() == 2
    assert set(Event.objects.values_list("status", flat=True)) == {"pending"}


@pytest.mark.django_db(transaction=True)
def test_a_key_repeated_inside_one_group_is_stored_once(tenant: Tenant, signal_id: int) -> None:
    first = _row(tenant, signal_id, idempotency_key="twice", request_hash="a" * 64)
    same = _row(tenant, signal_id, idempotency_key="twice", request_hash="a" * 64)
    other = _row(tenant, signal_id, idempotency_key="twice", request_hash="b" * 64)

    outcomes = events_store([first, same, other])

    assert sum(o.inserted for o in outcomes) == 1
    stored = Event.objects.get(idempotency_key="twice")
    for row, outcome in zip([first, same, other], outcomes, strict=True):
        if outcome.inserted:
            assert row.id == stored.pk
        else:
            assert outcome.existing is not None and outcome.existing.id == stored.pk


@pytest.mark.django_db(transaction=True)
def test_a_row_the_database_refuses_fails_alone(tenant: Tenant, signal_id: int) -> None:
    rows = [
        _row(tenant, signal_id, identity_id="before"),
        _row(tenant, 999_999_999, identity_id="orphan"),  # no such signal: a foreign key fails
        _row(tenant, signal_id, identity_id="after"),
    ]

    outcomes = events_store(rows)

    assert [o.inserted for o in outcomes] == [True, False, True]
    assert isinstance(outcomes[1].error, IntegrityError)
    assert sorted(Event.objects.values_list("identity_id", flat=True)) == ["after", "before"]


@pytest.mark.django_db(transaction=True)
def test_a_group_stored_again_after_an_unconfirmed_commit_is_not_stored_twice(
    tenant: Tenant, signal_id: int
) -> None:
    rows = [
        _row(tenant, signal_id, identity_id="a"),
        _row(tenant, signal_id, identity_id="b", idempotency_key="k", request_hash="a" * 64),
    ]
    assert [o.inserted for o in events_store(rows)] == [True, True]

    # The writer lost the connection after sending the group and tries it again.
    assert [o.inserted for o in events_store(rows)] == [True, True]

    assert Event.objects.count() == 2


# --- Through HTTP -----------------------------------------------------------------------------------
def _concurrently(count: int, send: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = send(index)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


WARM_UP = "warm-up"


def _warm_up(tenant: Tenant) -> None:
    """One request first, so that the concurrent ones write nothing outside the writer.

    The first request of a key writes its last-used time, and the first lookups fill the
    caches. On SQLite's in-memory test database (shared cache), a write that meets another
    connection's open transaction on the same table fails at once with "database table is
    locked" (no busy wait, unlike a database file), which made these tests flaky there.
    """
    response = ApiClient(tenant.raw_key).post(URL, {**SEED_REQUEST, "reference": WARM_UP})
    assert response.status_code == 202


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_are_stored_in_groups_and_each_answered_with_its_own_event(
    make_tenant: Callable[[str], Tenant],
) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=10_000)
    sizes: list[int] = []
    observe = metrics.ingest_group_committed

    def record(rows: int, seconds: float) -> None:
        sizes.append(rows)
        observe(rows, seconds)

    def send(index: int) -> Any:
        body = {**SEED_REQUEST, "reference": f"ref-{index}"}
        return ApiClient(tenant.raw_key).post(URL, body)

    _warm_up(tenant)
    with mock.patch.object(metrics, "ingest_group_committed", record):
        services.ingest_writer_stop()  # the next writer reports to `record`
        responses = _concurrently(24, send)

    assert [r.status_code for r in responses] == [202] * 24
    answered = {r.json()["data"]["id"]: r.json()["data"]["reference"] for r in responses}
    stored = dict(Event.objects.exclude(reference=WARM_UP).values_list("id", "reference"))
    assert {str(k): v for k, v in stored.items()} == answered
    assert sum(sizes) == 24
    assert len(sizes) < 24  # some requests shared a commit


@pytest.mark.django_db(transaction=True)
def test_through_the_writer_a_replay_and_a_conflict_are_told_apart(
    make_tenant: Callable[[str], Tenant],
) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=10_000)

    def send(index: int) -> Any:
        body = {**SEED_REQUEST, "reference": "a" if index % 2 else "b"}
        return ApiClient(tenant.raw_key).post(URL, body, **{"Idempotency-Key": "one-key"})

    _warm_up(tenant)
    responses = _concurrently(10, send)

    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(202) == 1
    stored = Event.objects.exclude(reference=WARM_UP).get()
    for response in responses:
        if response.status_code == 200:
            assert response["Idempotent-Replayed"] == "true"
            assert response.json()["data"]["id"] == str(stored.pk)
            assert response.json()["data"]["reference"] == stored.reference
        elif response.status_code == 409:
            assert response.json()["code"] == "idempotency_conflict"
    assert statuses.count(200) + statuses.count(409) == 9


@pytest.mark.django_db(transaction=True)
def test_a_commit_not_confirmed_in_time_is_a_503_to_retry(
    make_tenant: Callable[[str], Tenant], settings: Any
) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=10_000)
    settings.BIGMIND_GROUP_COMMIT_TIMEOUT_SECONDS = 0.2
    release = threading.Event()
    real_store = services.events_store

    def hanging_store(rows: list[NewEvent]) -> list[StoreOutcome]:
        release.wait(10)
        return real_store(rows)

    services.ingest_writer_stop()
    try:
        with mock.patch.object(services, "events_store", hanging_store):
            response = ApiClient(tenant.raw_key).post(URL, SEED_REQUEST)
            assert response.status_code == 503
            assert response["Retry-After"] == "5"
            assert response.json()["code"] == "service_unavailable"
            assert "Idempotency-Key" in response.json()["error"]
    finally:
        release.set()
        services.ingest_writer_stop()


@pytest.mark.django_db(transaction=True)
def test_with_group_commit_off_each_request_stores_its_own_event(
    make_tenant: Callable[[str], Tenant], settings: Any
) -> None:
    settings.BIGMIND_GROUP_COMMIT = False
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=10_000)
    with mock.patch.object(GroupWriter, "write", side_effect=AssertionError("no writer")):
        response = ApiClient(tenant.raw_key).post(URL, SEED_REQUEST)
    assert response.status_code == 202
    assert Event.objects.filter(pk=response.json()["data"]["id"]).exists()


def _generic_plan(sql: str, params: list[Any]) -> str:
    """EXPLAIN of the generic plan PostgreSQL caches for `sql` once it is prepared (psycopg
    prepares the group statements after a few runs), made now: on the test's empty tables, as
    on a fresh database whose statistics say nothing yet."""
    numbered = sql
    for n in range(1, len(params) + 1):
        placeholder = "%s" if "%s" in numbered else "%b"
        numbered = numbered.replace(placeholder, f"${n}", 1)
    with connection.cursor() as cursor:
        pg = cursor.connection
        pg.execute(f"PREPARE plan_probe AS {numbered}")
        try:
            pg.execute("SET plan_cache_mode = force_generic_plan")
            args = ", ".join(["%s"] * len(params))
            rows = pg.execute(f"EXPLAIN EXECUTE plan_probe({args})", params).fetchall()
        finally:
            pg.execute("RESET plan_cache_mode")
            pg.execute("DEALLOCATE plan_probe")
    return "\n".join(row[0] for row in rows)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_prepared_group_statements_probe_indexes_even_when_planned_on_an_empty_table(
    tenant: Tenant, signal_id: int
) -> None:
    """A generic plan made while the tables are empty stays cached on the writer's
    connection. NOT EXISTS became a hashed subplan and `id = ANY(...) OR (...) IN (...)` a
    filter, both sequential scans of the whole event table on every statement: fine on an
    empty table, seconds on a large one. Pins the plans on purpose: no result or query count
    tells an index probe from a scan, and on a test-sized table both are fast."""
    if connection.vendor != "postgresql":
        pytest.skip("the prepared group statements are PostgreSQL's")
    from events_app.dialect import events_existing_sql, events_group_insert_sql
    from events_app.ingest.store import group_rows_json

    event_table, key_table = Event._meta.db_table, IdempotencyKey._meta.db_table
    rows = [_row(tenant, signal_id, idempotency_key="k-1")]
    group = _generic_plan(events_group_insert_sql(), [group_rows_json(rows)])
    existing = _generic_plan(
        events_existing_sql(),
        [[uuid.uuid4()], [timezone.now()], [tenant.organization.pk], ["k-1"]],
    )
    for plan in (group, existing):
        for table in (event_table, key_table):
            assert f"Seq Scan on {table}" not in plan, plan
        assert "hashed SubPlan" not in plan, plan
    # The group claims its keys through the key table's unique index, and reads no event.
    assert "Conflict Arbiter Indexes: idempotency_key_unique_in_org" in group, group
    assert f"on {event_table} " not in group.replace(f"Insert on {event_table} ", ""), group
    # The replay's lookups: the events by primary key, the keys by their unique index.
    assert "events_app_event_pkey" in existing, existing
    assert "idempotency_key_unique_in_org" in existing, existing

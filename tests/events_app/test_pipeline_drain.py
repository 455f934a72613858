"""Draining: a single-event message also processes other due pending events (claim-ahead).

Events are ingested through the real HTTP stack; the task function is called in-process
(tests/events_app/test_worker_e2e.py and tests/reliability run real workers).
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from unittest import mock
from uuid import UUID

import pytest
from django.db import connection
from django.utils import timezone

from events_app.models import Event, EventTransition, MetricAggregate
from events_app.pipeline.claims import events_claim_due
from events_app.pipeline.processing import events_process
from events_app.tasks import process_event_task
from tests.conftest import ApiClient, Tenant

# The same autouse fixtures as the in-process pipeline tests: a fresh processor per test, and
# publishes recorded instead of sent.
from tests.events_app.test_pipeline import ingest

pytestmark = pytest.mark.usefixtures("pipeline_in_process")


@pytest.fixture
def calls(tenant: Tenant):
    return tenant.signal(
        "calls", type="metric", aggregation="sum", period="day", rate_limit_per_minute=100000
    )


def processing_moves(event_id: str) -> int:
    return EventTransition.objects.filter(event_id=event_id, status="processing").count()


def test_a_single_event_message_also_completes_the_other_due_pending_events(
    api: ApiClient, calls, settings
) -> None:
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 3  # several chunks for 8 events
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(8)]
    process_event_task.run(ids[5])
    events = Event.objects.filter(pk__in=ids)
    assert sorted((e.status, e.attempts) for e in events) == [("completed", 1)] * 8
    # Each attempt is counted once and recorded once, drained or not.
    assert [processing_moves(i) for i in ids] == [1] * 8
    assert MetricAggregate.objects.get().sum == 8


def test_a_message_for_an_event_already_drained_counts_nothing_again(api: ApiClient, calls) -> None:
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(4)]
    process_event_task.run(ids[0])
    for event_id in ids:  # the drained events' own messages arrive afterwards
        process_event_task.run(event_id)
    assert MetricAggregate.objects.get().sum == 4
    assert [Event.objects.get(pk=i).attempts for i in ids] == [1] * 4


def test_draining_leaves_an_event_whose_retry_is_not_due_yet(api: ApiClient, calls) -> None:
    waiting, other = ingest(api, "calls", {"value": 1}), ingest(api, "calls", {"value": 2})
    Event.objects.filter(pk=waiting).update(due_at=timezone.now() + timedelta(minutes=5))
    process_event_task.run(other)
    assert Event.objects.get(pk=waiting).status == "pending"
    Event.objects.filter(pk=waiting).update(due_at=timezone.now() - timedelta(seconds=1))
    assert [c.event_id for c in events_claim_due(limit=10)] == [UUID(waiting)]


def test_draining_takes_the_oldest_events_first(api: ApiClient, calls) -> None:
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(5)]
    assert [str(c.event_id) for c in events_claim_due(limit=2)] == ids[:2]


def test_a_batch_message_and_a_direct_call_do_not_drain(api: ApiClient, calls) -> None:
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(4)]
    events_process(event_ids=ids[:2])
    events_process(event_ids=[ids[2]])
    assert Event.objects.get(pk=ids[3]).status == "pending"


def test_draining_is_off_with_a_chunk_size_of_zero(api: ApiClient, calls, settings) -> None:
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 0
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(3)]
    process_event_task.run(ids[0])
    assert list(Event.objects.filter(pk__in=ids[1:]).values_list("status", flat=True)) == [
        "pending",
        "pending",
    ]


def test_draining_stops_when_its_time_is_spent(api: ApiClient, calls, settings) -> None:
    settings.BIGMIND_DRAIN_SECONDS = 0
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(3)]
    process_event_task.run(ids[0])
    assert Event.objects.get(pk=ids[0]).status == "completed"
    assert set(Event.objects.filter(pk__in=ids[1:]).values_list("status", flat=True)) == {"pending"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_drainers_never_claim_the_same_event(api: ApiClient, calls) -> None:
    """Four threads with their own connections claim chunks of one backlog at the same time."""
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED draining is PostgreSQL's; SQLite serialises writers")
    ids = {ingest(api, "calls", {"value": 1}) for _ in range(240)}
    claimed: list[UUID] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def drain() -> None:
        from django.db import connection as own

        try:
            barrier.wait()
            while chunk := events_claim_due(limit=7):
                with lock:
                    claimed.extend(c.event_id for c in chunk)
        except BaseException as error:
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Counter(claimed).most_common(1)[0][1] == 1
    assert {str(i) for i in claimed} == ids


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_draining_workers_add_every_value_exactly_once(
    api: ApiClient, calls, settings
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the race needs PostgreSQL")
    settings.BIGMIND_DRAIN_SECONDS = 600  # a loaded machine must not end the drain early
    ids = [ingest(api, "calls", {"value": 1}) for _ in range(150)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def work(first: str) -> None:
        from django.db import connection as own

        try:
            barrier.wait()
            process_event_task.run(first)
        except BaseException as error:
            errors.append(error)
        finally:
            own.close()

    threads = [threading.Thread(target=work, args=(ids[n],)) for n in (0, 50, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(Event.objects.values_list("status", flat=True)) == {"completed"}
    assert MetricAggregate.objects.get().sum == 150
    assert EventTransition.objects.filter(status="processing").count() == 150


def test_workers_keep_their_database_connection_across_tasks() -> None:
    """Celery's Django fixup closes the connection after every task unless DB_REUSE_MAX is set."""
    from bigmind.celery import app

    assert (app.conf.get("CELERY_DB_REUSE_MAX") or 0) >= 1000


def test_a_task_outside_a_test_refreshes_old_or_broken_connections_first() -> None:
    from celery.signals import task_postrun, task_prerun

    class Request:
        is_eager = False

    # What a worker sends around each task (no task id: the log and metrics receivers skip it).
    with mock.patch("django.db.close_old_connections") as close_old:
        task_prerun.send(sender=mock.Mock(request=Request()))
        assert close_old.call_count == 1
        task_postrun.send(sender=mock.Mock(request=Request()))
        assert close_old.call_count == 2
        Request.is_eager = True  # an eager call runs in its caller's transaction: untouched
        task_prerun.send(sender=mock.Mock(request=Request()))
        task_postrun.send(sender=mock.Mock(request=Request()))
        assert close_old.call_count == 2


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_worker_sessions_commit_without_waiting_for_the_wal_flush(settings) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("a PostgreSQL session setting")
    from django.db import connections
    from django.db.backends.signals import connection_created

    from bigmind.celery import worker_database_sessions

    def setting_of_a_new_connection() -> str:
        new = connections.create_connection("default")
        try:
            with new.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                return cursor.fetchone()[0]
        finally:
            new.close()

    assert setting_of_a_new_connection() == "on"  # web processes: the 202 promise
    try:
        settings.BIGMIND_WORKER_SYNCHRONOUS_COMMIT = True
        worker_database_sessions()
        assert setting_of_a_new_connection() == "on"
        settings.BIGMIND_WORKER_SYNCHRONOUS_COMMIT = False
        worker_database_sessions()
        assert setting_of_a_new_connection() == "off"
    finally:
        connection_created.disconnect(dispatch_uid="bigmind-worker-async-commit")


def test_a_message_that_finds_the_database_down_is_published_again_with_a_backoff() -> None:
    """Nothing was claimed, so nothing is recorded: the message itself must come back."""
    from django.db import OperationalError

    from events_app.tasks import process_events_task

    for task in (process_event_task, process_events_task):
        assert OperationalError in task.autoretry_for
        assert task.max_retries == 10 and task.retry_backoff == 2
    down = OperationalError("connection refused")
    with mock.patch("events_app.tasks.events_process", side_effect=[down, None]) as work:
        # Eager: Celery runs the retry at once instead of publishing it.
        process_event_task.apply(args=["01a217d3-1991-750b-b34c-6c42db6652a1"])
    assert work.call_count == 2


def test_a_drain_takes_first_attempts_only_and_leaves_a_retry_to_its_own_message(
    api: ApiClient, calls
) -> None:
    """A chunk is claimed (and charged) as a whole: an event on a later attempt, which may be
    the one that killed its last worker, is claimed alone."""
    retry, fresh = ingest(api, "calls", {"value": 1}), ingest(api, "calls", {"value": 2})
    Event.objects.filter(pk=retry).update(attempts=1)  # a retry whose backoff is over
    assert [str(c.event_id) for c in events_claim_due(limit=10)] == [fresh]
    process_event_task.run(retry)  # the retry's own message
    assert (Event.objects.get(pk=retry).status, Event.objects.get(pk=retry).attempts) == (
        "completed",
        2,
    )

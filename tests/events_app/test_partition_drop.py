"""Retention's drop of a whole partition (PostgreSQL) beside the writers.

The drop DETACHes first, holding no other table lock while it waits, then counts and drops the
detached table: a worker updating events through the events table meanwhile is neither blocked
for the count nor part of a deadlock (a review found both with the earlier order: SHARE on the
partition for the count, then DETACH). A drop interrupted after the DETACH is finished by the
next run; a detached partition found holding an event to keep is attached again.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.utils import timezone

import events_app.retention as retention_module
from events_app.models import Event, EventStatus, PurgedEventCount
from events_app.partitions.upkeep import (
    TABLE,
    interval_end,
    interval_start,
    partition_name,
    partitions_ensure,
)
from events_app.retention import retention_purge
from signals_app.models import Signal
from tests.conftest import ApiClient
from tests.events_app.test_partitions import needs_postgres, processed, received, relkind, send

pytestmark = pytest.mark.postgres

DAY = timedelta(days=1)


@pytest.fixture
def old_month(visit: Signal) -> tuple[datetime, datetime]:
    """The bounds of a month 150 days ago, its partition made (and the next month's)."""
    m0 = interval_start(timezone.now() - 150 * DAY, "month")
    partitions_ensure(now=m0, ahead=1)
    return m0, interval_end(m0, "month")


def test_a_partition_drop_neither_blocks_nor_deadlocks_a_worker_updating_events(
    transactional_db: None,
    api: ApiClient,
    visit: Signal,
    retention: Any,
    old_month: tuple[datetime, datetime],
    monkeypatch: Any,
) -> None:
    needs_postgres()
    m0, m1 = old_month
    received(processed(api, 2), m0 + 2 * DAY)
    pending = send(api, 99)  # this month's partition: a worker is about to process it

    counting = threading.Event()
    real_sql = retention_module._partition_drop_sql

    def slow_count(name: str) -> str:
        counting.set()  # the partition is detached; its count now takes a while
        time.sleep(1.5)
        return real_sql(name)

    monkeypatch.setattr(retention_module, "_partition_drop_sql", slow_count)
    errors: dict[str, BaseException] = {}
    dropped: list[str] = []
    waited: list[float] = []

    def purge() -> None:
        try:
            dropped.extend(retention_purge(now=m1 + 20 * DAY).dropped_partitions)
        except BaseException as exc:
            errors["retention"] = exc
        finally:
            connections.close_all()

    def worker() -> None:
        try:
            counting.wait(10)
            began = time.monotonic()
            # The pipeline's claim by id through the events table (all partitions locked).
            Event.objects.filter(pk=pending, status=EventStatus.PENDING).update(
                status=EventStatus.PROCESSING
            )
            waited.append(time.monotonic() - began)
        except BaseException as exc:
            errors["worker"] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=purge), threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == {}, {k: f"{type(v).__name__}: {v}" for k, v in errors.items()}
    assert dropped == [partition_name(m0, m1)]
    assert waited and waited[0] < 1.0, f"the worker waited {waited} s for the count"
    assert Event.objects.get(pk=pending).status == EventStatus.PROCESSING


def test_a_drop_interrupted_after_the_detach_is_finished_by_the_next_run(
    db: None, api: ApiClient, visit: Signal, retention: Any, old_month: tuple[datetime, datetime]
) -> None:
    needs_postgres()
    m0, m1 = old_month
    received(processed(api, 3), m0 + 2 * DAY)
    name = partition_name(m0, m1)
    with connection.cursor() as cursor:  # what a process killed between the two steps leaves
        cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}"')
    assert relkind(name) == "r"

    result = retention_purge(now=m1 + 20 * DAY)

    assert result.dropped_partitions == [name]
    assert result.completed_events == 3
    assert relkind(name) is None
    assert PurgedEventCount.objects.get().count == 3


def test_a_detached_partition_holding_an_event_to_keep_is_attached_again(
    db: None, api: ApiClient, visit: Signal, retention: Any, old_month: tuple[datetime, datetime]
) -> None:
    """A reprocess made an expired event `pending` between the drop's look and its DETACH."""
    needs_postgres()
    m0, m1 = old_month
    done = processed(api, 2)
    again = send(api, 50)
    received([*done, again], m0 + 2 * DAY)
    name = partition_name(m0, m1)
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE "{TABLE}" DETACH PARTITION "{name}"')

    result = retention_purge(now=m1 + 20 * DAY)

    assert name not in result.dropped_partitions
    with connection.cursor() as cursor:
        cursor.execute("SELECT relispartition FROM pg_class WHERE relname = %s", [name])
        assert cursor.fetchone() == (True,)
    assert Event.objects.get(pk=again).status == EventStatus.PENDING
    assert Event.objects.filter(pk__in=done).count() == 0  # its expired rows: purged by rows

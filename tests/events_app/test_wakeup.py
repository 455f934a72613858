"""Coalesced wake-ups: while a single-event message waits unstarted, ingest publishes no other.

Events go through the real HTTP stack; the after-commit publishes run
(django_capture_on_commit_callbacks) against a mocked `delay`; the task runs in-process. Real
workers: tests/events_app/test_worker_e2e.py and tests/reliability.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache

from events_app.models import Event, MetricAggregate
from events_app.pipeline.queue import WAKEUP_KEY
from events_app.tasks import process_event_task
from tests.conftest import ApiClient, Tenant
from tests.events_app.test_pipeline import ingest

pytestmark = pytest.mark.usefixtures("fresh_processor")


@pytest.fixture
def delay() -> Iterator[mock.MagicMock]:
    with mock.patch("events_app.tasks.process_event_task.delay") as published:
        yield published


@pytest.fixture
def calls(tenant: Tenant):
    return tenant.signal(
        "calls", type="metric", aggregation="sum", period="day", rate_limit_per_minute=100000
    )


def received(event_id: str) -> str:
    """The event's received_at as its message carries it (it names the event's partition)."""
    return Event.objects.get(pk=event_id).received_at.isoformat()


def ingest_committed(api: ApiClient, capture: Any, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        with capture(execute=True):
            ids.append(ingest(api, "calls", {"value": 1}))
    return ids


def test_events_arriving_while_a_wakeup_waits_publish_nothing_more(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks
) -> None:
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 5)
    assert delay.call_args_list == [mock.call(ids[0], received(ids[0]))]


def test_the_one_wakeup_processes_every_event_whose_publish_was_skipped(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks
) -> None:
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 5)
    process_event_task.run(*delay.call_args.args)
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"completed"}
    assert MetricAggregate.objects.get().sum == 5


def test_once_a_worker_starts_the_wakeup_the_next_event_publishes_again(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks
) -> None:
    first = ingest_committed(api, django_capture_on_commit_callbacks, 1)
    process_event_task.run(first[0])
    second = ingest_committed(api, django_capture_on_commit_callbacks, 2)
    assert delay.call_args_list == [
        mock.call(first[0], received(first[0])),
        mock.call(second[0], received(second[0])),
    ]


def test_a_publish_that_failed_leaves_the_next_event_to_publish(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks
) -> None:
    delay.side_effect = [ConnectionError("broker down"), None]
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 2)
    assert delay.call_args_list == [
        mock.call(ids[0], received(ids[0])),
        mock.call(ids[1], received(ids[1])),
    ]


def test_a_cache_that_fails_means_a_message_per_event(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks
) -> None:
    with mock.patch.object(cache, "add", side_effect=ConnectionError("cache down")):
        ids = ingest_committed(api, django_capture_on_commit_callbacks, 3)
    assert [c.args[0] for c in delay.call_args_list] == ids


def test_without_draining_every_event_has_its_own_message(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks, settings
) -> None:
    settings.BIGMIND_DRAIN_CHUNK_SIZE = 0
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 3)
    assert [c.args[0] for c in delay.call_args_list] == ids


def test_a_drain_out_of_time_hands_over_to_a_new_wakeup(
    api: ApiClient, calls, delay, django_capture_on_commit_callbacks, settings
) -> None:
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 3)
    settings.BIGMIND_DRAIN_SECONDS = 0
    delay.reset_mock()
    process_event_task.run(ids[0])
    assert Event.objects.get(pk=ids[1]).status == "pending"
    assert delay.call_args_list == [mock.call("")]  # a wake-up: no id, the drain is the work
    assert cache.get(WAKEUP_KEY) is not None
    settings.BIGMIND_DRAIN_SECONDS = 5
    process_event_task.run("")
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"completed"}


def test_a_wakeup_without_an_id_is_no_malformed_id(
    api: ApiClient, calls, caplog, django_capture_on_commit_callbacks, delay
) -> None:
    ids = ingest_committed(api, django_capture_on_commit_callbacks, 2)
    process_event_task.run("")
    assert "malformed" not in caplog.text
    assert set(Event.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"completed"}

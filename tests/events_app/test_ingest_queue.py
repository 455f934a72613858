"""Accepted events are queued once, by id, after their transaction commits."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from kombu.exceptions import OperationalError

from bigmind.celery import app as celery_app
from events_app.models import Event
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

URL = "/v1/events"
EVENTS_QUEUE = next(q for q in celery_app.conf.task_queues if q.name == "events.process")


def broker_purge() -> None:
    with celery_app.connection_for_write() as conn:
        queue = conn.SimpleQueue(EVENTS_QUEUE)
        queue.clear()
        queue.close()


def broker_drain(expect: int) -> list[tuple[str, list]]:
    """Read what the broker holds for the processing queue (task name and args per message)."""
    found: list[tuple[str, list]] = []
    with celery_app.connection_for_read() as conn:
        queue = conn.SimpleQueue(EVENTS_QUEUE)
        try:
            while True:
                # Wait for what we expect, then a short while more to catch extras.
                message = queue.get(block=True, timeout=5 if len(found) < expect else 0.5)
                args, _kwargs, _embed = message.payload
                found.append((message.headers["task"], args))
                message.ack()
        except queue.Empty:
            pass
        finally:
            queue.close()
    return found


@pytest.fixture
def signal(tenant: Tenant):
    return tenant.signal("visited-documentation-page")


def test_the_task_has_a_stable_name_and_its_own_queue() -> None:
    from events_app.tasks import process_event_task

    assert process_event_task.name == "events.process_event"
    assert (
        celery_app.amqp.router.route({}, "events.process_event")["queue"].name == "events.process"
    )
    assert process_event_task.acks_late is True


def test_an_accepted_event_is_published_once_with_its_id_after_commit(
    api: ApiClient, signal, django_capture_on_commit_callbacks
) -> None:
    broker_purge()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post(URL, SEED_REQUEST)
        # Nothing reaches the broker before the transaction commits.
        assert broker_drain(expect=0) == []
    event_id = response.json()["data"]["id"]
    assert len(callbacks) == 1

    callbacks[0]()
    # With the event's received_at, which names its partition for the worker's claim.
    received_at = Event.objects.get(pk=event_id).received_at.isoformat()
    assert broker_drain(expect=1) == [("events.process_event", [event_id, received_at])]


def test_replays_and_refusals_queue_nothing(
    api: ApiClient, signal, django_capture_on_commit_callbacks
) -> None:
    assert api.post(URL, SEED_REQUEST, **{"Idempotency-Key": "once"}).status_code == 202
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert api.post(URL, SEED_REQUEST, **{"Idempotency-Key": "once"}).status_code == 200
        assert api.post(URL, {**SEED_REQUEST, "data": []}).status_code == 400
        assert api.post(URL, {**SEED_REQUEST, "signal": "nope"}).status_code == 404
    assert callbacks == []


def test_a_broker_outage_at_commit_keeps_the_event_and_answers_202(
    api: ApiClient, signal, django_capture_on_commit_callbacks, caplog
) -> None:
    caplog.set_level(logging.ERROR)
    with (
        mock.patch(
            "events_app.tasks.process_event_task.delay", side_effect=OperationalError("broker down")
        ),
        django_capture_on_commit_callbacks(execute=True),
    ):
        response = api.post(URL, SEED_REQUEST)

    assert response.status_code == 202
    stored = Event.objects.get(pk=response.json()["data"]["id"])
    assert stored.status == "pending"  # left for the pending sweep to re-queue
    assert "broker down" in caplog.text


def test_a_database_outage_is_a_503_in_the_envelope(api: ApiClient, signal) -> None:
    from django.db import OperationalError as DbOperationalError

    with mock.patch(
        "events_app.ingest.services.events_store",
        side_effect=DbOperationalError("connection refused"),
    ):
        response = api.post(URL, SEED_REQUEST)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert response.json() == {
        "success": False,
        "error": "Service temporarily unavailable: the database cannot be reached",
        "code": "service_unavailable",
    }
    assert Event.objects.count() == 0

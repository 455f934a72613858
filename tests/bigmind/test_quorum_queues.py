"""RabbitMQ quorum queues behind CELERY_QUORUM_QUEUES=true (bigmind/queues.py, docs/brokers.md).

The declarations are checked here on any broker; the live test runs where the Celery broker is
RabbitMQ with CELERY_QUORUM_QUEUES=true (CI's RabbitMQ step, on a virtual host of its own), and
asks RabbitMQ itself what type the queues are, with a real worker consuming them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amqp.exceptions import PreconditionFailed
from django.conf import settings
from django.utils import timezone
from kombu import Queue

from bigmind.celery import app
from bigmind.queues import QUEUES, quorum_conf, task_queues
from events_app.ingest.store import crm_record_touch
from events_app.models import Event, EventStatus
from events_app.pipeline.queue import event_enqueue_later
from tests.conftest import Tenant, bulk_insert_events
from tests.harness import wait_for, worker_env, worker_start

ROOT = Path(__file__).resolve().parents[2]


def test_quorum_queues_are_durable_quorum_queues_on_topic_exchanges() -> None:
    queues = task_queues(quorum=True)

    assert [queue.name for queue in queues] == [name for name, _, _ in QUEUES]
    for queue in queues:
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.durable and not queue.auto_delete and not queue.exclusive
        # Celery's native delayed delivery (countdowns) cannot route through direct exchanges.
        assert queue.exchange.type == "topic"
        assert queue.exchange.durable


def test_classic_queues_stay_as_they_were() -> None:
    for queue in task_queues(quorum=False):
        assert not queue.queue_arguments
        assert queue.exchange.type == "direct"
        assert queue.durable


def test_celery_quorum_queues_reaches_celery_with_what_quorum_queues_require() -> None:
    """In a fresh process, as a worker reads it (the test process has its settings already)."""
    script = (
        "import json; from bigmind.celery import app; c = app.conf; print(json.dumps({"
        "'queues': [[q.name, q.queue_arguments, q.exchange.type] for q in c.task_queues], "
        "'global_qos_off': c.worker_detect_quorum_queues, "
        "'default_type': c.task_default_queue_type, "
        "'delayed': c.broker_native_delayed_delivery_queue_type}))"
    )
    env = {
        **os.environ,
        "CELERY_QUORUM_QUEUES": "true",
        "DJANGO_SETTINGS_MODULE": "bigmind.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    conf = json.loads(result.stdout.strip().splitlines()[-1])

    assert conf["queues"] == [[name, {"x-queue-type": "quorum"}, "topic"] for name, _, _ in QUEUES]
    assert conf["global_qos_off"] is True
    assert conf["default_type"] == "quorum"
    assert conf["delayed"] == "quorum"
    assert set(quorum_conf()) == {
        "task_default_queue_type",
        "task_default_exchange_type",
        "worker_detect_quorum_queues",
        "broker_native_delayed_delivery_queue_type",
    }


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_rabbitmq_holds_quorum_queues_and_a_countdown_arrives_when_due(
    celery_stack: None, tenant: Tenant, tmp_path: Path
) -> None:
    if not settings.CELERY_BROKER_URL.startswith("amqp") or not settings.BIGMIND_QUORUM_QUEUES:
        pytest.skip("needs CELERY_BROKER_URL=amqp://... with CELERY_QUORUM_QUEUES=true")
    signal = tenant.signal("quorum-visit")
    record = crm_record_touch(
        organization_id=tenant.organization.pk,
        identity_type="account",
        identity_id="acc-quorum",
        seen_at=timezone.now(),
    )
    bulk_insert_events(
        record_id=record.pk,
        signals=[signal],
        count=1,
        now=timezone.now(),
        status="'pending'",
        processed_at="NULL",
    )
    event = Event.objects.get()

    worker = worker_start(env=worker_env(tmp_path / "var"), log_dir=tmp_path)
    try:
        worker.wait_ready()
        # Declaring a queue again with other arguments is refused, naming the queue's type.
        with app.connection_for_write() as conn:
            for queue in app.conf.task_queues:
                classic = Queue(
                    queue.name,
                    queue.exchange,
                    routing_key=queue.routing_key,
                    queue_arguments={"x-queue-type": "classic"},
                )
                with pytest.raises(PreconditionFailed, match="current is 'quorum'"):
                    classic.bind(conn.channel()).declare()

        # A countdown (the pipeline's retries) waits in RabbitMQ, not in the worker: the worker
        # receives the message only once it is due (native delayed delivery).
        sent = time.monotonic()
        event_enqueue_later(event_id=event.pk, countdown=3)
        time.sleep(1.5)
        assert worker.received("events.process_event") == 0, worker.log()

        def completed() -> bool:
            event.refresh_from_db()
            return event.status == EventStatus.COMPLETED

        wait_for(completed, timeout=60, interval=0.2, message=lambda: worker.log()[-3000:])
        assert time.monotonic() - sent >= 2.5
        assert worker.received("events.process_event") == 1
        assert "Direct exchanges are not supported" not in worker.log()
    finally:
        worker.stop()

"""Webhooks end to end with real Celery workers: a processing worker on `events.process` and a
`webhooks` worker (prefork, as deployed), PostgreSQL and a network broker; events go in
through this process's HTTP stack and the deliveries come out at real local receivers.

Needs PostgreSQL and a network broker, like tests/events_app/test_worker_e2e.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from events_app.models import Event, WebhookDelivery
from events_app.webhooks.endpoints import endpoint_create
from events_app.webhooks.signing import verify
from signals_app.models import Signal
from tests.conftest import ApiClient, Tenant
from tests.events_app.test_worker_e2e import event_body, post_batch, wait_completed
from tests.harness import Worker, wait_for, worker_env, worker_start, workers_stop
from tests.webhook_receiver import receiver_running

pytestmark = [pytest.mark.worker, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Start = Callable[..., Worker]


@pytest.fixture
def start(celery_stack: None, tmp_path: Path, settings: object) -> Iterator[Start]:
    started: list[Worker] = []
    env = {
        **worker_env(tmp_path / "var"),
        "BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "BIGMIND_WEBHOOK_MAX_IN_FLIGHT_PER_ENDPOINT": "1",
        "BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS": "0.2",
        "BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    }
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True  # type: ignore[attr-defined]

    def start(*, queues: tuple[str, ...], pool: str = "prefork", concurrency: int = 1) -> Worker:
        worker = worker_start(
            env=env, log_dir=tmp_path, queues=queues, pool=pool, concurrency=concurrency
        )
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    workers_stop(started)
    for worker in started:
        print(f"===== worker {worker.name} (exit {worker.process.returncode}) =====")
        print(worker.log())


def test_a_hanging_receiver_costs_one_time_out_and_never_slows_processing(
    start: Start, api: ApiClient, tenant: Tenant
) -> None:
    signal: Signal = tenant.signal("visit", rate_limit_per_minute=100_000)
    processing = start(queues=("default", "events.process"))
    webhooks = start(queues=("webhooks",), concurrency=4)
    with receiver_running(default="hang") as hanging, receiver_running() as healthy:
        stuck = endpoint_create(
            organization=tenant.organization, url=hanging.url, events=["event.completed"]
        )
        fine = endpoint_create(
            organization=tenant.organization, url=healthy.url, events=["event.completed"]
        )
        started = time.monotonic()
        ids = [
            event_id
            for batch in range(2)
            for event_id in post_batch(
                api, [event_body(signal, {"page": f"/{batch}/{n}"}) for n in range(100)]
            )
        ]
        # Every event is processed, and the healthy endpoint has all its deliveries, while the
        # hanging receiver still holds its first request (an attempt lasts 10 s).
        wait_completed(ids, timeout=60)
        received = healthy.wait_for(200, timeout=60)
        assert time.monotonic() - started < 9.5, "processing or the healthy endpoint waited"
        # The cap (1 in flight per endpoint): one request at the hanging receiver, not four.
        assert len(hanging.received) == 1
        for request in received:
            assert verify(request.headers["Bigmind-Signature"], request.body, fine.secret)
        assert {r.json["data"]["event"]["id"] for r in received} == set(ids)

        # The attempt ends at the 10 s deadline, recorded as a time-out, and is retried.
        def timed_out() -> bool:
            return WebhookDelivery.objects.filter(
                endpoint=stuck.endpoint, last_error="Timed out after 10 s"
            ).exists()

        wait_for(timed_out, timeout=20, interval=0.2, message="the hanging attempt to end")
        elapsed = time.monotonic() - started
        assert 9.5 < elapsed < 20
    assert processing.received("webhooks.deliver") == 0  # never on the processing worker
    assert webhooks.received("events.process_event") == 0
    assert Event.objects.filter(status="completed").count() == 200
    assert WebhookDelivery.objects.filter(endpoint=fine.endpoint, status="succeeded").count() == 200

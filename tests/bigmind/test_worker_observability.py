"""A real Celery worker (prefork, two children) serving its metrics on BIGMIND_WORKER_METRICS_PORT
in multiprocess mode, and writing one JSON line per task that names the HTTP request which
queued it. Needs PostgreSQL and a network broker, like tests/events_app/test_worker_e2e.py."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from events_app.models import Event
from tests.conftest import ApiClient, Tenant
from tests.harness import Worker, free_port, wait_for, worker_env, worker_start

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TOKEN = "worker-scrape-token"


def _get(url: str, **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (local)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def worker(celery_stack: None, tmp_path: Path) -> Iterator[tuple[Worker, int, Path]]:
    port = free_port()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_1.db").write_bytes(b"left by an earlier run")
    process = worker_start(
        env={
            **worker_env(tmp_path / "var"),
            "LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
            "BIGMIND_WORKER_METRICS_PORT": str(port),
            # Not this machine: only the token opens it.
            "BIGMIND_METRICS_ALLOWED_NETWORKS": "10.0.0.0/8",
            "BIGMIND_METRICS_TOKEN": TOKEN,
        },
        log_dir=tmp_path,
        concurrency=2,
    )
    try:
        process.wait_ready()
        yield process, port, multiproc
    finally:
        process.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


SUCCEEDED = (
    "bigmind_worker_tasks_total",
    (("outcome", "success"), ("task", "events.process_event")),
)


def test_a_worker_serves_its_pools_metrics_and_logs_each_task_as_json(
    worker: tuple[Worker, int, Path], api: ApiClient, tenant: Tenant
) -> None:
    process, port, multiproc = worker
    assert not (multiproc / "counter_1.db").exists()  # emptied at start
    tenant.signal("visit", rate_limit_per_minute=1000)
    ids = []
    for n in range(4):
        response = api.post(
            "/v1/events",
            {"signal": "visit", "identity": {"type": "account", "id": f"a-{n}"}, "data": {}},
            **{"X-Request-ID": f"req-worker-{n}"},
        )
        assert response.status_code == 202
        ids.append(response.json()["data"]["id"])

    wait_for(
        lambda: Event.objects.filter(pk__in=ids, status="completed").count() == len(ids),
        timeout=60,
        message=lambda: f"events to complete; worker log:\n{process.log()[-4000:]}",
    )
    url = f"http://127.0.0.1:{port}/metrics"
    status, body = _get(url)
    assert status == 403 and json.loads(body)["code"] == "forbidden"

    def scraped() -> Any:
        status, text = _get(url, Authorization=f"Bearer {TOKEN}")
        assert status == 200, text
        samples = _samples(text)
        completed = samples.get(("bigmind_events_completed_total", (("signal_type", "event"),)), 0)
        # The events count as completed inside the task; the task's own outcome is counted after
        # it returns (task_postrun), so a scrape can fall between the two.
        finished = samples.get(SUCCEEDED, 0)
        return samples if completed >= len(ids) and finished >= 1 else None

    samples = wait_for(scraped, timeout=20, message="the worker's metrics to show the events")
    assert samples[SUCCEEDED] >= 1
    assert samples[
        ("bigmind_event_processing_latency_seconds_count", (("signal_type", "event"),))
    ] >= len(ids)
    # The backlog is the web's to report, not every worker's.
    assert not any(name == "bigmind_events_backlog" for name, _ in samples)

    log = process.log()
    task_lines = [
        json.loads(line)
        for line in log.splitlines()
        if line.startswith("{") and '"logger": "bigmind.task"' in line
    ]
    # The line of the task that processed each event (a task may drain others' events; the
    # message of a drained event then finds nothing to do, and its line has no outcomes).
    by_event = {
        event_id: line
        for line in task_lines
        if "event_outcomes" in line
        for event_id in line["event_ids"]
    }
    for event_id in ids:
        line = by_event[event_id]
        assert line["task"] == "events.process_event"
        assert line["outcome"] == "success"
        assert line["organizations"] == ["acme"] and line["signals"] == ["visit"]
    # The task that a request's message started names that request.
    request_ids = {line["request_id"] for line in task_lines}
    assert request_ids & {f"req-worker-{n}" for n in range(len(ids))}
    # Celery's own records go through the same JSON formatter.
    assert any('"logger": "celery.' in line for line in log.splitlines() if line.startswith("{"))

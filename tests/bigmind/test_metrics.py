"""GET /metrics (bigmind/metrics.py): the text parses, the counters move after real API calls and
real pipeline runs, and only allowed clients may read it.

Counters live for the whole test process, so every assertion is on a difference: a scrape
before, the requests, a scrape after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.test import Client, override_settings
from prometheus_client.parser import text_string_to_metric_families

from events_app.models import Event
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import (
    InsightDraft,
    PermanentProcessingError,
    ProcessingInput,
    TransientProcessingError,
    processor_get,
)
from events_app.tasks import process_event_task
from tests.bigmind.conftest import event_body
from tests.conftest import ApiClient, Tenant
from tests.harness import free_port

pytestmark = pytest.mark.usefixtures("pipeline_in_process")

REPO_ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(client: Client | None = None, **extra: Any) -> Samples:
    response = (client or Client()).get("/metrics", **extra)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Delta:
    """Scrape now; `of(...)` answers how much a sample grew since."""

    def __init__(self) -> None:
        self.before = scrape()

    def of(self, name: str, **labels: str) -> float:
        return value(scrape(), name, **labels) - value(self.before, name, **labels)


class FailingProcessor:
    name = "failing"
    version = "1"
    error: Exception = PermanentProcessingError("the AI said no")

    def insight(self, job: ProcessingInput) -> InsightDraft:
        raise FailingProcessor.error


# --- The text and what it counts -------------------------------------------------------------


@pytest.mark.django_db
def test_the_text_parses_and_lists_every_metric(client: Client) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    names = {family.name for family in text_string_to_metric_families(response.content.decode())}
    assert {
        "bigmind_http_requests",
        "bigmind_http_request_duration_seconds",
        "bigmind_events_accepted",
        "bigmind_events_rejected",
        "bigmind_events_schema_invalid",
        "bigmind_events_rate_limited",
        "bigmind_events_completed",
        "bigmind_events_failed",
        "bigmind_events_retried",
        "bigmind_event_processing_latency_seconds",
        "bigmind_worker_tasks",
        "bigmind_worker_task_duration_seconds",
        "bigmind_events_backlog",
        "bigmind_events_backlog_query_ok",
        "bigmind_events_oldest_pending_age_seconds",
    } <= names


def test_requests_are_counted_by_url_pattern_and_status_never_by_raw_path(
    api: ApiClient, tenant: Tenant
) -> None:
    delta = Delta()
    for event_id in ("0190c1c2-0000-7000-8000-000000000001", "something-else", "../x"):
        response = api.client.get(
            f"/v1/events/{event_id}", headers={"Authorization": f"Bearer {tenant.raw_key}"}
        )
        assert response.status_code == 404
    api.client.get("/no/such/page")
    assert (
        delta.of(
            "bigmind_http_requests_total",
            method="GET",
            route="/v1/events/<path:event_id>",
            status="404",
        )
        == 3
    )
    assert (
        delta.of("bigmind_http_requests_total", method="GET", route="<unmatched>", status="404")
        == 1
    )
    text = Client().get("/metrics").content.decode()
    assert "something-else" not in text and "no/such/page" not in text
    assert (
        delta.of(
            "bigmind_http_request_duration_seconds_count",
            method="GET",
            route="/v1/events/<path:event_id>",
        )
        == 3
    )


def test_an_unknown_http_method_does_not_become_a_label(api: ApiClient) -> None:
    delta = Delta()
    api.client.generic("BREW", "/v1/events", headers={"Authorization": f"Bearer {api.raw_key}"})
    assert (
        delta.of("bigmind_http_requests_total", method="OTHER", route="/v1/events", status="405")
        == 1
    )


def test_accepted_events_are_counted_per_signal_type(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visit")
    tenant.signal("calls", type="metric")
    delta = Delta()
    assert api.post("/v1/events", event_body("visit")).status_code == 202
    assert api.post("/v1/events", event_body("calls", data={"value": 3})).status_code == 202
    # An idempotent replay stores nothing: not counted again.
    for _ in range(2):
        api.post("/v1/events", event_body("visit", idempotency_key="k-1"))
    assert delta.of("bigmind_events_accepted_total", signal_type="event") == 2
    assert delta.of("bigmind_events_accepted_total", signal_type="metric") == 1
    assert (
        delta.of("bigmind_http_requests_total", method="POST", route="/v1/events", status="202")
        == 3
    )


def test_refusals_are_counted_by_their_error_code(
    api: ApiClient, anon: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visit", schema={"type": "object", "required": ["page"]})
    delta = Delta()
    assert api.post("/v1/events", event_body("nope")).status_code == 404
    assert api.post("/v1/events", event_body("visit")).status_code == 400
    assert api.post_raw("/v1/events", "{not json").status_code == 400
    assert anon.post("/v1/events", event_body("visit")).status_code == 401
    assert ApiClient("sk_wrong").post("/v1/events", event_body("visit")).status_code == 401
    assert delta.of("bigmind_events_rejected_total", reason="signal_not_found") == 1
    assert delta.of("bigmind_events_rejected_total", reason="schema_validation_failed") == 1
    assert delta.of("bigmind_events_rejected_total", reason="missing_api_key") == 1
    assert delta.of("bigmind_events_rejected_total", reason="invalid_api_key") == 1
    assert delta.of("bigmind_events_rejected_total", reason="invalid_json") == 1


def test_rate_limited_requests_are_counted_apart_from_rejections(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visit", rate_limit_per_minute=1)
    delta = Delta()
    assert api.post("/v1/events", event_body()).status_code == 202
    assert api.post("/v1/events", event_body()).status_code == 429
    assert delta.of("bigmind_events_rate_limited_total", signal_type="event") == 1
    assert delta.of("bigmind_events_rejected_total", reason="rate_limited") == 0


def test_batch_items_are_counted_one_by_one(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visit", rate_limit_per_minute=2)
    tenant.signal("level", type="state")
    delta = Delta()
    response = api.post(
        "/v1/events/batch",
        {
            "events": [
                event_body("visit"),
                event_body("level", data={"color": "red"}),
                event_body("nope"),
                event_body("visit"),
                event_body("visit"),  # over the budget of 2
            ]
        },
    )
    assert response.status_code == 207
    assert delta.of("bigmind_events_accepted_total", signal_type="event") == 2
    assert delta.of("bigmind_events_accepted_total", signal_type="state") == 1
    assert delta.of("bigmind_events_rejected_total", reason="signal_not_found") == 1
    assert delta.of("bigmind_events_rate_limited_total", signal_type="event") == 1
    # A batch refused whole counts once, under its code.
    assert api.post("/v1/events/batch", {"events": []}).status_code == 400
    assert delta.of("bigmind_events_rejected_total", reason="invalid_batch") == 1


def test_processing_outcomes_and_latency_are_counted_per_signal_type(
    api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    tenant.signal("visit")
    delta = Delta()
    done = api.post("/v1/events", event_body()).json()["data"]["id"]
    events_process(event_ids=[done])
    assert Event.objects.get(pk=done).status == "completed"
    assert delta.of("bigmind_events_completed_total", signal_type="event") == 1
    assert delta.of("bigmind_event_processing_latency_seconds_count", signal_type="event") == 1
    assert (
        delta.of("bigmind_event_processing_latency_seconds_bucket", signal_type="event", le="+Inf")
        == 1
    )

    settings.BIGMIND_PROCESSOR = f"{__name__}.FailingProcessor"
    processor_get.cache_clear()
    FailingProcessor.error = TransientProcessingError("try later")
    retried = api.post("/v1/events", event_body()).json()["data"]["id"]
    events_process(event_ids=[retried])
    assert Event.objects.get(pk=retried).status == "pending"
    assert delta.of("bigmind_events_retried_total") == 1

    FailingProcessor.error = PermanentProcessingError("the AI said no")
    failed = api.post("/v1/events", event_body()).json()["data"]["id"]
    events_process(event_ids=[failed])
    assert Event.objects.get(pk=failed).status == "failed"
    assert delta.of("bigmind_events_failed_total", signal_type="event") == 1
    # Neither a retry nor a failure is a completion.
    assert delta.of("bigmind_events_completed_total", signal_type="event") == 1


def test_a_reprocessed_event_counts_as_completed_but_not_in_the_latency(
    api: ApiClient, tenant: Tenant
) -> None:
    from events_app.pipeline.reprocess import events_reprocess

    tenant.signal("visit")
    event_id = api.post("/v1/events", event_body()).json()["data"]["id"]
    events_process(event_ids=[event_id])
    delta = Delta()
    events_reprocess(events=Event.objects.filter(pk=event_id))
    events_process(event_ids=[event_id])
    assert Event.objects.get(pk=event_id).status == "completed"
    assert delta.of("bigmind_events_completed_total", signal_type="event") == 1
    assert delta.of("bigmind_event_processing_latency_seconds_count", signal_type="event") == 0


def test_worker_task_outcomes_are_counted_by_task_name(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visit")
    event_id = api.post("/v1/events", event_body()).json()["data"]["id"]
    delta = Delta()
    # apply(): the task runs here, through Celery's tracer and its signals.
    process_event_task.apply(args=[event_id])
    process_event_task.apply(args=[])  # a malformed message: the task raises
    assert (
        delta.of("bigmind_worker_tasks_total", task="events.process_event", outcome="success") == 1
    )
    assert (
        delta.of("bigmind_worker_tasks_total", task="events.process_event", outcome="failure") == 1
    )
    assert delta.of("bigmind_worker_task_duration_seconds_count", task="events.process_event") == 2


def test_the_backlog_is_read_at_scrape_time_and_capped(
    api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    tenant.signal("visit")
    for _ in range(3):
        assert api.post("/v1/events", event_body()).status_code == 202
    samples = scrape()
    assert value(samples, "bigmind_events_backlog", status="pending") == 3
    assert value(samples, "bigmind_events_backlog", status="processing") == 0
    assert value(samples, "bigmind_events_backlog_query_ok") == 1
    assert value(samples, "bigmind_events_oldest_pending_age_seconds") >= 0
    settings.BIGMIND_METRICS_BACKLOG_CAP = 2
    assert value(scrape(), "bigmind_events_backlog", status="pending") == 2


@pytest.mark.django_db
def test_the_scrape_still_answers_when_the_backlog_cannot_be_read() -> None:
    from django.db import OperationalError

    with mock.patch("django.db.models.query.QuerySet.count", side_effect=OperationalError("down")):
        samples = scrape()
    assert value(samples, "bigmind_events_backlog_query_ok") == 0
    assert ("bigmind_events_backlog", (("status", "pending"),)) not in samples


# --- Who may read them -----------------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_a_client_outside_the_allowed_networks(client: Client) -> None:
    response = client.get("/metrics", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 403
    body = response.json()
    assert body["success"] is False and body["code"] == "forbidden"
    assert "bigmind_" not in response.content.decode()


@pytest.mark.django_db
def test_a_local_proxy_does_not_make_a_remote_client_local(client: Client) -> None:
    # nginx on this machine connects from 127.0.0.1 and names the real client.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="203.0.113.7").status_code == 403
    assert client.get("/metrics", HTTP_X_REAL_IP="203.0.113.7").status_code == 403
    assert client.get("/metrics", HTTP_FORWARDED="for=203.0.113.7").status_code == 403
    # Forwarded only through loopback: still this machine.
    assert client.get("/metrics", HTTP_X_FORWARDED_FOR="127.0.0.1, ::1").status_code == 200


@pytest.mark.django_db
def test_a_token_opens_it_from_anywhere_and_a_wrong_one_does_not(client: Client) -> None:
    remote = {"REMOTE_ADDR": "203.0.113.7"}
    with override_settings(BIGMIND_METRICS_TOKEN="scrape-token-123"):
        assert client.get("/metrics", **remote).status_code == 403
        wrong = client.get("/metrics", HTTP_AUTHORIZATION="Bearer nope", **remote)
        assert wrong.status_code == 403
        right = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-token-123", **remote)
        assert right.status_code == 200
        assert "bigmind_http_requests_total" in right.content.decode()


@pytest.mark.django_db
def test_with_no_allowed_network_only_the_token_opens_it(client: Client) -> None:
    with override_settings(BIGMIND_METRICS_ALLOWED_NETWORKS=[], BIGMIND_METRICS_TOKEN="t-1"):
        assert client.get("/metrics").status_code == 403  # even from loopback
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer t-1").status_code == 200
    with override_settings(BIGMIND_METRICS_ALLOWED_NETWORKS=["10.0.0.0/8"]):
        assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200
        assert client.get("/metrics").status_code == 403


@pytest.mark.django_db
def test_it_is_answered_whatever_the_host_header(client: Client) -> None:
    # Prometheus scrapes by IP, which is not in ALLOWED_HOSTS.
    assert client.get("/metrics", HTTP_HOST="10.1.2.3:8000").status_code == 200


# --- Several processes -----------------------------------------------------------------------

_FORKING_SCRIPT = textwrap.dedent(
    """
    import os, sys, django
    django.setup()
    from bigmind import metrics
    from events_app.metrics import EVENTS_ACCEPTED
    pids = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:
            EVENTS_ACCEPTED.labels("metric").inc(n + 1)
            metrics.WORKER_TASKS.labels("events.sweep", "success").inc()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
    sys.stdout.write(metrics.metrics_text(scrape_collectors=False).decode())
    """
)


def test_multiprocess_mode_adds_up_the_samples_of_every_process(tmp_path: Path) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "DJANGO_SETTINGS_MODULE": "bigmind.settings",
        "BIGMIND_VAR_DIR": str(tmp_path / "var"),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FORKING_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    samples = parse(done.stdout)
    assert value(samples, "bigmind_events_accepted_total", signal_type="metric") == 6
    assert value(samples, "bigmind_worker_tasks_total", task="events.sweep", outcome="success") == 3


def test_resetting_the_directory_keeps_only_this_processs_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigmind.metrics import multiprocess_dir_reset

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    multiprocess_dir_reset()  # creates it
    own = tmp_path / "prom" / f"counter_{os.getpid()}.db"
    stale = [tmp_path / "prom" / "counter_1.db", tmp_path / "prom" / "histogram_77.db"]
    for path in [own, *stale]:
        path.write_bytes(b"x")
    multiprocess_dir_reset()
    assert own.exists()
    assert not any(path.exists() for path in stale)


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (local)
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_gunicorn_workers_report_together_in_multiprocess_mode(tmp_path: Path) -> None:
    """Real gunicorn: whichever worker answers the scrape reports every worker's requests,
    including those of workers that were recycled (--max-requests) since."""
    multiproc = tmp_path / "prom"
    (multiproc).mkdir()
    (multiproc / "stale.db").write_bytes(b"left by an earlier run")
    conf = tmp_path / "gunicorn_test_conf.py"
    conf.write_text(
        "from bigmind.metrics import gunicorn_child_exit as child_exit  # noqa\n"
        "from bigmind.metrics import gunicorn_on_starting as on_starting  # noqa\n"
    )
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "BIGMIND_VAR_DIR": str(tmp_path / "var"),
        "DJANGO_DEBUG": "false",
    }
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(conf),
            "--workers",
            "2",
            # A worker is replaced after 10 requests: the 30 below are answered by at least
            # three processes, some of them gone (child_exit) by the time of the scrape.
            "--max-requests",
            "10",
            "--bind",
            f"127.0.0.1:{port}",
            "bigmind.wsgi",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(f"http://127.0.0.1:{port}/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.2)
        assert not (multiproc / "stale.db").exists()  # on_starting emptied the directory
        for _ in range(30):
            assert _get(f"http://127.0.0.1:{port}/no-such-page")[0] == 404
        # Several scrapes, by different workers: each one sees all 30 requests.
        for _ in range(5):
            status, body = _get(f"http://127.0.0.1:{port}/metrics")
            assert status == 200
            samples = parse(body.decode())
            assert (
                value(
                    samples,
                    "bigmind_http_requests_total",
                    method="GET",
                    route="<unmatched>",
                    status="404",
                )
                == 30
            )
        # Each worker process wrote its own file.
        assert len(list(multiproc.glob("counter_*.db"))) >= 3
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    # Each request was one JSON line on the server's output.
    lines = [
        json.loads(line)
        for line in (tmp_path / "gunicorn.log").read_text().splitlines()
        if line.startswith("{") and '"bigmind.request"' in line
    ]
    assert sum(1 for line in lines if line["route"] == "<unmatched>") == 30

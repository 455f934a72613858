"""Structured logs (bigmind/logs.py, bigmind/worker_signals.py): one JSON line per request and
per task with the fields an operator searches by, and never a payload or an API key."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from django.test import Client, override_settings

from bigmind.logs import ContextFilter, JsonFormatter
from events_app.tasks import process_event_task, process_events_task
from tests.bigmind.conftest import event_body as body
from tests.bigmind.test_health import closed_port, redis_cache
from tests.conftest import ApiClient, Tenant

pytestmark = pytest.mark.usefixtures("pipeline_in_process")

MARKER = "zq-marker-7c1e9a"


@dataclass
class Captured:
    json_stream: io.StringIO
    plain_stream: io.StringIO

    def lines(self, logger: str | None = None) -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in self.json_stream.getvalue().splitlines()]
        return [line for line in parsed if logger is None or line["logger"] == logger]

    def text(self) -> str:
        return self.json_stream.getvalue() + self.plain_stream.getvalue()


@pytest.fixture
def logs() -> Iterator[Captured]:
    """Every record of every logger at DEBUG, rendered as the console handler renders it
    (JSON) and as LOG_FORMAT=plain would."""
    captured = Captured(io.StringIO(), io.StringIO())
    json_handler = logging.StreamHandler(captured.json_stream)
    json_handler.setFormatter(JsonFormatter())
    json_handler.addFilter(ContextFilter())
    plain_handler = logging.StreamHandler(captured.plain_stream)
    plain_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(json_handler)
    root.addHandler(plain_handler)
    root.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        root.removeHandler(json_handler)
        root.removeHandler(plain_handler)
        root.setLevel(old_level)


def test_each_request_writes_one_json_line_with_its_fields(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit")
    response = api.post("/v1/events", body(), **{"X-Request-ID": "req-123"})
    assert response.status_code == 202
    [line] = logs.lines("bigmind.request")
    assert line == {
        "ts": line["ts"],
        "level": "INFO",
        "logger": "bigmind.request",
        "message": line["message"],
        "request_id": "req-123",
        "method": "POST",
        "route": "/v1/events",
        "status": 202,
        "duration_ms": line["duration_ms"],
        "outcome": "ok",
        "organization_id": tenant.organization.pk,
        "organization": "acme",
        "api_key_id": tenant.api_key.pk,
        "signal": "visit",
        "signal_type": "event",
        "event_ids": [response.json()["data"]["id"]],
        "event_count": 1,
    }
    assert line["ts"].endswith("Z")
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] > 0
    assert line["message"].startswith("POST /v1/events 202 ")


def test_a_refused_request_names_its_error_code(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit", rate_limit_per_minute=1)
    api.post("/v1/events", body())
    response = api.post("/v1/events", body())
    assert response.status_code == 429
    line = logs.lines("bigmind.request")[-1]
    assert (line["status"], line["outcome"], line["code"]) == (429, "refused", "rate_limited")
    assert (line["signal"], line["organization"]) == ("visit", "acme")
    assert line["request_id"] == response["X-Request-ID"]
    assert "event_ids" not in line


def test_a_batch_line_lists_its_events_and_signals(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit")
    tenant.signal("level", type="state")
    response = api.post("/v1/events/batch", {"events": [body(), body("level"), body("nope")]})
    assert response.status_code == 207
    [line] = logs.lines("bigmind.request")
    ids = [slot["id"] for slot in response.json()["data"] if slot.get("id")]
    assert line["event_ids"] == ids and line["event_count"] == 2
    assert line["signals"] == ["visit", "level"]
    assert line["rejected_items"] == 1
    assert line["route"] == "/v1/events/batch"


def test_records_written_during_a_request_carry_its_request_id(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit")
    # The rate-limit store is down: the request goes on, and says so in a warning.
    with override_settings(CACHES=redis_cache(closed_port())):
        response = api.post("/v1/events", body(), **{"X-Request-ID": "req-deep"})
    assert response.status_code == 202
    [warning] = [line for line in logs.lines() if "rate-limit store" in line["message"]]
    assert warning["request_id"] == "req-deep"
    assert warning["level"] == "WARNING"


def test_probes_are_not_logged(client: Client, logs: Captured, db: None) -> None:
    client.get("/healthz")
    client.get("/metrics")
    assert logs.lines("bigmind.request") == []


def test_a_task_writes_one_json_line_with_the_request_that_queued_it(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit")
    event_id = api.post("/v1/events", body()).json()["data"]["id"]
    result = process_event_task.apply(args=[event_id], headers={"bigmind_request_id": "req-9"})
    [line] = logs.lines("bigmind.task")
    assert line["task"] == "events.process_event"
    assert line["task_id"] == result.id
    assert line["request_id"] == "req-9"
    assert line["outcome"] == "success"
    assert line["event_ids"] == [event_id] and line["event_count"] == 1
    assert line["event_outcomes"] == {"completed": 1}
    assert line["signals"] == ["visit"] and line["organizations"] == ["acme"]
    assert line["duration_ms"] > 0
    # The pipeline's own records during the task carry its id.
    [done] = [
        r for r in logs.lines("events_app.pipeline.processing") if "completed" in r["message"]
    ]
    assert done["task_id"] == result.id


def test_a_task_that_finds_nothing_to_do_names_the_events_of_its_message(
    logs: Captured, db: None
) -> None:
    ids = ["0190c1c2-0000-7000-8000-00000000000a", "0190c1c2-0000-7000-8000-00000000000b"]
    process_events_task.apply(args=[ids])
    [line] = logs.lines("bigmind.task")
    assert line["event_ids"] == ids and line["outcome"] == "success"
    assert "event_outcomes" not in line


def test_a_failed_event_is_in_its_task_line(api: ApiClient, tenant: Tenant, logs: Captured) -> None:
    tenant.signal("calls", type="metric")
    event_id = api.post("/v1/events", body("calls")).json()["data"]["id"]  # no `value`
    process_event_task.apply(args=[event_id])
    [line] = logs.lines("bigmind.task")
    assert line["event_outcomes"] == {"failed": 1}
    assert line["signals"] == ["calls"]


def test_no_payload_and_no_api_key_ever_reach_a_log(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit", schema={"type": "object", "properties": {"page": {"type": "integer"}}})
    tenant.signal("calls", type="metric")
    secret = {"page": MARKER, "note": MARKER}
    # Accepted, refused by the schema, unknown signal, bad JSON, batch, validate, rate-limited.
    accepted = api.post("/v1/events", body("visit", data={"note": MARKER}, reference="r-1"))
    assert accepted.status_code == 202
    assert api.post("/v1/events", body("visit", data=secret)).status_code == 400
    assert api.post("/v1/events", body(f"nope-{MARKER}", data=secret)).status_code == 404
    assert api.post_raw("/v1/events", '{"data": "' + MARKER).status_code == 400
    batch = api.post(
        "/v1/events/batch",
        {"events": [body("visit", data={"note": MARKER}), body("visit", data=secret)]},
    )
    assert batch.status_code == 207
    assert api.post("/v1/events/validate", body("visit", data=secret)).status_code == 400
    # A metric whose value is the marker fails in processing, error and all.
    failing = api.post("/v1/events", body("calls", data={"value": MARKER})).json()["data"]["id"]
    # The key in the wrong place, and a revoked-looking guess.
    ApiClient(tenant.raw_key + "x").post("/v1/events", body("visit", data=secret))
    Client().get("/v1/signals", headers={"Authorization": tenant.raw_key})
    process_event_task.apply(args=[accepted.json()["data"]["id"]])
    process_event_task.apply(args=[failing])
    process_events_task.apply(args=[[slot["id"] for slot in batch.json()["data"] if "id" in slot]])

    text = logs.text()
    assert logs.lines("bigmind.request") and logs.lines("bigmind.task")  # it did log
    assert MARKER not in text
    assert tenant.raw_key not in text
    assert tenant.raw_key[3:] not in text  # not even without its prefix
    assert hashlib.sha256(tenant.raw_key.encode()).hexdigest() not in text
    assert tenant.api_key.key_hash not in text


def test_the_formatter_keeps_one_line_per_record_whatever_the_message() -> None:
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "a\nb \ud800 \x00 %s", ("é",), None
    )
    record.request = object()  # what Django's loggers attach: never dumped
    text = JsonFormatter().format(record)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "a\nb \ud800 \x00 é"
    assert "request" not in line


def test_a_server_error_is_logged_without_the_request_or_its_body(
    tenant: Tenant, logs: Captured
) -> None:
    tenant.signal("visit")
    client = Client(raise_request_exception=False)
    with mock.patch("events_app.api.events.event_ingest", side_effect=RuntimeError("boom")):
        response = client.post(
            "/v1/events",
            json.dumps(body(data={"note": MARKER})),
            content_type="application/json",
            headers={"Authorization": f"Bearer {tenant.raw_key}"},
        )
    assert response.status_code == 500
    [error] = logs.lines("django.request")
    assert error["level"] == "ERROR" and "RuntimeError: boom" in error["exc_info"]
    assert "request" not in error
    [line] = logs.lines("bigmind.request")
    assert (line["status"], line["outcome"], line["code"]) == (500, "error", "internal_error")
    assert MARKER not in logs.text() and tenant.raw_key not in logs.text()


def test_a_disallowed_host_is_one_request_line_without_a_traceback(
    client: Client, logs: Captured, db: None
) -> None:
    response = client.get("/v1/signals", HTTP_HOST="scanner.example")
    assert response.status_code == 400
    lines = logs.lines()
    assert [(line["logger"], line["code"]) for line in lines] == [
        ("bigmind.request", "invalid_host")
    ]
    assert "Traceback" not in logs.text() and "DisallowedHost" not in logs.text()


def test_a_request_id_with_a_trailing_newline_is_replaced(
    api: ApiClient, tenant: Tenant, logs: Captured
) -> None:
    """`$` would let "abc\\n" through: the whole id must match."""
    tenant.signal("visit")
    response = api.post("/v1/events", body(), **{"X-Request-ID": "abc\n"})
    assert response.status_code == 202
    assert re.fullmatch(r"[0-9a-f]{32}", response["X-Request-ID"]), response["X-Request-ID"]
    [line] = logs.lines("bigmind.request")
    assert line["request_id"] == response["X-Request-ID"]

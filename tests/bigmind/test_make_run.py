"""The server the way `make run` starts it (issue #12): `manage.py migrate`, `bootstrap_demo`,
then scripts/run_local.py (gunicorn with bigmind/gunicorn_conf.py, a Celery worker and beat) with
DJANGO_DEBUG=true and LOG_FORMAT=plain, on the embedded defaults in a folder of the test's own.
Real processes and real HTTP: chunked bodies are accepted, start-up prints no deprecation
warning, and each request is one log line. Also runserver, the other local server: a chunked
body it cannot read is refused plainly, and its request lines do not double ours."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import free_port

# One xdist worker runs the whole module, so its module-scoped server starts once, not once
# per worker that happens to get one of its tests.
pytestmark = pytest.mark.xdist_group("make-run")

ROOT = Path(__file__).resolve().parents[2]
DEMO_KEY = "sk_demo_local_only_not_for_production_000000"  # bootstrap_demo's fixed key
DEMO_SIGNAL = "visited-documentation-page"
STATIC_FILE = "/static/admin/css/base.css"


def make_run_env(var_dir: Path) -> dict[str, str]:
    """What `make run` exports, on a machine with nothing else set (no .env either)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "BIGMIND_", "CELERY_", "GUNICORN_", "LOG_"))
        and key
        not in ("DATABASE_URL", "REDIS_URL", "CACHE_URL", "WEB_CONCURRENCY", "PYTHONWARNINGS")
    }
    env.update(
        DJANGO_DEBUG="true",
        LOG_FORMAT="plain",
        BIGMIND_VAR_DIR=str(var_dir),
        BIGMIND_ENV_FILE="",
        # Two web processes instead of one per core plus one: the machine is shared.
        WEB_CONCURRENCY="2",
    )
    return env


def manage(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr


@dataclass
class Server:
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            if isinstance(body, list):  # sent as chunks, one per item, no Content-Length
                connection.request(
                    method, path, body=iter(body), headers=headers or {}, encode_chunked=True
                )
            else:
                connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()


def wait_until_serving(server: Server, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while True:
        assert proc.poll() is None, server.output()
        try:
            if server.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, server.output()
        time.sleep(0.3)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("make-run")
    env = make_run_env(folder / "var")
    port = free_port()
    manage(env, "migrate", "--noinput")
    manage(env, "bootstrap_demo", "--base-url", f"http://127.0.0.1:{port}")
    server = Server(port=port, log=folder / "make-run.log")
    with server.log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "scripts/run_local.py", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            wait_until_serving(server, proc, deadline)
            # The worker too: its start-up output is part of what is checked.
            while "celery@" not in server.output() or " ready." not in server.output():
                assert proc.poll() is None, server.output()
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.3)
            yield server
        finally:
            stop(proc)


def event(reference: str) -> dict[str, object]:
    return {
        "signal": DEMO_SIGNAL,
        "version": "latest",
        "identity": {"type": "account", "id": "001ABC000000123"},
        "data": {"page": "/docs/quickstart", "duration_seconds": 120},
        "reference": reference,
    }


def in_chunks(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


API_HEADERS = {"Authorization": f"Bearer {DEMO_KEY}", "Content-Type": "application/json"}


def test_a_chunked_body_is_accepted_on_events_and_batch(make_run: Server) -> None:
    body = json.dumps(event("chunked-single")).encode()
    status, _, answer = make_run.request(
        "POST", "/v1/events", in_chunks(body), {**API_HEADERS, "Transfer-Encoding": "chunked"}
    )
    assert status == 202, answer
    assert json.loads(answer)["data"]["reference"] == "chunked-single"

    batch = json.dumps({"events": [event("chunked-a"), event("chunked-b")]}).encode()
    status, _, answer = make_run.request(
        "POST",
        "/v1/events/batch",
        in_chunks(batch, 50),
        {**API_HEADERS, "Transfer-Encoding": "chunked"},
    )
    assert status == 202, answer
    assert [item["reference"] for item in json.loads(answer)["data"]] == [
        "chunked-a",
        "chunked-b",
    ]

    # The stored event reads back as sent.
    event_id = json.loads(
        make_run.request(
            "POST", "/v1/events", in_chunks(json.dumps(event("chunked-read")).encode()), API_HEADERS
        )[2]
    )["data"]["id"]
    status, _, answer = make_run.request("GET", f"/v1/events/{event_id}", None, API_HEADERS)
    assert status == 200, answer
    assert json.loads(answer)["data"]["data"] == event("x")["data"]


def test_start_up_prints_no_deprecation_warning(make_run: Server) -> None:
    output = make_run.output()

    assert "celery@" in output  # the worker's banner: its start-up is in there
    for text in ("Deprecation", "deprecated", "celery upgrade settings", "No hostname"):
        assert text not in output, text


def request_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if " bigmind.request " in line]


def test_each_request_is_one_log_line_and_static_files_are_not_logged_at_info(
    make_run: Server,
) -> None:
    before = len(make_run.output())
    status, headers, _ = make_run.request("GET", STATIC_FILE)
    assert status == 200
    assert make_run.request("GET", STATIC_FILE, None, {"If-None-Match": headers["ETag"]})[0] == 304
    assert make_run.request("GET", "/admin/login/")[0] == 200
    assert make_run.request("GET", "/v1/signals", None, API_HEADERS)[0] == 200
    body = json.dumps(event("one-line")).encode()
    assert make_run.request("POST", "/v1/events", body, API_HEADERS)[0] == 202
    assert make_run.request("GET", "/no-such-page/")[0] == 404
    assert make_run.request("GET", "/static/no-such-file.css")[0] == 404
    time.sleep(1.5)  # the worker processes the event meanwhile; its lines are not requests

    new = make_run.output()[before:]
    lines = request_lines(new)
    assert [re.sub(r" [\d.]+ms$", "", line.split(" bigmind.request ", 1)[1]) for line in lines] == [
        "GET /admin/login/ 200",
        "GET /v1/signals 200",
        "POST /v1/events 202",
        "GET <unmatched> 404",
        "GET /static/<path:path> 404",
    ], new
    # Nothing else wrote a line for these requests (gunicorn's access log, django.server).
    others = [line for line in new.splitlines() if " bigmind.request " not in line]
    for path in ("/admin/login/", "/v1/signals", "/no-such-page/", STATIC_FILE):
        assert not [line for line in others if path in line], (path, new)


def test_runserver_refuses_a_chunked_body_it_cannot_read_and_logs_each_request_once(
    tmp_path: Path,
) -> None:
    """Django's development server does not decode chunked bodies: the app gets none. It must
    say so (411), not answer that a valid body is empty; and its own request line (logger
    django.server) must not double ours."""
    env = make_run_env(tmp_path / "var")
    manage(env, "migrate", "--noinput")
    manage(env, "bootstrap_demo")
    port = free_port()
    server = Server(port=port, log=tmp_path / "runserver.log")
    with server.log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until_serving(server, proc, time.monotonic() + 60)
            before = len(server.output())
            body = json.dumps(event("runserver")).encode()
            for path in ("/v1/events", "/v1/events/batch"):
                status, _, answer = server.request(
                    "POST", path, in_chunks(body), {**API_HEADERS, "Transfer-Encoding": "chunked"}
                )
                assert status == 411, answer
                assert json.loads(answer) == {
                    "success": False,
                    "error": "This server cannot read a chunked request body; "
                    "send it with Content-Length",
                    "code": "length_required",
                }
            assert server.request("POST", "/v1/events", body, API_HEADERS)[0] == 202
            assert server.request("GET", "/admin/login/")[0] == 200
            time.sleep(0.5)
            new = server.output()[before:]
        finally:
            stop(proc)

    assert len(request_lines(new)) == 4, new
    assert not [line for line in new.splitlines() if "HTTP/1.1" in line], new


@pytest.mark.django_db
def test_a_static_file_is_counted_under_one_route_label_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In-process, the same middleware: the metric label is the static route, never the path;
    a served file is a DEBUG line, a missing one an INFO line."""
    import logging

    from django.test import Client

    from tests.bigmind.test_metrics import Delta

    delta = Delta()
    with caplog.at_level(logging.DEBUG, logger="bigmind.request"):
        assert Client().get(STATIC_FILE).status_code == 200
        assert Client().get("/static/no-such-file.css").status_code == 404

    labels = {"method": "GET", "route": "/static/<path:path>"}
    assert delta.of("bigmind_http_requests_total", status="200", **labels) == 1
    assert delta.of("bigmind_http_requests_total", status="404", **labels) == 1
    records = [r for r in caplog.records if r.name == "bigmind.request"]
    assert [(r.levelname, r.getMessage().rsplit(" ", 1)[0]) for r in records] == [
        ("DEBUG", "GET /static/<path:path> 200"),
        ("INFO", "GET /static/<path:path> 404"),
    ]

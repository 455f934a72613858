"""bigmind/gunicorn_conf.py: the values it gives gunicorn, and a real gunicorn serving with it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import free_port

# One xdist worker runs the whole module, so its module-scoped server starts once, not once
# per worker that happens to get one of its tests.
pytestmark = pytest.mark.xdist_group("gunicorn-conf")

ROOT = Path(__file__).resolve().parents[2]
CONF = "bigmind/gunicorn_conf.py"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Debug off, a test secret, the embedded defaults in tmp_path, no inherited server knob."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "GUNICORN_", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"))
        and key
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "CACHE_URL",
            "CELERY_BROKER_URL",
            "PROMETHEUS_MULTIPROC_DIR",
            "GUNICORN_CMD_ARGS",
        )
    }
    env.update(
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="gunicorn-test-only-" + "s3cr3t-" * 6,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        BIGMIND_VAR_DIR=str(tmp_path / "var"),
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def printed_config(env: dict[str, str]) -> dict[str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", CONF, "--print-config", "bigmind.wsgi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    config = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            config[name.strip()] = value.strip()
    return config


def test_its_defaults_are_the_documented_production_ones(tmp_path: Path) -> None:
    config = printed_config(clean_env(tmp_path))

    cores = len(os.sched_getaffinity(0))
    assert config["workers"] == str(cores + 1)
    assert config["threads"] == "8"
    # Threads: group commit stores a process's concurrent requests together.
    assert config["worker_class"] == "bigmind.gunicorn_worker.ReadDeadlineThreadWorker"
    assert config["bind"] == "['0.0.0.0:8000']"
    assert config["limit_request_line"] == "8190"
    assert config["accesslog"] == "None"
    assert config["preload_app"] == "False"
    assert config["timeout"] == "30"
    assert config["graceful_timeout"] == "30"
    assert config["max_requests"] == "100000"
    assert config["max_requests_jitter"] == "10000"
    assert config["forwarded_allow_ips"] == "['127.0.0.1', '::1']"


def test_one_thread_means_sync_workers(tmp_path: Path) -> None:
    config = printed_config(clean_env(tmp_path, GUNICORN_THREADS="1"))
    assert config["worker_class"] == "bigmind.gunicorn_worker.ReadDeadlineSyncWorker"


def test_it_takes_every_value_from_the_environment(tmp_path: Path) -> None:
    config = printed_config(
        clean_env(
            tmp_path,
            GUNICORN_BIND="127.0.0.1:9999",
            WEB_CONCURRENCY="3",
            GUNICORN_THREADS="4",
            GUNICORN_TIMEOUT="45",
            GUNICORN_GRACEFUL_TIMEOUT="20",
            GUNICORN_KEEPALIVE="90",
            GUNICORN_MAX_REQUESTS="0",
            GUNICORN_LIMIT_REQUEST_LINE="6000",
            GUNICORN_PRELOAD="true",
            GUNICORN_ACCESS_LOG="-",
            FORWARDED_ALLOW_IPS="10.0.0.0/24",
        )
    )

    assert config["bind"] == "['127.0.0.1:9999']"
    assert config["workers"] == "3"
    assert config["threads"] == "4"
    # More than one thread: the threaded worker, unless one is named.
    assert config["worker_class"] == "bigmind.gunicorn_worker.ReadDeadlineThreadWorker"
    assert config["timeout"] == "45"
    assert config["graceful_timeout"] == "20"
    assert config["keepalive"] == "90"
    assert config["max_requests"] == "0"
    assert config["limit_request_line"] == "6000"
    assert config["preload_app"] == "True"
    assert config["accesslog"] == "-"
    assert config["forwarded_allow_ips"] == "['10.0.0.0/24']"


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path, Path]]:
    tmp_path = tmp_path_factory.mktemp("gunicorn")
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    metrics_dir = tmp_path / "prometheus"  # not there yet: the config's on_starting makes it
    env = clean_env(
        tmp_path,
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="1",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", CONF, "bigmind.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                get(port, "/healthz")
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
        yield port, log_path, metrics_dir
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0, log_path.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_gunicorn_serves_the_openapi_document_with_this_config(
    gunicorn_server: tuple[int, Path, Path],
) -> None:
    port, log_path, metrics_dir = gunicorn_server

    status, body = get(port, "/v1/openapi.json")

    assert status == 200
    assert json.loads(body)["openapi"].startswith("3.")
    # The multiprocess metrics directory was made at start-up and the worker writes to it.
    assert metrics_dir.is_dir()
    # No gunicorn access log line (the app logs requests itself).
    assert 'GET /v1/openapi.json HTTP/1.1" 200' not in log_path.read_text()


def test_gunicorn_accepts_request_lines_beyond_its_default_limit(
    gunicorn_server: tuple[int, Path, Path],
) -> None:
    port, _, _ = gunicorn_server
    path = "/v1/openapi.json?pad=" + "x" * 6000  # gunicorn's default limit is 4094

    status, _ = get(port, path)

    assert status == 200

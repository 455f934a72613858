"""GET /healthz and GET /readyz (bigmind/health.py).

Failures are simulated by pointing one dependency at a closed port, a missing folder or a
socket that never answers, for this process only; the shared services are never touched.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client, override_settings

from bigmind import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_checks(settings) -> Iterator[None]:
    """Each test checks for real (the last answer is reused for a second in production)."""
    settings.BIGMIND_READYZ_CACHE_SECONDS = 0
    health.readiness_memo_clear()
    yield
    health.readiness_memo_clear()


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


def redis_cache(port: int, timeout: float = 0.25) -> dict[str, Any]:
    return {
        "default": {
            "BACKEND": "bigmind.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": timeout, "socket_timeout": timeout},
        }
    }


def checks_by_name(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks = body["data"]["checks"] if body["success"] else body["details"]
    return {check["name"]: check for check in checks}


def test_healthz_answers_without_touching_any_dependency(
    client: Client, django_assert_num_queries: Any
) -> None:
    with (
        override_settings(CACHES=redis_cache(closed_port())),
        django_assert_num_queries(0),
    ):
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"success": True, "data": {"status": "ok"}}
    assert response["Cache-Control"] == "no-store"
    assert response["X-Request-ID"]


def test_it_answers_probes_whatever_the_host_header(client: Client) -> None:
    # Load balancers and Kubernetes probe the pod's IP, which is not in ALLOWED_HOSTS.
    assert "10.1.2.3" not in settings.ALLOWED_HOSTS
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    assert client.get("/readyz", HTTP_HOST="10.1.2.3:8000").status_code == 200
    # Every other path still validates the host.
    assert client.get("/v1/signals", HTTP_HOST="10.1.2.3:8000").status_code == 400


def test_readyz_reports_each_check_when_everything_is_reachable(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["data"]["status"] == "ready"
    checks = checks_by_name(body)
    assert set(checks) == {"database", "cache", "broker"}
    assert all(check["ok"] for check in checks.values())
    assert response["Cache-Control"] == "no-store"


def test_readyz_needs_no_api_key_and_refuses_other_methods(client: Client) -> None:
    assert client.get("/readyz").status_code == 200  # no Authorization header at all
    response = client.post("/readyz")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_it_names_the_database_when_it_cannot_be_reached(
    client: Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    broken = dict(connections.settings["default"])
    if broken["ENGINE"].endswith("sqlite3"):
        broken["NAME"] = str(tmp_path / "no-such-dir" / "db.sqlite3")
    else:
        broken["PORT"] = str(closed_port())
    # The check opens its own connection from these settings; this test's stays as it was.
    monkeypatch.setitem(connections.settings, "default", broken)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["success"] is False
    assert body["code"] == "not_ready"
    assert body["error"] == "Not ready: database unavailable"
    checks = checks_by_name(body)
    assert checks["database"]["ok"] is False
    assert checks["database"]["error"] == "OperationalError"
    assert checks["cache"]["ok"] and checks["broker"]["ok"]
    assert response["Retry-After"] == "5"


def test_it_names_the_cache_when_it_cannot_be_reached(client: Client) -> None:
    with override_settings(CACHES=redis_cache(closed_port())):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "Not ready: cache unavailable"
    checks = checks_by_name(body)
    assert not checks["cache"]["ok"]
    assert checks["database"]["ok"] and checks["broker"]["ok"]


def test_it_names_the_broker_when_it_cannot_be_reached(client: Client) -> None:
    with override_settings(CELERY_BROKER_URL=f"redis://127.0.0.1:{closed_port()}/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["error"] == "Not ready: broker unavailable"
    assert not checks_by_name(body)["broker"]["ok"]


def test_it_checks_the_folders_of_the_embedded_broker(client: Client, tmp_path: Any) -> None:
    options = {
        "data_folder_in": str(tmp_path / "missing"),
        "data_folder_out": str(tmp_path),
        "processed_folder": str(tmp_path),
        "control_folder": str(tmp_path),
    }
    with override_settings(
        CELERY_BROKER_URL="filesystem://", CELERY_BROKER_TRANSPORT_OPTIONS=options
    ):
        failing = client.get("/readyz")
        (tmp_path / "missing").mkdir()
        passing = client.get("/readyz")
    assert failing.status_code == 503
    assert failing.json()["error"] == "Not ready: broker unavailable"
    assert passing.status_code == 200


def test_it_names_every_dependency_that_failed(client: Client) -> None:
    port = closed_port()
    with override_settings(
        CACHES=redis_cache(port), CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0"
    ):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "Not ready: cache, broker unavailable"


def test_a_hanging_dependency_costs_the_timeout_not_more(
    client: Client, silent_server: int
) -> None:
    # The cache's own socket timeout (5 s) is far longer than the probe's.
    with override_settings(
        CACHES=redis_cache(silent_server, timeout=5.0), BIGMIND_READYZ_TIMEOUT_SECONDS=0.3
    ):
        started = time.monotonic()
        first = client.get("/readyz")
        second = client.get("/readyz")  # the first check is still stuck: it is not doubled
        elapsed = time.monotonic() - started
        running = health._running["cache"]
        assert not running.done()
    assert first.status_code == second.status_code == 503
    cache_check = checks_by_name(first.json())["cache"]
    assert cache_check == {
        "name": "cache",
        "ok": False,
        "duration_ms": pytest.approx(300, abs=250),
        "error": "timeout",
    }
    assert checks_by_name(first.json())["database"]["ok"]
    assert elapsed < 3.0  # two probes of 0.3 s, not the cache's 5 s time-out
    running.result(timeout=10)  # let the stuck check finish before the server socket closes


def test_error_details_stay_in_the_server_log(client: Client) -> None:
    port = closed_port()
    with override_settings(CELERY_BROKER_URL=f"redis://:secret-password@127.0.0.1:{port}/0"):
        response = client.get("/readyz")
    assert response.status_code == 503
    assert "secret-password" not in response.content.decode()
    assert str(port) not in response.content.decode()


def test_probes_within_a_second_reuse_one_round_of_checks(client: Client, settings) -> None:
    """/readyz needs no key: a flood of probes must not open a database connection each."""
    settings.BIGMIND_READYZ_CACHE_SECONDS = 60
    # One round of checks runs the database check once.
    database = mock.Mock(wraps=health.CHECKS["database"])
    with mock.patch.dict(health.CHECKS, {"database": database}):
        answers = [client.get("/readyz") for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        assert database.call_count == 1
        settings.BIGMIND_READYZ_CACHE_SECONDS = 0
        client.get("/readyz")
        client.get("/readyz")
        assert database.call_count == 3

"""Read replicas without a replica: the settings DATABASE_REPLICA_URLS makes, the router, the
health verdicts (a fake check and clock) and the replica-read scope. The same against a real
streaming replica: tests/bigmind/test_replicas_live.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import environ
import pytest
from django.contrib.sessions.models import Session
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, transaction
from django.test import override_settings

from bigmind import replicas
from bigmind.db import read_on_live_connection, replica_var
from bigmind.errors import NotFound
from bigmind.replica_settings import ReplicaHealth, replica_settings
from bigmind.replicas import (
    DOWN,
    HEALTHY,
    LAGGING,
    NOT_A_REPLICA,
    LagReading,
    ReplicaMonitor,
    ReplicaRouter,
    lsn_int,
    read_from_replica,
    replica_in_use,
    replica_reads,
)
from events_app.models import Event

ROOT = Path(__file__).resolve().parents[2]
PRIMARY = {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": "bigmind",
    "USER": "bigmind",
    "PASSWORD": "pw",
    "HOST": "db.internal",
    "PORT": 5432,
    "CONN_MAX_AGE": 600,
    "CONN_HEALTH_CHECKS": False,
    "OPTIONS": {"prepare_threshold": 5},
}


@pytest.fixture
def replica_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (
        "DATABASE_REPLICA_URLS",
        "DATABASE_REPLICA_CONNECT_TIMEOUT",
        "BIGMIND_REPLICA_MAX_LAG_SECONDS",
        "BIGMIND_REPLICA_CHECK_SECONDS",
        "BIGMIND_REPLICA_RETRY_MAX_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


# --- Settings ----------------------------------------------------------------------------------
def test_without_replica_urls_there_is_no_replica_and_no_router(
    replica_env: pytest.MonkeyPatch,
) -> None:
    databases, routers, health = replica_settings(environ.Env(), {"default": dict(PRIMARY)})

    assert list(databases) == ["default"]
    assert routers == []
    assert health == ReplicaHealth(max_lag_seconds=5.0, check_seconds=1.0, retry_max_seconds=30.0)


def test_each_replica_url_is_an_alias_treated_like_the_primary(
    replica_env: pytest.MonkeyPatch,
) -> None:
    replica_env.setenv(
        "DATABASE_REPLICA_URLS",
        "postgres://reader:pw2@replica-a.internal:5433/bigmind, "
        "postgres://reader@replica-b.internal/bigmind?connect_timeout=7",
    )
    databases, routers, _ = replica_settings(environ.Env(), {"default": dict(PRIMARY)})

    assert list(databases) == ["default", "replica_0", "replica_1"]
    assert routers == ["bigmind.replicas.ReplicaRouter"]
    first, second = databases["replica_0"], databases["replica_1"]
    assert (first["HOST"], first["PORT"], first["USER"], first["PASSWORD"]) == (
        "replica-a.internal",
        5433,
        "reader",
        "pw2",
    )
    assert second["HOST"] == "replica-b.internal"
    for replica in (first, second):
        assert replica["ENGINE"] == PRIMARY["ENGINE"]
        assert replica["NAME"] == "bigmind"
        assert replica["CONN_MAX_AGE"] == 600
        assert replica["CONN_HEALTH_CHECKS"] is False
        assert replica["OPTIONS"]["prepare_threshold"] == 5
        # The test run makes no database for a replica.
        assert replica["TEST"] == {"MIRROR": "default"}
    # A short connect timeout unless the URL gives its own.
    assert first["OPTIONS"]["connect_timeout"] == 2
    assert second["OPTIONS"]["connect_timeout"] == 7
    assert databases["default"] == PRIMARY


@pytest.mark.parametrize(
    ("primary", "urls", "message"),
    [
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"},
            "postgres://replica.internal/bigmind",
            "SQLite has no replicas",
        ),
        (PRIMARY, "mysql://replica.internal/bigmind", "same kind as DATABASE_URL"),
    ],
)
def test_replica_urls_that_cannot_be_replicas_of_the_primary_are_refused(
    replica_env: pytest.MonkeyPatch, primary: dict[str, Any], urls: str, message: str
) -> None:
    replica_env.setenv("DATABASE_REPLICA_URLS", urls)

    with pytest.raises(ImproperlyConfigured, match=message):
        replica_settings(environ.Env(), {"default": dict(primary)})


def test_a_lag_threshold_that_is_not_positive_is_refused(
    replica_env: pytest.MonkeyPatch,
) -> None:
    replica_env.setenv("BIGMIND_REPLICA_MAX_LAG_SECONDS", "0")

    with pytest.raises(ImproperlyConfigured, match="must be positive"):
        replica_settings(environ.Env(), {"default": dict(PRIMARY)})


def test_the_settings_module_adds_the_replicas_after_the_primary_is_set_up(
    tmp_path: Path,
) -> None:
    script = (
        "import json; from django.conf import settings; "
        "print(json.dumps({'routers': settings.DATABASE_ROUTERS, "
        "'replica': settings.DATABASES['replica_0'], "
        "'lag': settings.BIGMIND_REPLICA_HEALTH.max_lag_seconds}, default=str))"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bigmind.settings",
        "DJANGO_DEBUG": "true",
        "BIGMIND_VAR_DIR": str(tmp_path),
        "DATABASE_URL": "postgres://bigmind:pw@primary.internal:5432/bigmind",
        "DATABASE_CONN_MAX_AGE": "120",
        "DATABASE_REPLICA_URLS": "postgres://bigmind:pw@replica.internal:5432/bigmind",
        "BIGMIND_REPLICA_MAX_LAG_SECONDS": "2.5",
    }
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])

    assert found["routers"] == ["bigmind.replicas.ReplicaRouter"]
    assert found["replica"]["HOST"] == "replica.internal"
    assert found["replica"]["CONN_MAX_AGE"] == 120
    assert found["replica"]["OPTIONS"]["prepare_threshold"] == 5
    assert found["lag"] == 2.5


# --- The router --------------------------------------------------------------------------------
@pytest.fixture
def in_replica_scope() -> Iterator[None]:
    token = replica_var.set("replica_0")
    yield
    replica_var.reset(token)


def test_outside_a_replica_scope_everything_goes_to_the_primary() -> None:
    router = ReplicaRouter()

    assert router.db_for_read(Event) == "default"
    assert router.db_for_write(Event) == "default"


@pytest.mark.usefixtures("in_replica_scope")
def test_inside_a_replica_scope_reads_go_to_the_replica_and_writes_to_the_primary() -> None:
    router = ReplicaRouter()

    assert router.db_for_read(Event) == "replica_0"
    assert router.db_for_write(Event) == "default"
    # A session must see the log-in that wrote it.
    assert router.db_for_read(Session) == "default"


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("in_replica_scope")
def test_a_transaction_on_the_primary_reads_from_the_primary_even_in_a_replica_scope() -> None:
    router = ReplicaRouter()

    with transaction.atomic():
        assert router.db_for_read(Event) == "default"
    assert router.db_for_read(Event) == "replica_0"


def test_only_the_primary_is_migrated() -> None:
    router = ReplicaRouter()

    assert router.allow_migrate("default", "events_app") is True
    assert router.allow_migrate("replica_0", "events_app") is False


@pytest.mark.usefixtures("in_replica_scope")
def test_cached_lookups_read_from_the_primary_inside_a_replica_scope() -> None:
    # The signal and key lookups that fill the ingest path's caches go through this helper.
    assert replica_in_use() == "replica_0"
    assert read_on_live_connection(replica_in_use) is None
    assert replica_in_use() == "replica_0"


# --- Health ------------------------------------------------------------------------------------
HEALTH = ReplicaHealth(max_lag_seconds=5.0, check_seconds=1.0, retry_max_seconds=8.0)


class FakeReplica:
    """What the check reads, as the test sets it; and a clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.primary = lsn_int("0/3000000")
        self.replayed: int | None = self.primary
        self.replay_age: float | None = 0.5
        self.in_recovery = True
        self.down = False
        self.checks = 0

    def clock(self) -> float:
        return self.now

    def check(self, alias: str) -> LagReading:
        self.checks += 1
        if self.down:
            raise OperationalError("connection refused")
        return LagReading(
            in_recovery=self.in_recovery,
            primary_lsn=self.primary,
            replay_lsn=self.replayed,
            replay_age_seconds=self.replay_age,
        )

    def commit(self) -> None:
        """A commit on the primary that the replica has not replayed."""
        self.primary += 100


@pytest.fixture
def replica() -> FakeReplica:
    return FakeReplica()


@pytest.fixture
def monitor(replica: FakeReplica) -> Iterator[ReplicaMonitor]:
    with override_settings(BIGMIND_REPLICA_HEALTH=HEALTH):
        yield ReplicaMonitor(check=replica.check, clock=replica.clock)


def test_a_caught_up_replica_is_healthy_and_checked_once_a_second(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert monitor.state("replica_0").lag_seconds == 0.0
    replica.now += 0.5
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert replica.checks == 1
    replica.now += 0.6
    monitor.healthy(["replica_0"])
    assert replica.checks == 2


def test_a_replica_of_an_idle_primary_is_not_taken_for_a_lagging_one(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    # Nothing committed for an hour: the last replayed commit is an hour old.
    replica.replay_age = 3600.0
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    # One commit, not replayed yet at the next check: behind, but by at most the time since
    # the check it had caught up with.
    replica.now += 1.0
    replica.commit()
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert monitor.state("replica_0").lag_seconds == pytest.approx(1.0)


def test_a_replica_whose_replay_stopped_is_skipped_past_the_threshold_and_used_again_after(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    monitor.healthy(["replica_0"])
    replica.replay_age = 0.0
    stuck_at = replica.replayed
    for second in range(1, 8):
        replica.now += 1.0
        replica.commit()  # the primary keeps writing; the replica replays nothing
        replica.replay_age = float(second)
        healthy = monitor.healthy(["replica_0"])
        assert healthy == (["replica_0"] if second <= HEALTH.max_lag_seconds else [])
    assert monitor.state("replica_0").verdict == LAGGING
    assert replica.replayed == stuck_at

    replica.now += 1.0
    replica.replayed = replica.primary
    replica.replay_age = 0.1
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert monitor.state("replica_0").lag_seconds == 0.0


def test_a_replica_behind_at_its_first_check_with_an_old_last_replay_is_lagging(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    # A process's first check cannot bound the lag by an earlier one: the replay age decides.
    replica.commit()
    replica.replay_age = 60.0
    assert monitor.healthy(["replica_0"]) == []
    assert monitor.state("replica_0").verdict == LAGGING


def test_a_server_that_is_not_in_recovery_is_not_read_as_a_replica(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    replica.in_recovery = False
    replica.replayed = None
    replica.replay_age = None

    assert monitor.healthy(["replica_0"]) == []
    assert monitor.state("replica_0").verdict == NOT_A_REPLICA


def test_a_replica_that_is_down_is_retried_after_a_doubling_back_off(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    replica.down = True
    assert monitor.healthy(["replica_0"]) == []
    assert monitor.state("replica_0").verdict == DOWN
    checks = replica.checks
    # Back-offs 1, 2, 4, 8, 8 s: nothing is tried before each has passed.
    for backoff in (1.0, 2.0, 4.0, 8.0, 8.0):
        replica.now += backoff - 0.5
        assert monitor.healthy(["replica_0"]) == []
        assert replica.checks == checks
        replica.now += 0.5
        assert monitor.healthy(["replica_0"]) == []
        checks += 1
        assert replica.checks == checks

    replica.down = False
    replica.now += 8.0
    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert monitor.state("replica_0").verdict == HEALTHY
    # Healthy again, a later failure starts from the shortest back-off.
    monitor.mark_down("replica_0", reason="a read failed")
    assert monitor.state("replica_0").backoff == 1.0


def test_while_one_thread_checks_a_replica_the_others_keep_its_last_verdict(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    monitor.healthy(["replica_0"])
    replica.now += 5.0
    monitor.state("replica_0").checking = True

    assert monitor.healthy(["replica_0"]) == ["replica_0"]
    assert replica.checks == 1


def test_only_healthy_replicas_are_chosen_among_several(
    monitor: ReplicaMonitor, replica: FakeReplica
) -> None:
    other = FakeReplica()
    other.down = True

    def check(alias: str) -> LagReading:
        return (replica if alias == "replica_0" else other).check(alias)

    several = ReplicaMonitor(check=check, clock=replica.clock)

    assert several.healthy(["replica_0", "replica_1"]) == ["replica_0"]


# --- The replica-read scope --------------------------------------------------------------------
def test_the_read_apis_that_read_from_a_replica_are_the_documented_ones() -> None:
    from django.urls import URLPattern, get_resolver

    reading = set()
    for pattern in get_resolver("events_app.api.urls").url_patterns:
        assert isinstance(pattern, URLPattern)
        callback = pattern.callback
        view_class = getattr(callback, "view_class", None) or getattr(callback, "cls", None)
        get = getattr(view_class, "get", None)
        if get is not None and getattr(get, "reads_from_replica", False):
            reading.add(pattern.name)

    # docs/replicas.md, "What reads where". Webhook endpoints stay on the primary: the client
    # writes them through the API and reads them back at once.
    assert reading == {
        "event-ingest",  # GET /v1/events, the list
        "event-detail",
        "rejection-list",
        "signal-list",
        "signal-detail",
        "schema-version-detail",
        "record-detail",
        "webhook-delivery-list",
    }


def test_without_replicas_a_scope_reads_from_the_primary() -> None:
    with replica_reads() as alias:
        assert alias is None
        assert replica_in_use() is None


def test_a_read_that_finds_nothing_on_the_replica_is_run_again_on_the_primary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replicas, "replica_choose", lambda aliases: "replica_0")
    seen: list[str | None] = []

    @read_from_replica(primary_on=(NotFound,))
    def read() -> str:
        seen.append(replica_in_use())
        if replica_in_use() is not None:
            raise NotFound("Event not found: x", code="event_not_found")
        return "found"

    assert read() == "found"
    assert seen == ["replica_0", None]
    assert replica_in_use() is None


def test_other_errors_of_a_replica_read_are_not_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replicas, "replica_choose", lambda aliases: "replica_0")
    calls: list[str | None] = []

    @read_from_replica(primary_on=(NotFound,))
    def read() -> str:
        calls.append(replica_in_use())
        raise ValueError("a bug, not a lagging replica")

    with pytest.raises(ValueError, match="a bug"):
        read()
    assert calls == ["replica_0"]

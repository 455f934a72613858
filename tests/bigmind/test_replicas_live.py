"""Read replicas against a real streaming replica (docs/replicas.md).

The module starts its own cluster (scripts/benchlib/pgcluster.py): a private primary
(`wal_level=replica`) and a hot standby made from it with `pg_basebackup -R`, each on its own
port; then the app under gunicorn with DATABASE_URL on the primary and DATABASE_REPLICA_URLS on
the replica. Whether the replica served a read is seen from outside the app: the replica's own
`pg_stat_activity`, and rows that exist on the primary only while the replica's replay is paused
(`pg_wal_replay_pause()`).

Skipped on the SQLite pass (the cluster is PostgreSQL's, and one pass is enough) and when the
PostgreSQL server binaries are missing; with BIGMIND_REQUIRE_REPLICA=1 (CI) missing binaries
fail instead.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import random
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from scripts.benchlib.pgcluster import PgCluster, Replica, missing_binaries
from tests.harness import Service, free_port, gunicorn_start, manage, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.replica,
    # One cluster for the module: its tests run on one xdist worker, one after another.
    pytest.mark.xdist_group("replica-cluster"),
]

DATABASE = "bigmind_replica"
ORGANIZATION = "replica-tests"
SIGNAL = "replica-visit"
ADMIN_PASSWORD = "replica-tests-admin-password"
# Short, so that the tests see a lagging replica skipped within seconds.
MAX_LAG_SECONDS = 3.0
APP_ENV = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "replica-tests-only-not-a-real-secret-0123456789abcdef",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    # The admin log-in below is plain HTTP.
    "DJANGO_SECURE_COOKIES": "false",
    "BIGMIND_PROCESSOR": "local",
    "BIGMIND_REPLICA_MAX_LAG_SECONDS": str(MAX_LAG_SECONDS),
    "BIGMIND_REPLICA_CHECK_SECONDS": "0.2",
    "BIGMIND_REPLICA_RETRY_MAX_SECONDS": "1",
    # No broker server: accepted events wait in the var directory's folders (no worker here).
    "CELERY_BROKER_URL": "filesystem://",
    "REDIS_URL": "",
    "CACHE_URL": "",
    "CACHE_KEY_PREFIX": "bigmind-replica-tests",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


def _required() -> bool:
    return os.environ.get("BIGMIND_REQUIRE_REPLICA") == "1"


def _port_outside_the_ephemeral_range() -> int:
    """A free port below the kernel's range for outgoing connections: the replica's port is
    free while the replica is stopped, and a port of that range could meanwhile be taken by
    any process's outgoing connection, which would keep the replica from starting again."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1025, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port()


def _ports() -> tuple[int, int]:
    """BIGMIND_REPLICA_TEST_PORTS="primary,replica" (a machine that hands out port ranges), or
    free ones outside the range of outgoing connections."""
    given = os.environ.get("BIGMIND_REPLICA_TEST_PORTS", "")
    if given:
        primary, replica = (int(part) for part in given.split(","))
        return primary, replica
    primary = _port_outside_the_ephemeral_range()
    replica = _port_outside_the_ephemeral_range()
    while replica == primary:
        replica = _port_outside_the_ephemeral_range()
    return primary, replica


def _replica_start(replica: Replica) -> None:
    """Start the stopped replica again on its port, waiting while something else holds the
    port (an outgoing connection that took it while it was free lingers in TIME_WAIT)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            replica.start()
            return
        except RuntimeError as error:
            if "Address already in use" not in str(error) or time.monotonic() > deadline:
                raise
        time.sleep(1)


@dataclass
class ReplicaStack:
    cluster: PgCluster
    env: dict[str, str]
    logs: Path
    port: int = 0
    api_key: str = ""
    gunicorn: Service | None = None

    # --- HTTP -------------------------------------------------------------------------------
    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (local)
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def ingest(self, reference: str) -> str:
        status, body = self.call(
            "POST",
            "/v1/events",
            {
                "signal": SIGNAL,
                "identity": {"type": "account", "id": "acct-1"},
                "data": {"page": "/docs"},
                "reference": reference,
            },
        )
        assert status == 202, body
        return str(body["data"]["id"])

    def listed(self) -> set[str]:
        status, body = self.call("GET", "/v1/events?limit=100")
        assert status == 200, body
        return {item["id"] for item in body["data"]}

    # --- The servers ------------------------------------------------------------------------
    def primary_sql(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.cluster.primary.connect(DATABASE, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def replica_sql(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        assert self.cluster.replica is not None
        with self.cluster.replica.connect(DATABASE, autocommit=True) as conn:
            return list(conn.execute(sql, params).fetchall())

    def replica_clock(self) -> Any:
        return self.replica_sql("SELECT clock_timestamp()")[0][0]

    def app_reads_on_replica(self, since: Any, table: str) -> int:
        """The app's sessions on the replica whose last statement, started after `since` (the
        replica's clock), named a table starting with `table` (pg_stat_activity keeps a
        session's last statement)."""
        rows = self.replica_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " AND query_start >= %s AND query LIKE %s",
            [DATABASE, since, f'%"{table}%'],
        )
        return int(rows[0][0])

    def replay_pause(self) -> None:
        self.replica_sql("SELECT pg_wal_replay_pause()")

    def replay_resume(self) -> None:
        self.replica_sql("SELECT pg_wal_replay_resume()")

    def caught_up(self) -> None:
        assert self.cluster.replica is not None
        self.cluster.replica.wait_caught_up(timeout=60)

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.index("}")]))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _seed(stack: ReplicaStack) -> None:
    manage("migrate", "--noinput", "-v", "0", env=stack.env)
    document = {
        "organization": ORGANIZATION,
        "signals": [{"slug": SIGNAL, "name": "Replica visit", "type": "event"}],
    }
    manage("sync_signals", "-", env=stack.env, stdin=json.dumps(document))
    stack.api_key = manage(
        "create_api_key", "--organization", ORGANIZATION, "--name", "replica tests", env=stack.env
    ).strip()
    manage(
        "createsuperuser",
        "--noinput",
        "--username",
        "replica-admin",
        "--email",
        "replica-admin@example.com",
        env={**stack.env, "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD},
    )


@pytest.fixture(scope="module")
def replica_stack() -> Iterator[ReplicaStack]:
    if connection.vendor != "postgresql":
        pytest.skip("the replica tests run in the PostgreSQL pass (DATABASE_URL=postgres://...)")
    reason = missing_binaries(bouncer=False)
    if reason is not None:
        if _required():
            pytest.fail(f"BIGMIND_REQUIRE_REPLICA=1 but {reason}", pytrace=False)
        pytest.skip(f"read replica tests: {reason}")
    from django.conf import settings

    logs = Path(settings.VAR_DIR) / "replica-logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="bigmind-replica-"))
    root.chmod(0o755)  # the postgres user must reach the data directories inside
    primary_port, replica_port = _ports()
    cluster = PgCluster(
        root / "cluster",
        replica=True,
        bouncer=False,
        primary_port=primary_port,
        replica_port=replica_port,
    )
    stack = ReplicaStack(cluster=cluster, env={}, logs=logs)
    try:
        cluster.start(databases=(DATABASE,))
        (root / "prometheus").mkdir()
        stack.env = {
            **os.environ,
            **APP_ENV,
            "DATABASE_URL": cluster.primary_url(DATABASE),
            "DATABASE_REPLICA_URLS": cluster.replica_url(DATABASE),
            "BIGMIND_VAR_DIR": str(root / "var"),
            "PROMETHEUS_MULTIPROC_DIR": str(root / "prometheus"),
        }
        _seed(stack)
        stack.port = free_port()
        stack.gunicorn = gunicorn_start(
            env=stack.env, log=logs / "gunicorn.log", port=stack.port, workers=2
        )
        stack.caught_up()
        yield stack
    finally:
        if stack.gunicorn is not None:
            stack.gunicorn.stop()
        cluster.stop(keep_logs=logs)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(replica_stack: ReplicaStack) -> Iterator[ReplicaStack]:
    """The stack with the replica running, replaying and caught up, before and after a test."""
    replica = replica_stack.cluster.replica
    assert replica is not None
    if not replica.running():
        _replica_start(replica)
    replica.wait_streaming()
    replica_stack.replay_resume()
    replica_stack.caught_up()
    yield replica_stack
    if not replica.running():
        _replica_start(replica)
        replica.wait_streaming()
    replica_stack.replay_resume()


def _served_by_replica(stack: ReplicaStack, path: str, table: str) -> None:
    """`path` answers 200 and was read on the replica: one of the app's sessions there ran a
    statement on `table` after the request was sent (tried until the app has found the replica
    healthy again)."""

    def seen() -> bool:
        since = stack.replica_clock()
        status, body = stack.call("GET", path)
        assert status == 200, body
        return stack.app_reads_on_replica(since, table) > 0

    def sessions() -> str:
        rows = stack.replica_sql(
            "SELECT pid, query_start, left(query, 120) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            [DATABASE],
        )
        return f"GET {path} to be read on the replica; its sessions: {rows}"

    wait_for(seen, timeout=30, interval=0.2, message=sessions)


def test_the_read_apis_are_served_by_the_replica(stack: ReplicaStack) -> None:
    event_id = stack.ingest("served-by-replica")
    stack.caught_up()

    _served_by_replica(stack, "/v1/events", 'events_app_event"')
    _served_by_replica(stack, f"/v1/events/{event_id}", 'events_app_event"')
    # A profile's last statement is one of several tables'.
    _served_by_replica(stack, "/v1/records/account/acct-1", "events_app_")
    _served_by_replica(stack, "/v1/rejections", "events_app_rejectedevent")
    _served_by_replica(stack, "/v1/signals", "signals_app_")
    _served_by_replica(stack, f"/v1/signals/{SIGNAL}", "signals_app_")
    assert stack.metric("bigmind_replica_reads_total", database="replica_0") > 0
    # Writes never go there: a replica refuses them, and every POST above was answered 202.


def test_an_event_the_replica_has_not_replayed_is_read_from_the_primary(
    stack: ReplicaStack,
) -> None:
    # A commit just before the pause: the replica's last replayed transaction is recent, so
    # it stays within the lag threshold for a few seconds while its replay is paused.
    first = stack.ingest("before-pause")
    stack.caught_up()
    stack.replay_pause()
    started = time.monotonic()
    second = stack.ingest("while-paused")
    listed = stack.listed()
    status, body = stack.call("GET", f"/v1/events/{second}")
    elapsed = time.monotonic() - started
    assert elapsed < MAX_LAG_SECONDS / 2, "too slow to tell the replica from the primary"

    # The list came from the replica: it has the first event and not the second...
    assert first in listed
    assert second not in listed
    assert stack.replica_sql("SELECT count(*) FROM events_app_event WHERE id = %s", [second]) == [
        (0,)
    ]
    # ...and the event the client was just told was accepted is found all the same.
    assert status == 200, body
    assert body["data"]["id"] == second
    assert stack.metric("bigmind_replica_fallbacks_total", reason="not_found") >= 1
    # An id that exists nowhere is still a 404, after both were asked.
    status, body = stack.call("GET", "/v1/events/00000000-0000-4000-8000-000000000000")
    assert status == 404 and body["code"] == "event_not_found"


def test_a_replica_lagging_past_the_threshold_is_skipped_until_it_catches_up(
    stack: ReplicaStack,
) -> None:
    stack.ingest("before-lag")
    stack.caught_up()
    stack.replay_pause()
    paused_at = time.monotonic()
    late = stack.ingest("lagging")

    # Within the threshold the replica still serves (its answer lacks the new event); past
    # it, the primary does (the answer has it) while the replica still has not replayed it.
    first_seen = wait_for(
        lambda: late in stack.listed() and time.monotonic(),
        timeout=MAX_LAG_SECONDS + 20,
        interval=0.1,
        message="the list to come from the primary once the replica lags",
    )
    assert first_seen - paused_at >= MAX_LAG_SECONDS * 0.5
    assert stack.replica_sql("SELECT count(*) FROM events_app_event WHERE id = %s", [late]) == [
        (0,)
    ]
    # Every web process judges for itself, each at its own checks: once all have checked
    # again, every answer comes from the primary.
    time.sleep(1.0)
    for _ in range(10):
        assert late in stack.listed()
    assert stack.metric("bigmind_replica_checks_total", verdict="lagging") >= 1

    # Caught up again, it serves again.
    stack.replay_resume()
    stack.caught_up()
    _served_by_replica(stack, "/v1/events", 'events_app_event"')


def test_a_stopped_replica_is_skipped_and_used_again_once_back(stack: ReplicaStack) -> None:
    _served_by_replica(stack, "/v1/events", 'events_app_event"')
    replica = stack.cluster.replica
    assert replica is not None

    replica.stop()
    try:
        # Every answer comes from the primary, complete, and none is an error: the app's
        # connections to the replica died with it.
        for index in range(12):
            event_id = stack.ingest(f"replica-down-{index}")
            assert event_id in stack.listed()
            status, body = stack.call("GET", f"/v1/events/{event_id}")
            assert status == 200, body
        assert stack.metric("bigmind_replica_checks_total", verdict="down") >= 1
    finally:
        _replica_start(replica)
    replica.wait_streaming()
    stack.caught_up()
    _served_by_replica(stack, "/v1/events", 'events_app_event"')
    assert stack.gunicorn is not None
    assert not re.search(r'"status": 5\d\d', stack.gunicorn.text()), "an answer was a 5xx"


class _Admin:
    """A logged-in admin session (cookies) against the stack's gunicorn."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(self.base + path, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def login(self) -> None:
        self.get("/admin/login/")
        token = next(cookie.value for cookie in self.jar if cookie.name == "csrftoken")
        form = urllib.parse.urlencode(
            {
                "username": "replica-admin",
                "password": ADMIN_PASSWORD,
                "csrfmiddlewaretoken": token,
                "next": "/admin/",
            }
        ).encode()
        request = urllib.request.Request(  # noqa: S310 (local)
            self.base + "/admin/login/", data=form, headers={"Referer": self.base + "/admin/"}
        )
        with self.opener.open(request, timeout=30) as response:
            assert "/admin/login/" not in response.url, "the admin log-in failed"


def test_admin_lists_read_from_the_replica_and_change_pages_from_the_primary(
    stack: ReplicaStack,
) -> None:
    admin = _Admin(stack.port)
    admin.login()
    first = stack.ingest("admin-before-pause")
    stack.caught_up()
    # The log-in wrote the session on the primary; its next read must not go elsewhere.
    status, _ = admin.get("/admin/events_app/event/")
    assert status == 200

    stack.replay_pause()
    second = stack.ingest("admin-while-paused")
    status, page = admin.get("/admin/events_app/event/")
    assert status == 200
    # The list: the replica's rows (each id is whole in its link's title).
    assert first in page
    assert second not in page
    # The change page: the primary's row.
    status, page = admin.get(f"/admin/events_app/event/{second}/change/")
    assert status == 200
    assert second in page

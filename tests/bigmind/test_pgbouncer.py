"""PgBouncer in transaction pooling (bigmind/pgbouncer.py, docs/pgbouncer.md): what breaks through
it without DATABASE_PGBOUNCER's settings, and that the app works through it with them.

Each test starts a private PgBouncer (scripts/pgbouncer_up.sh: Debian's 1.18, pool_mode
transaction, trust on 127.0.0.1) in front of the test's PostgreSQL. Without the binary the tests
skip; with BIGMIND_REQUIRE_PGBOUNCER=1 (CI) they fail instead. They need PostgreSQL reached
directly (CI's PostgreSQL pass): the CI step that runs other tests through a PgBouncer leaves
this module out, since a pooler in front of a pooler tests neither.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import environ
import psycopg
import pytest
import requests
from django.db import DatabaseError, connection, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.migrations.recorder import MigrationRecorder
from django.db.utils import ConnectionHandler
from django.test import override_settings

from bigmind.celery import worker_database_sessions
from bigmind.pgbouncer import PREPARE_THRESHOLD, database_pooling_apply
from tests.harness import QUEUES, Gunicorn, free_port, manage, wait_for, worker_start

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "pgbouncer_up.sh"


def pgbouncer_missing() -> str | None:
    binary = os.environ.get("PGBOUNCER") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else shutil.which("pgbouncer")
    )
    if not binary or not os.access(binary, os.X_OK):
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    return None


@dataclass
class Bouncer:
    port: int
    directory: Path

    def url(self, name: str | None = None) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name or database_name()}"

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def database_name() -> str:
    return str(connection.settings_dict["NAME"])


@pytest.fixture
def start_pgbouncer(db: None) -> Iterator[Callable[[int], Bouncer]]:
    """Starts private PgBouncers (given their pool size) in front of the test database's server;
    stops them (by their pid files) after the test."""
    if connection.vendor != "postgresql":
        pytest.skip("PgBouncer tests need PostgreSQL: run with DATABASE_URL=postgres://...")
    reason = pgbouncer_missing()
    if reason is not None:
        if os.environ.get("BIGMIND_REQUIRE_PGBOUNCER") == "1":
            pytest.fail(f"BIGMIND_REQUIRE_PGBOUNCER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    host = str(connection.settings_dict.get("HOST") or "127.0.0.1")
    server_port = str(connection.settings_dict.get("PORT") or "5432")
    started: list[Bouncer] = []

    def start(pool_size: int) -> Bouncer:
        # Under /tmp: PgBouncer runs as `postgres` when the tests run as root, and must reach it.
        directory = Path(tempfile.mkdtemp(prefix="bigmind-pgbouncer-"))
        bouncer = Bouncer(port=free_port(), directory=directory)
        started.append(bouncer)
        command = [str(SCRIPT), "start", str(directory), str(bouncer.port), host, server_port]
        result = subprocess.run(
            [*command, str(pool_size)], capture_output=True, text=True, timeout=30, check=False
        )
        assert result.returncode == 0, f"PgBouncer did not start:\n{result.stdout}{result.stderr}"
        return bouncer

    yield start
    for bouncer in started:
        subprocess.run([str(SCRIPT), "stop", str(bouncer.directory)], check=False, timeout=30)
        shutil.rmtree(bouncer.directory, ignore_errors=True)


def app_database(
    url: str, monkeypatch: pytest.MonkeyPatch, *, pgbouncer: bool, **environment: str
) -> dict[str, Any]:
    """The default database's settings as bigmind/settings.py makes them from DATABASE_URL and
    DATABASE_PGBOUNCER (and any other variable given)."""
    monkeypatch.setenv("DATABASE_PGBOUNCER", "true" if pgbouncer else "false")
    monkeypatch.delenv("DATABASE_PREPARED_STATEMENTS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    database: dict[str, Any] = environ.Env.db_url_config(url)
    database_pooling_apply(database, environ.Env())
    return database


@pytest.fixture
def wrappers() -> Iterator[Callable[[dict[str, Any]], BaseDatabaseWrapper]]:
    """Django connections (what the app's threads hold) to given settings; closed afterwards."""
    made: list[BaseDatabaseWrapper] = []

    def make(database: dict[str, Any]) -> BaseDatabaseWrapper:
        wrapper = ConnectionHandler({"default": database})["default"]
        made.append(wrapper)
        return wrapper

    yield make
    for wrapper in made:
        wrapper.close()


# --- The settings ------------------------------------------------------------------------------
def test_behind_pgbouncer_server_side_cursors_and_prepared_statements_are_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgres://app@pgbouncer:6432/bigmind"

    direct = app_database(url, monkeypatch, pgbouncer=False)
    pooled = app_database(url, monkeypatch, pgbouncer=True)

    assert direct["OPTIONS"]["prepare_threshold"] == PREPARE_THRESHOLD
    assert not direct.get("DISABLE_SERVER_SIDE_CURSORS", False)
    assert pooled["OPTIONS"]["prepare_threshold"] is None
    assert pooled["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_prepared_statements_stay_possible_behind_a_pgbouncer_that_serves_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PgBouncer 1.21+ with max_prepared_statements handles psycopg's prepared statements."""
    database = app_database(
        "postgres://app@pgbouncer:6432/bigmind",
        monkeypatch,
        pgbouncer=True,
        DATABASE_PREPARED_STATEMENTS="true",
    )

    assert database["OPTIONS"]["prepare_threshold"] == PREPARE_THRESHOLD
    assert database["DISABLE_SERVER_SIDE_CURSORS"] is True


def test_pgbouncer_with_sqlite_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="DATABASE_PGBOUNCER=true needs a postgres"):
        app_database("sqlite:////tmp/x.sqlite3", monkeypatch, pgbouncer=True)


# --- What breaks through transaction pooling, and what the settings change -------------------------
def _run_group_style_statement(wrapper: BaseDatabaseWrapper, times: int) -> None:
    """A statement run on psycopg's own cursor, as the ingest group insert is
    (events_app/ingest/store.py): psycopg prepares it after PREPARE_THRESHOLD runs."""
    wrapper.ensure_connection()
    cursor = psycopg.Cursor(wrapper.connection)
    for n in range(times):
        cursor.execute("SELECT %s::int + 1", [n])
        assert cursor.fetchone() == (n + 1,)


def test_prepared_statements_collide_through_transaction_pooling_unless_turned_off(
    start_pgbouncer: Callable[[int], Bouncer],
    wrappers: Callable[[dict[str, Any]], BaseDatabaseWrapper],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two app connections share PgBouncer's one server connection: psycopg names its prepared
    statements per client connection (`_pg3_0`...), so the second prepares a name the server
    already holds from the first."""
    bouncer = start_pgbouncer(1)
    runs = PREPARE_THRESHOLD + 3

    direct = app_database(bouncer.url(), monkeypatch, pgbouncer=False)
    first, second = wrappers(direct), wrappers(dict(direct))
    _run_group_style_statement(first, runs)
    with pytest.raises(psycopg.errors.DuplicatePreparedStatement, match="_pg3_0"):
        _run_group_style_statement(second, runs)

    pooled = app_database(bouncer.url(), monkeypatch, pgbouncer=True)
    first, second = wrappers(pooled), wrappers(dict(pooled))
    _run_group_style_statement(first, runs)
    _run_group_style_statement(second, runs)
    _run_group_style_statement(first, runs)


@contextlib.contextmanager
def app_alias(database: dict[str, Any]) -> Iterator[str]:
    """`database` as this thread's connection under one more alias, for the ORM to query
    through. Not in the settings' aliases: Django's test case lets such a connection open."""
    alias = f"pgbouncer_{uuid.uuid4().hex[:8]}"
    wrapper = ConnectionHandler({"default": database, alias: database})[alias]
    connections[alias] = wrapper
    try:
        yield alias
    finally:
        wrapper.close()
        del connections[alias]


def _chunks_while_another_client_holds_a_server(alias: str, bouncer: Bouncer) -> list[str]:
    """QuerySet.iterator() two rows at a time, with another client in a transaction between two
    chunks: it holds the server connection the first chunk used (PgBouncer hands out the most
    recently used one), so the next chunk goes to another server connection."""
    rows = MigrationRecorder.Migration.objects.using(alias).order_by("id").iterator(chunk_size=2)
    names = [next(rows).name, next(rows).name]
    with psycopg.connect(bouncer.url()) as other:
        other.execute("SELECT 1")  # not autocommit: a transaction holding its server connection
        names += [row.name for row in rows]
    return names


def test_iterator_chunks_need_client_side_cursors_through_transaction_pooling(
    start_pgbouncer: Callable[[int], Bouncer], monkeypatch: pytest.MonkeyPatch
) -> None:
    bouncer = start_pgbouncer(2)
    expected = list(
        MigrationRecorder.Migration.objects.order_by("id").values_list("name", flat=True)
    )
    assert len(expected) > 4

    # Django's error, or psycopg's when closing the cursor on the way out fails the same way.
    refused = pytest.raises((DatabaseError, psycopg.Error), match=r"cursor .* does not exist")
    with app_alias(app_database(bouncer.url(), monkeypatch, pgbouncer=False)) as alias, refused:
        _chunks_while_another_client_holds_a_server(alias, bouncer)

    with app_alias(app_database(bouncer.url(), monkeypatch, pgbouncer=True)) as alias:
        assert _chunks_while_another_client_holds_a_server(alias, bouncer) == expected


def _synchronous_commit(bouncer: Bouncer) -> str:
    with psycopg.connect(bouncer.url(), autocommit=True) as other:
        row = other.execute("SHOW synchronous_commit").fetchone()
    assert row is not None
    return str(row[0])


def test_a_worker_sets_no_session_state_behind_pgbouncer(
    start_pgbouncer: Callable[[int], Bouncer],
    wrappers: Callable[[dict[str, Any]], BaseDatabaseWrapper],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker's `SET synchronous_commit TO OFF` (bigmind/celery.py) would stay on the pooled
    server connection and make the next client's commits (ingest's, whose 202 promises the event
    is stored) asynchronous too."""
    bouncer = start_pgbouncer(1)
    try:
        with override_settings(DATABASE_PGBOUNCER=False, BIGMIND_WORKER_SYNCHRONOUS_COMMIT=False):
            worker_database_sessions()
        wrappers(app_database(bouncer.url(), monkeypatch, pgbouncer=False)).ensure_connection()
        assert _synchronous_commit(bouncer) == "off"  # what the setting prevents
    finally:
        connection_created.disconnect(dispatch_uid="bigmind-worker-async-commit")
    with psycopg.connect(bouncer.url(), autocommit=True) as conn:
        conn.execute("RESET synchronous_commit")
    assert _synchronous_commit(bouncer) == "on"

    try:
        with override_settings(DATABASE_PGBOUNCER=True, BIGMIND_WORKER_SYNCHRONOUS_COMMIT=False):
            worker_database_sessions()
        wrappers(app_database(bouncer.url(), monkeypatch, pgbouncer=True)).ensure_connection()
        assert _synchronous_commit(bouncer) == "on"
    finally:
        connection_created.disconnect(dispatch_uid="bigmind-worker-async-commit")


# --- The app through PgBouncer -----------------------------------------------------------------
def _event(i: int) -> dict[str, Any]:
    return {
        "signal": "abuse-open",
        "identity": {"type": "account", "id": f"acc-{i % 7}"},
        "data": {"n": i},
        "reference": f"pgb-{i}",
    }


def test_ingest_batches_reads_and_a_real_worker_go_through_transaction_pooling(
    start_pgbouncer: Callable[[int], Bouncer], tmp_path: Path
) -> None:
    """gunicorn (group commit: many request threads, one writer per process), the batch path, a
    management command reading with .iterator() and a real Celery worker, all on a pool of 3
    server connections that every client's transactions share."""
    bouncer = start_pgbouncer(3)
    server = Gunicorn(
        var_dir=tmp_path / "web",
        workers=2,
        extra_env={"DATABASE_URL": bouncer.url(), "DATABASE_PGBOUNCER": "true"},
    )
    with server.serving():
        url = f"http://127.0.0.1:{server.port}/v1/events"
        headers = {"Authorization": f"Bearer {server.raw_key}"}
        statuses: list[int] = []
        lock = threading.Lock()

        def send(start: int) -> None:
            with requests.Session() as session:
                for i in range(start, start + 10):
                    response = session.post(url, json=_event(i), headers=headers, timeout=30)
                    with lock:
                        statuses.append(response.status_code)

        threads = [threading.Thread(target=send, args=(n * 10,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [202] * 80, server.log_tail()

        batch = {"events": [_event(i) for i in range(100, 120)]}
        response = requests.post(f"{url}/batch", json=batch, headers=headers, timeout=30)
        assert response.status_code == 202, response.text
        event_id = response.json()["data"][0]["id"]
        response = requests.get(f"{url}/{event_id}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text

        database_url = server.env["DATABASE_URL"]
        worker = worker_start(env=server.env, log_dir=tmp_path, queues=QUEUES)
        try:
            worker.wait_ready()

            def completed() -> bool:
                with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
                    row = conn.execute(
                        "SELECT count(*) FILTER (WHERE status = 'completed'), "
                        "count(*) FILTER (WHERE status = 'failed'), count(*) "
                        "FROM events_app_event"
                    ).fetchone()
                assert row is not None
                assert row[1] == 0, worker.log()
                return bool(row[0] == row[2] == 100)

            wait_for(completed, timeout=120, interval=0.5, message=lambda: worker.log()[-3000:])
        finally:
            worker.stop()
        assert "does not exist" not in worker.log() + server.log_text()
        assert "already exists" not in worker.log() + server.log_text()

        # The audit log command reads with QuerySet.iterator().
        lines = manage("audit_log", env=server.env).splitlines()
        assert any('"signal"' in line or "abuse" in line for line in lines), lines
    assert "login failed" not in bouncer.log()

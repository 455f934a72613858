"""The cluster rehearsal's own tools (docs/rehearsal.md), each against real processes:
`scripts/benchlib/pgcluster.py` (a private primary, a streaming replica made with
`pg_basebackup -R`, PgBouncer in transaction pooling) and `scripts/benchlib/lb.py` (the load
balancer in front of the web nodes).

Marked `fault`: they run in the fault suite's step, where BIGMIND_REQUIRE_FAULT=1 turns a missing
binary (here also pgbouncer) into a failure instead of a skip.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.benchlib.pgcluster import PgCluster, missing_binaries
from tests.harness import REPO_ROOT, free_port, wait_for

pytestmark = [pytest.mark.fault]


@pytest.fixture
def cluster() -> Iterator[PgCluster]:
    reason = missing_binaries()
    if reason is not None:
        if os.environ.get("BIGMIND_REQUIRE_FAULT") == "1":
            pytest.fail(f"BIGMIND_REQUIRE_FAULT=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    # Not under pytest's tmp_path (mode 0700, root's): the postgres user must reach it.
    root = Path(tempfile.mkdtemp(prefix="bigmind-pgcluster-"))
    root.chmod(0o755)
    try:
        with PgCluster(root / "cluster") as started:
            yield started
        assert not (root / "cluster").exists(), "stop() deletes the cluster's directory"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_replica_streams_the_primary_and_pgbouncer_pools_transactions(
    cluster: PgCluster,
) -> None:
    import psycopg

    assert cluster.replica is not None and cluster.bouncer is not None
    cluster.primary.create_database("app")
    # Through PgBouncer, as the app writes: no prepared statements (PgBouncer 1.18 in
    # transaction pooling cannot keep them), each statement its own transaction.
    with psycopg.connect(
        cluster.bouncer_url("app"), autocommit=True, prepare_threshold=None
    ) as conn:
        conn.execute("CREATE TABLE t (n int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 1000)")
    cluster.replica.wait_caught_up(timeout=30)
    with psycopg.connect(cluster.replica_url("app"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*), sum(n), pg_is_in_recovery() FROM t").fetchone()
        assert row == (1000, 500500, True)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO t VALUES (0)")
    with cluster.primary.connect("postgres", autocommit=True) as conn:
        streaming = conn.execute(
            "SELECT state FROM pg_stat_replication WHERE application_name = 'replica'"
        ).fetchone()
    assert streaming == ("streaming",)
    assert cluster.replica.lag_seconds() == 0.0
    pools = {row[0]: row[-1] for row in cluster.bouncer.show("POOLS")}
    assert pools["app"] == "transaction"


class _Named(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the name of its server."""

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _backend(name: str) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return str(response.read().decode())


def test_the_load_balancer_takes_turns_and_skips_a_node_that_refuses(tmp_path: Path) -> None:
    one, two = _backend("one"), _backend("two")
    dead = free_port()  # nothing listens: a killed node
    port, stats = free_port(), tmp_path / "lb.json"
    command = [sys.executable, str(REPO_ROOT / "scripts" / "benchlib" / "lb.py")]
    command += ["--listen", str(port), "--stats", str(stats)]
    command += ["--backend", f"one=127.0.0.1:{one.server_address[1]}"]
    command += ["--backend", f"dead=127.0.0.1:{dead}"]
    command += ["--backend", f"two=127.0.0.1:{two.server_address[1]}"]
    lb = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(stats.exists, timeout=20, message="the load balancer to start")
        answers = Counter(_get(port) for _ in range(12))
        # Every request answered; the dead node's turns went to the next live one.
        assert sum(answers.values()) == 12 and set(answers) == {"one", "two"}
        assert answers["two"] >= 4 and answers["one"] >= 4
        one.shutdown()
        one.server_close()
        assert {_get(port) for _ in range(6)} == {"two"}
    finally:
        lb.send_signal(signal.SIGTERM)
        lb.wait(timeout=10)
        two.shutdown()
    counts = json.loads(stats.read_text())["backends"]
    assert counts["dead"]["connections"] == 0 and counts["dead"]["connect_failures"] >= 1
    assert counts["one"]["connections"] + counts["two"]["connections"] == 18
    assert counts["one"]["connect_failures"] >= 1

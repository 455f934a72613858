#!/usr/bin/env python3
"""The cluster rehearsal (`make rehearse`, docs/rehearsal.md): the service scaled out on one
machine, loaded, broken and checked.

- PostgreSQL: a primary reached through PgBouncer (transaction pooling; the nodes' DATABASE_URL)
  and a streaming replica made with `pg_basebackup -R` (DATABASE_REPLICA_URLS), private clusters
  (scripts/benchlib/pgcluster.py);
- RabbitMQ: a fresh vhost of the machine's server for this run, deleted after it, with
  CELERY_QUORUM_QUEUES=true; a private Redis for the cache and rate limits;
- two web nodes (gunicorn as docs/deployment.md runs it) and two worker nodes (`celery worker
  -Q events.process,default`), each a process group of its own with its own hostname, node name,
  BIGMIND_VAR_DIR and log, plus one beat, behind a round-robin load balancer
  (scripts/benchlib/lb.py);
- the load: `--events` (20,000) POST /v1/events through the load balancer, each with its own
  Idempotency-Key and reference, a mix of metric events (values 1 to 7, so that rollups can be
  checked against what was sent) and plain events; mid-load one web node and one worker node
  are SIGKILLed (the whole process group) and restarted. A request with no answer, or a 503, is
  sent again with its Idempotency-Key, as a client would;
- the integrity check: every accepted request stored exactly once (by reference and by
  idempotency key), completed exactly once, rollups exact, the broker drained, and the replica
  consistent with the primary once it caught up, with reads through the load balancer.

The Markdown report goes to `<--out>/rehearsal.md` (var/rehearse/) and stdout; the exit status
is non-zero on any failed check. Without the PostgreSQL 15 server binaries, pgbouncer,
redis-server or a RabbitMQ server the run is skipped (exit 0), unless BIGMIND_REQUIRE_REHEARSAL=1
(CI), which makes that a failure.

    .venv/bin/python scripts/rehearse.py                     # make rehearse
    .venv/bin/python scripts/rehearse.py --events 2000       # a quick one
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib.db import ENGAGEMENT_EPOCH, INTEGRITY_SQL  # noqa: E402
from benchlib.pgcluster import PGBOUNCER, PgCluster  # noqa: E402
from benchlib.pgcluster import missing_binaries as pg_missing  # noqa: E402
from benchlib.stack import log, set_log_tag, trap_signals  # noqa: E402

from tests.harness import (  # noqa: E402
    REDIS_SERVER,
    PrivateRedis,
    Service,
    children_of,
    cpu_ticks,
    free_port,
    wait_for,
)
from tests.harness import manage as harness_manage  # noqa: E402
from tests.reliability.conftest import APP_ENV  # noqa: E402
from tests.reliability.load import Load, Outcome  # noqa: E402

DATABASE = "bigmind_rehearse"
ORGANIZATION = "rehearsal"
METRIC_SIGNAL = "rehearsal-metric"
EVENT_SIGNAL = "rehearsal-event"
QUEUES = "events.process,default"
REQUIRE_ENV = "BIGMIND_REQUIRE_REHEARSAL"
RABBITMQCTL = os.environ.get("BIGMIND_RABBITMQCTL", "rabbitmqctl")


# --- the load ----------------------------------------------------------------------------------
def metric_value(index: int) -> int | None:
    """What request `index` sends: three in four are metric events of value 1..7, the rest
    plain events (None)."""
    return None if index % 4 == 3 else index % 7 + 1


@dataclass
class MixedLoad(Load):
    """The fault suite's load client, with a mix of a metric and a plain signal."""

    def body(self, index: int) -> bytes:
        value = metric_value(index)
        event: dict[str, Any] = {
            "signal": METRIC_SIGNAL if value is not None else EVENT_SIGNAL,
            "identity": {"type": "account", "id": f"{self.prefix}-acct-{index % self.identities}"},
            "data": {"value": value} if value is not None else {"page": f"p{index % 13}"},
            "reference": self.key(index),
        }
        return json.dumps(event).encode()


# --- nodes -------------------------------------------------------------------------------------
@dataclass
class Node:
    """One node of the cluster: a process group with its own hostname, var dir and log."""

    name: str
    role: str  # web, worker, beat
    command: list[str]
    env: dict[str, str]
    log: Path
    port: int = 0
    service: Service | None = None
    starts: int = 0
    log_offset: int = 0

    def start(self) -> None:
        # Readiness is read from what this start writes: every start appends to the log.
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self.service = Service(self.name, self.command, self.env, self.log)
        self.starts += 1

    def alive(self) -> bool:
        return self.service is not None and self.service.alive()

    def text(self) -> str:
        return self.service.text() if self.service else ""

    def wait_ready(self, api_key: str, timeout: float = 90) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.text()[-3000:]}")
            if self.role == "web":
                with contextlib.suppress(OSError):
                    status, _ = http_get(self.port, "/v1/signals", api_key, timeout=10)
                    return status == 200
                return False
            text = self.log.read_bytes()[self.log_offset :].decode(errors="replace")
            return (" ready." in text) if self.role == "worker" else ("Starting..." in text)

        wait_for(ready, timeout=timeout, interval=0.2, message=f"{self.name} to be ready")

    def ready_or_retry(self, api_key: str, attempts: int = 5) -> None:
        """Wait until ready; a web node whose port was taken meanwhile is started again.

        Its port stays the same across restarts (the load balancer knows it), and this machine
        hands out ports of the same range as the source ports of outgoing connections
        (ip_local_port_range), so a busy machine may hold it for a moment."""
        for attempt in range(attempts):
            try:
                self.wait_ready(api_key)
                return
            except RuntimeError:
                new = self.log.read_bytes()[self.log_offset :].decode(errors="replace")
                if attempt == attempts - 1 or "Address already in use" not in new:
                    raise
            log(f"{self.name}: port {self.port} is taken; starting it again in 2 s")
            assert self.service is not None
            self.service.stop()
            time.sleep(2)
            self.start()
            self.starts -= 1  # the same start, again

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a lost machine would go."""
        assert self.service is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.service.process.pid, signal.SIGKILL)
        self.service.process.wait(timeout=10)

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(timeout=20)


def http_get(port: int, path: str, api_key: str, timeout: float = 30) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {api_key}"})
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


# --- the run -----------------------------------------------------------------------------------
@dataclass
class Kill:
    node: str
    at: float  # seconds into the load
    sent: int  # requests begun by then
    down: float  # seconds until the restart began
    ready: float  # seconds from the kill until the node was ready again
    seen: str = ""  # what the node was doing (workers)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not applicable to this build
    detail: str


@dataclass
class Run:
    args: argparse.Namespace
    root: Path
    out: Path
    cluster: PgCluster
    cache: PrivateRedis
    vhost: str
    env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    lb: subprocess.Popen[bytes] | None = None
    lb_port: int = 0
    api_key: str = ""
    organization_id: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    kills: list[Kill] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)
    replica_seen: tuple[float, int] = (0.0, 0)  # during the load: max replay lag, connections

    def db(self, *, replica: bool = False) -> Any:
        server = self.cluster.replica if replica else self.cluster.primary
        assert server is not None
        return server.connect(DATABASE, autocommit=True)


def rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        [RABBITMQCTL, "-q", *args], capture_output=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} exited {result.returncode}: "
            f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode()


def missing() -> str | None:
    reason = pg_missing()
    if reason is not None:
        return reason
    if shutil.which(REDIS_SERVER) is None:
        return f"{REDIS_SERVER} is not on PATH (apt-get install redis-server)"
    if shutil.which(RABBITMQCTL) is None:
        return f"{RABBITMQCTL} is not on PATH (apt-get install rabbitmq-server)"
    try:
        rabbitmqctl("status")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return f"no RabbitMQ server answers: {exc}"
    return None


def manage(
    run: Run, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> str:
    """A management command with the cluster's environment (or `env`); its stdout."""
    return harness_manage(*args, env=env or run.env, stdin=stdin)


PROBE = """
import json
from django.conf import settings
from bigmind.celery import app
queues = {}
for queue in app.conf.task_queues or ():
    queues[queue.name] = (queue.queue_arguments or {}).get("x-queue-type", "classic")
print(json.dumps({"databases": sorted(settings.DATABASES), "queues": queues}))
"""


def seed(run: Run) -> None:
    """Migrate (on the primary directly: DDL and its locks are not PgBouncer's business), the
    rehearsal's signals and an API key; what this build makes of the cluster settings."""
    direct = {**run.env, "DATABASE_URL": run.cluster.primary_url(DATABASE)}
    manage(run, "migrate", "--noinput", "-v", "0", env=direct)
    schema = {"type": "object", "required": ["value"], "properties": {"value": {"type": "number"}}}
    document = {
        "organization": ORGANIZATION,
        "signals": [
            {
                "slug": METRIC_SIGNAL,
                "name": "Rehearsal metric",
                "type": "metric",
                "aggregation": "sum",
                "period": "day",
                "value_field": "value",
                "rate_limit_per_minute": 100_000_000,
                "schemas": [{"version": 1, "schema": schema}],
            },
            {
                "slug": EVENT_SIGNAL,
                "name": "Rehearsal event",
                "type": "event",
                "rate_limit_per_minute": 100_000_000,
            },
        ],
    }
    manage(run, "sync_signals", "-", stdin=json.dumps(document), env=direct)
    run.api_key = manage(
        run, "create_api_key", "--organization", ORGANIZATION, "--name", "rehearsal", env=direct
    ).strip()
    with run.db() as conn:
        row = conn.execute(
            "SELECT id FROM signals_app_organization WHERE slug = %s", [ORGANIZATION]
        ).fetchone()
        run.organization_id = int(row[0])
    run.probe = json.loads(manage(run, "shell", "-c", PROBE).strip().splitlines()[-1])


def node_env(run: Run, name: str) -> dict[str, str]:
    home = run.root / "nodes" / name
    (home / "var").mkdir(parents=True, exist_ok=True)
    (home / "prometheus").mkdir(parents=True, exist_ok=True)
    return {
        **run.env,
        # Its own host: what the node's processes and logs call themselves.
        "HOSTNAME": f"rehearse-{name}",
        "BIGMIND_VAR_DIR": str(home / "var"),
        "PROMETHEUS_MULTIPROC_DIR": str(home / "prometheus"),
    }


def nodes_create(run: Run) -> None:
    logs = run.out / "logs"
    for n, port in enumerate(run.args.web_ports, start=1):
        name = f"web-{n}"
        env = node_env(run, name)
        env.update(
            {
                "GUNICORN_BIND": f"127.0.0.1:{port}",
                "WEB_CONCURRENCY": str(run.args.web_processes),
                "GUNICORN_LOG_LEVEL": "info",
            }
        )
        command = [
            *(sys.executable, "-m", "gunicorn", "-c", str(ROOT / "bigmind" / "gunicorn_conf.py")),
            *("--name", f"bigmind-{name}", "bigmind.wsgi"),
        ]
        run.nodes[name] = Node(name, "web", command, env, logs / f"{name}.log", port=port)
    for n in (1, 2):
        name = f"worker-{n}"
        command = [
            *(sys.executable, "-m", "celery", "-A", "bigmind", "worker", "-Q", QUEUES),
            *("--pool", "prefork", "-c", str(run.args.worker_processes)),
            *("-n", f"{name}@rehearse-{name}", "--loglevel", "INFO"),
        ]
        run.nodes[name] = Node(name, "worker", command, node_env(run, name), logs / f"{name}.log")
    # Exactly one beat in a deployment; here on a node of its own, which is not killed (a beat
    # lost with its machine is started again elsewhere; docs/deployment.md).
    env = node_env(run, "beat")
    command = [
        *(sys.executable, "-m", "celery", "-A", "bigmind", "beat", "--loglevel", "INFO"),
        *("--schedule", str(run.root / "nodes" / "beat" / "var" / "celerybeat-schedule")),
    ]
    run.nodes["beat"] = Node("beat", "beat", command, env, logs / "beat.log")


def lb_start(run: Run) -> None:
    run.lb_port = run.args.lb_port or free_port()
    command = [
        *(sys.executable, str(ROOT / "scripts" / "benchlib" / "lb.py")),
        *("--listen", str(run.lb_port), "--stats", str(run.out / "lb.json")),
    ]
    for node in run.nodes.values():
        if node.role == "web":
            command += ["--backend", f"{node.name}=127.0.0.1:{node.port}"]
    handle = (run.out / "logs" / "lb.log").open("ab")
    run.lb = subprocess.Popen(
        command, cwd=ROOT, stdout=handle, stderr=handle, start_new_session=True
    )
    handle.close()
    wait_for(
        lambda: (run.out / "lb.json").exists(),
        timeout=20,
        message="the load balancer to listen",
    )


def lb_stop(run: Run) -> None:
    if run.lb is not None and run.lb.poll() is None:
        run.lb.send_signal(signal.SIGTERM)
        try:
            run.lb.wait(timeout=10)
        except subprocess.TimeoutExpired:
            run.lb.kill()
            run.lb.wait(timeout=10)


def processing_now(run: Run) -> int:
    with run.db() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM events_app_event WHERE status = 'processing'"
            ).fetchone()[0]
        )


def wait_until_busy(run: Run, node: Node, timeout: float = 10.0) -> str:
    """For a worker node: wait until one of its pool processes uses CPU while events are being
    processed, so that the kill most likely leaves claimed events behind (killing an idle
    worker only tests the easy case). What was seen, for the report."""
    assert node.service is not None
    pids = children_of(node.service.process.pid)
    deadline = time.monotonic() + timeout
    before = {pid: cpu_ticks(pid) for pid in pids}
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = {pid: cpu_ticks(pid) for pid in pids}
        if any(now[pid] > before[pid] >= 0 for pid in pids):
            claimed = processing_now(run)
            if claimed:
                return f"its pool busy, {claimed} events `processing` in the cluster"
        before = now
    return "no busy pool process seen within 10 s"


def kill_and_restart(run: Run, load: Load, name: str, started: float) -> None:
    node = run.nodes[name]
    seen = wait_until_busy(run, node) if node.role == "worker" else ""
    at, sent = time.monotonic() - started, load.sent
    node.kill()
    killed = time.monotonic()
    log(f"SIGKILLed {name}'s process group at {at:.1f} s ({sent} requests sent) {seen}")
    time.sleep(run.args.down_seconds)
    down = time.monotonic() - killed
    node.start()
    node.ready_or_retry(run.api_key)
    ready = time.monotonic() - killed
    log(f"{name} restarted, ready {ready:.1f} s after the kill")
    run.kills.append(Kill(name, at, sent, down, ready, seen))


def retry(run: Run, load: Load, outcomes: list[Outcome]) -> tuple[list[Outcome], Counter[str]]:
    """Send again, with the same Idempotency-Key and body, each request that got no answer or a
    503 (as a client would); its last answer replaces the first. What the first answers were."""
    first = Counter(
        "no answer" if o.status is None else str(o.status)
        for o in outcomes
        if o.status is None or o.status == 503
    )
    final = []
    for outcome in outcomes:
        answer = outcome
        for _ in range(20):
            if answer.status is not None and answer.status != 503:
                break
            time.sleep(0.5)
            answer = load.send(outcome.index)
        final.append(answer)
    return final, first


def wait_processed(run: Run, expected: int, timeout: float) -> float:
    started = time.monotonic()

    def done() -> bool:
        with run.db() as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status IN ('pending', 'processing')) "
                "FROM events_app_event"
            ).fetchone()
        return int(row[0]) >= expected and int(row[1]) == 0

    try:
        wait_for(done, timeout=timeout, interval=0.5, message="every event to be processed")
    except AssertionError as exc:
        run.notes.append(str(exc))
    return time.monotonic() - started


class ReplicaWatch(threading.Thread):
    """During the load, once a second: the replica's replay lag, and how many connections of the
    app's nodes it holds (pg_stat_activity on the replica)."""

    def __init__(self, run: Run) -> None:
        super().__init__(name="replica-watch", daemon=True)
        self.run_ = run
        self.lags: list[float] = []
        self.connections = 0
        self.halt = threading.Event()

    def run(self) -> None:
        replica = self.run_.cluster.replica
        assert replica is not None
        while not self.halt.wait(1.0):
            with contextlib.suppress(Exception):
                lag = replica.lag_seconds()
                if lag is not None:
                    self.lags.append(lag)
                with self.run_.db(replica=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
                        [DATABASE],
                    ).fetchone()
                self.connections = max(self.connections, int(row[0]))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


# --- the integrity check -----------------------------------------------------------------------
def idempotency_keys(conn: Any, organization_id: int) -> tuple[str, list[tuple[str, str]]] | None:
    """Where this build keeps the keys, and the organization's (key, event id) pairs: a table
    of their own (`events_app_idempotencykey`) or the event's column."""
    table = conn.execute("SELECT to_regclass('events_app_idempotencykey') IS NOT NULL").fetchone()
    if table[0]:
        sql = "SELECT key, event_id::text FROM events_app_idempotencykey WHERE organization_id = %s"
        where = "events_app_idempotencykey"
    else:
        column = conn.execute(
            "SELECT 1 FROM information_schema.columns "
            "WHERE table_name = 'events_app_event' AND column_name = 'idempotency_key'"
        ).fetchone()
        if not column:
            return None
        sql = (
            "SELECT idempotency_key, id::text FROM events_app_event "
            "WHERE organization_id = %s AND idempotency_key IS NOT NULL"
        )
        where = "events_app_event.idempotency_key"
    rows = conn.execute(sql, [organization_id]).fetchall()
    return where, [(str(key), str(event_id)) for key, event_id in rows]


CHECKSUM_SQL = {
    "events": "SELECT count(*), md5(coalesce(string_agg(id::text || ':' || status || ':' "
    "|| coalesce(processed_at::text, ''), ',' ORDER BY id), '')) FROM events_app_event",
    "aggregates": "SELECT count(*), md5(coalesce(string_agg(signal_id::text || ':' "
    "|| crm_record_id::text || ':' || bucket_start::text || ':' || count::text || ':' "
    "|| sum::text, ',' ORDER BY signal_id, crm_record_id, bucket_start), '')) "
    "FROM events_app_metricaggregate",
    "insights": "SELECT count(*), md5(coalesce(string_agg(event_id::text, ',' "
    "ORDER BY event_id), '')) FROM events_app_insight",
}


def replica_reads(run: Run) -> int:
    """Transactions the replica has served on the rehearsal's database so far."""
    with run.db(replica=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            [DATABASE],
        ).fetchone()
    return int(row[0]) if row else 0


def integrity(run: Run, load: Load, outcomes: list[Outcome]) -> tuple[list[Check], int, int]:
    """The checks, and the lost and duplicated counts."""
    checks: list[Check] = []
    sent = {o.key: o for o in outcomes}
    accepted = [o for o in outcomes if o.accepted]
    with run.db() as conn:
        stored = conn.execute(
            "SELECT reference, id::text, status, attempts FROM events_app_event "
            "WHERE organization_id = %s",
            [run.organization_id],
        ).fetchall()
        keys = idempotency_keys(conn, run.organization_id)
        got = {}
        for name, sql in INTEGRITY_SQL.items():
            params = (ENGAGEMENT_EPOCH, 14.0) if "%s" in sql else ()
            got[name] = float(conn.execute(sql, params).fetchone()[0])
        metric_rows = conn.execute(
            "SELECT count(*), coalesce(sum((e.data->>'value')::float8), 0) FROM events_app_event "
            "e JOIN signals_app_signal s ON s.id = e.signal_id WHERE s.slug = %s "
            "AND e.status = 'completed'",
            [METRIC_SIGNAL],
        ).fetchone()
        aggregate = conn.execute(
            "SELECT coalesce(sum(a.count), 0), coalesce(sum(a.sum), 0) "
            "FROM events_app_metricaggregate a JOIN signals_app_signal s ON s.id = a.signal_id "
            "WHERE s.slug = %s",
            [METRIC_SIGNAL],
        ).fetchone()
    by_reference = Counter(str(row[0]) for row in stored)
    id_of = {str(row[0]): row[1] for row in stored}
    statuses = Counter(str(row[2]) for row in stored)
    attempts = Counter(int(row[3]) for row in stored)

    unanswered = [o for o in outcomes if not o.accepted]
    checks.append(
        Check(
            "every request accepted in the end (after its retries)",
            not unanswered,
            f"{len(accepted)} of {len(outcomes)} accepted"
            + (
                f"; not: {dict(Counter(str(o.status or o.error) for o in unanswered))}"
                if unanswered
                else ""
            ),
        )
    )
    missing = [o.key for o in accepted if by_reference[o.key] == 0]
    twice = [ref for ref, n in by_reference.items() if n > 1]
    strangers = [ref for ref in by_reference if ref not in sent]
    checks.append(
        Check(
            "every accepted request stored exactly once (by reference)",
            not missing and not twice and not strangers,
            f"{len(stored)} stored for {len(accepted)} accepted; {len(missing)} missing, "
            f"{len(twice)} stored twice, {len(strangers)} nobody sent"
            + (f" (e.g. {(missing + twice + strangers)[:3]})" if missing or twice else ""),
        )
    )
    if keys is None:
        checks.append(Check("every accepted request stored once (by key)", False, "no key store"))
        key_missing, key_twice = 0, 0
    else:
        where, pairs = keys
        counts = Counter(key for key, _ in pairs)
        key_missing = sum(1 for o in accepted if counts[o.key] == 0)
        key_twice = sum(1 for n in counts.values() if n > 1)
        # Each request's reference is its key: the key must name the event stored under it.
        elsewhere = sum(1 for key, event_id in pairs if id_of.get(key) != event_id)
        checks.append(
            Check(
                "every accepted request stored exactly once (by Idempotency-Key)",
                key_missing == 0 and key_twice == 0 and elsewhere == 0,
                f"{len(pairs)} keys in {where}; {key_missing} missing, {key_twice} stored "
                f"twice, {elsewhere} naming another event than the one of their reference",
            )
        )
    wrong_ids = [o.key for o in accepted if o.event_id and id_of.get(o.key) != o.event_id]
    replayed = sum(1 for o in accepted if o.replayed)
    checks.append(
        Check(
            "every answer names the stored event (replays included)",
            not wrong_ids,
            f"{replayed} retries answered 200 Idempotent-Replayed; {len(wrong_ids)} answers "
            "with another id than the stored one",
        )
    )
    not_done = len(stored) - statuses["completed"]
    checks.append(
        Check(
            "every stored event completed",
            not_done == 0,
            ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())),
        )
    )
    checks.append(
        Check(
            "processed once: one completion, result and rollup each, insights once",
            got["without_rollup"] == 0
            and got["event_insights"] == got["event_type_events"]
            and got["insights_without_event"] == 0
            and got["not_completed_once"] <= 0,
            f"{got['without_rollup']:.0f} completed without result or rollup; "
            f"{got['event_insights']:.0f} insights for {got['event_type_events']:.0f} plain "
            f"events; claims per event: {dict(sorted(attempts.items()))} (a second claim is "
            "an event the killed worker held, handed back by the sweep); status history: "
            + (
                "none in this build"
                if got["not_completed_once"] < 0
                else f"{got['not_completed_once']:.0f} events without exactly one `completed` step"
            ),
        )
    )
    sent_count = sum(1 for o in accepted if metric_value(o.index) is not None)
    sent_sum = float(sum(metric_value(o.index) or 0 for o in accepted))
    stored_count, stored_sum = int(metric_rows[0]), float(metric_rows[1])
    rollup_count, rollup_sum = int(aggregate[0]), float(aggregate[1])
    rollups_ok = rollup_count == stored_count == sent_count and rollup_sum == stored_sum == sent_sum
    checks.append(
        Check(
            "rollups exact (metric aggregates = the events = what was accepted)",
            rollups_ok,
            f"aggregates count {rollup_count} sum {rollup_sum:g}; completed metric events "
            f"{stored_count} sum {stored_sum:g}; accepted metric requests {sent_count} "
            f"sum {sent_sum:g}",
        )
    )
    checks.append(
        Check(
            "engagement counted once per event",
            got["wrong_engagement"] == 0,
            f"{got['wrong_engagement']:.0f} of {got['records']:.0f} CRM records off",
        )
    )
    logged = sum(
        worker_log_counts(node.log.read_text(errors="replace"))[1]
        for node in run.nodes.values()
        if node.role == "worker" and node.log.exists()
    )
    # A completion is logged after its commit: a worker killed in between loses the line, but
    # more lines than events would be an event completed twice.
    checks.append(
        Check(
            "no completion twice in the workers' logs",
            logged <= statuses["completed"],
            f"{logged} completions logged by the worker nodes for {statuses['completed']} "
            "completed events",
        )
    )
    checks.extend(broker_checks(run))
    checks.extend(replica_checks(run, accepted))
    lost = len(missing) + key_missing + not_done + max(0, sent_count - rollup_count)
    duplicated = len(twice) + key_twice + len(strangers) + max(0, rollup_count - sent_count)
    return checks, lost, duplicated


def _queues(run: Run) -> dict[str, tuple[str, int, int]]:
    """The worker queues of the run's vhost: name -> (type, ready, unacknowledged)."""
    rows = [
        line.split("\t")
        for line in rabbitmqctl(
            "list_queues",
            "-p",
            run.vhost,
            "name",
            "type",
            "messages_ready",
            "messages_unacknowledged",
        ).splitlines()
        if line.strip() and not line.startswith("name")
    ]
    return {r[0]: (r[1], int(r[2]), int(r[3])) for r in rows if r[0] in QUEUES.split(",")}


def broker_checks(run: Run) -> list[Check]:
    # Every event is completed by now, but beat keeps publishing its periodic tasks (the sweep
    # every few seconds) and a worker holds each unacknowledged while it runs it: a snapshot
    # can catch one in flight. Drained means a moment with nothing ready or unacknowledged; a
    # message stuck in a queue (never consumed, or held by a consumer that is gone) keeps the
    # count up for the whole wait and fails the check.
    deadline = time.monotonic() + 60
    ours = _queues(run)
    while sum(ready + unacked for _, ready, unacked in ours.values()) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.5)
        ours = _queues(run)
    left = {name: (ready, unacked) for name, (_, ready, unacked) in ours.items()}
    types = {name: kind for name, (kind, _, _) in ours.items()}
    stuck = sum(ready + unacked for ready, unacked in left.values())
    checks = [
        Check(
            "broker drained",
            stuck == 0,
            f"{stuck} messages left (ready, unacknowledged) {left}"
            + (" after waiting 60 s" if stuck else ""),
        )
    ]
    wanted = {name: run.probe.get("queues", {}).get(name) for name in ours}
    if any(kind == "quorum" for kind in wanted.values()):
        checks.append(
            Check(
                "worker queues are quorum queues",
                all(kind == "quorum" for kind in types.values()),
                f"rabbitmqctl list_queues: {types}",
            )
        )
    else:
        checks.append(
            Check(
                "worker queues are quorum queues",
                False,  # CELERY_QUORUM_QUEUES=true is set: a build that ignores it fails
                f"this build declares {wanted or 'no queues'} (CELERY_QUORUM_QUEUES not read); "
                f"rabbitmqctl list_queues: {types}",
            )
        )
    return checks


def replica_checks(run: Run, accepted: list[Outcome]) -> list[Check]:
    checks = []
    assert run.cluster.replica is not None
    caught_up = run.cluster.replica.wait_caught_up(timeout=120)
    run.timings["replica catch-up after the last write"] = caught_up
    differ = []
    sums = {}
    with run.db() as primary, run.db(replica=True) as replica:
        for name, sql in CHECKSUM_SQL.items():
            mine, theirs = primary.execute(sql).fetchone(), replica.execute(sql).fetchone()
            sums[name] = f"{mine[0]} rows, md5 {str(mine[1])[:12]}"
            if tuple(mine) != tuple(theirs):
                differ.append(f"{name}: primary {tuple(mine)}, replica {tuple(theirs)}")
    checks.append(
        Check(
            "replica consistent with the primary (row counts and checksums)",
            not differ,
            "; ".join(differ) if differ else "; ".join(f"{k} {v}" for k, v in sums.items()),
        )
    )
    before = replica_reads(run)
    sample = random.Random(16).sample(accepted, min(run.args.reads, len(accepted)))
    bad = []
    for outcome in sample:
        status, body = http_get(run.lb_port, f"/v1/events/{outcome.event_id}", run.api_key)
        data = body.get("data") if isinstance(body, dict) else None
        if not (status == 200 and isinstance(data, dict) and data.get("status") == "completed"):
            bad.append(f"{outcome.event_id}: {status}")
    for outcome in sample[:50]:
        status, body = http_get(run.lb_port, f"/v1/events?reference={outcome.key}", run.api_key)
        items = body.get("data") if isinstance(body, dict) else None
        if not (status == 200 and isinstance(items, list) and len(items) == 1):
            bad.append(f"?reference={outcome.key}: {status} {len(items or [])} items")
    served = replica_reads(run) - before
    checks.append(
        Check(
            "reads through the load balancer (GET /v1/events/<id>, ?reference=)",
            not bad,
            f"{len(sample)} events by id and {min(50, len(sample))} by reference, each "
            f"completed and found once; {len(bad)} otherwise" + (f": {bad[:3]}" if bad else ""),
        )
    )
    replicas = [alias for alias in run.probe.get("databases", []) if alias != "default"]
    if replicas:
        checks.append(
            Check(
                "the replica served those reads",
                served > 0,
                f"{served} transactions on the replica during the reads (aliases {replicas})",
            )
        )
    else:
        checks.append(
            Check(
                "the replica served those reads",
                False,  # DATABASE_REPLICA_URLS is set: a build that ignores it fails
                f"this build has no replica database alias (DATABASE_REPLICA_URLS not read); "
                f"{served} transactions on the replica during the reads (the check's own)",
            )
        )
    return checks


# --- per-node counts ---------------------------------------------------------------------------
def worker_log_counts(text: str) -> tuple[int, int]:
    """(tasks that succeeded, events they completed) from a worker's task log lines
    (bigmind/worker_signals.py: `event_outcomes`, e.g. {"completed": 12})."""
    tasks, completed = 0, 0
    for line in text.splitlines():
        if '"bigmind.task"' not in line:
            continue
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            entry = json.loads(line)
            if entry.get("outcome") == "success":
                tasks += 1
                completed += int((entry.get("event_outcomes") or {}).get("completed", 0))
    return tasks, completed


def node_counts(run: Run) -> list[tuple[str, str, str]]:
    """(node, role, what it did) from the load balancer's counts and the nodes' logs."""
    try:
        stats = json.loads((run.out / "lb.json").read_text())["backends"]
    except (OSError, ValueError, KeyError):
        stats = {}
    rows = []
    for node in run.nodes.values():
        text = node.log.read_text(errors="replace") if node.log.exists() else ""
        if node.role == "web":
            lb = stats.get(node.name, {})
            answered = text.count('"logger": "bigmind.request"')
            what = (
                f"{lb.get('connections', 0)} connections from the LB, "
                f"{lb.get('connect_failures', 0)} refused; {answered} request log lines"
            )
        elif node.role == "worker":
            tasks, completed = worker_log_counts(text)
            what = f"{tasks} tasks succeeded, {completed} events completed in them"
        else:
            what = f"{text.count('Sending due task')} tasks sent"
        kills = sum(1 for k in run.kills if k.node == node.name)
        rows.append((node.name, node.role, f"{what}; started {node.starts}x, killed {kills}x"))
    return rows


# --- report ------------------------------------------------------------------------------------
def versions(run: Run) -> str:
    found = []
    with contextlib.suppress(Exception), run.db() as conn:
        found.append("PostgreSQL " + str(conn.execute("SHOW server_version").fetchone()[0]))
    with contextlib.suppress(Exception):
        found.append(
            subprocess.run(
                [PGBOUNCER, "--version"], capture_output=True, text=True, check=False
            ).stdout.splitlines()[0]
        )
    with contextlib.suppress(Exception):
        text = rabbitmqctl("version").strip()
        found.append(f"RabbitMQ {text}")
    return ", ".join(found)


def events_table(run: Run) -> str:
    with contextlib.suppress(Exception), run.db() as conn:
        row = conn.execute(
            "SELECT c.relkind, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) "
            "FROM pg_class c WHERE c.relname = 'events_app_event' AND c.relkind IN ('r', 'p')"
        ).fetchone()
        if row[0] == "p":
            return f"range-partitioned (relkind `p`), {row[1]} partitions"
        return f"a plain table (relkind `{row[0]}`)"
    return "unknown"


def report(
    run: Run,
    load: Load,
    outcomes: list[Outcome],
    first: Counter[str],
    checks: list[Check],
    lost: int,
    duplicated: int,
) -> tuple[str, bool]:
    passed = lost == 0 and duplicated == 0 and all(c.ok is not False for c in checks)
    accepted = sum(o.accepted for o in outcomes)
    lines = [
        "## Cluster rehearsal",
        "",
        f"**{'PASSED' if passed else 'FAILED'}: {lost} lost, {duplicated} duplicated** "
        f"({datetime.now(tz=UTC).isoformat(timespec='seconds')}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}; {versions(run)}).",
        "",
        f"Command: `{run.args.command}`",
        "",
        "### Cluster",
        "",
        "| node | role | process group | address / node name |",
        "|---|---|---|---|",
    ]
    for node in run.nodes.values():
        where = (
            f"gunicorn 127.0.0.1:{node.port}, {run.args.web_processes} processes"
            if node.role == "web"
            else (
                f"`{node.name}@rehearse-{node.name}`, -c {run.args.worker_processes}"
                if node.role == "worker"
                else "celery beat (exactly one)"
            )
        )
        lines.append(
            f"| {node.name} | {node.role} | own, HOSTNAME=rehearse-{node.name} | {where} |"
        )
    assert run.cluster.bouncer is not None and run.cluster.replica is not None
    lines += [
        f"| lb | load balancer | own | 127.0.0.1:{run.lb_port}, round-robin, skips a "
        "refusing node |",
        f"| pgbouncer | pool | own | 127.0.0.1:{run.cluster.bouncer.port}, transaction "
        f"pooling, {run.cluster.bouncer.pool_size} server connections (the nodes' DATABASE_URL) |",
        f"| primary | PostgreSQL | own | 127.0.0.1:{run.cluster.primary.port} |",
        f"| replica | PostgreSQL | own | 127.0.0.1:{run.cluster.replica.port}, streaming, "
        "`pg_basebackup -R` (DATABASE_REPLICA_URLS); during the load: replay lag at most "
        f"{run.replica_seen[0]:.1f} s, up to {run.replica_seen[1]} connections of the nodes |",
        f"| rabbitmq | broker | the machine's | vhost `{run.vhost}` (made for the run, deleted "
        "after), CELERY_QUORUM_QUEUES=true |",
        "",
        f"Events table on the primary: {events_table(run)}.",
        "",
        "### Load and kills",
        "",
        f"- {len(outcomes):,} POST /v1/events through the load balancer at {run.args.rate:g}/s "
        f"from {run.args.threads} threads: {accepted:,} accepted in the end; first answers "
        f"that were not 2xx: {dict(first) or 'none'} (each retried with its Idempotency-Key).",
    ]
    for kill in run.kills:
        lines.append(
            f"- `{kill.node}`: whole process group SIGKILLed {kill.at:.1f} s into the load "
            f"({kill.sent:,} requests sent), restarted after {kill.down:.1f} s, ready "
            f"{kill.ready:.1f} s after the kill"
            + (f"; at the kill: {kill.seen}." if kill.seen else ".")
        )
    lines += ["", "| phase | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.1f} |" for name, seconds in run.timings.items()]
    lines += ["", "### Per node", "", "| node | role | counts |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in node_counts(run)]
    lines += ["", "### Integrity", "", "| check | result | detail |", "|---|---|---|"]
    for check in checks:
        result = {True: "OK", False: "**FAILED**", None: "n/a"}[check.ok]
        lines.append(f"| {check.name} | {result} | {check.detail.replace('|', '/')} |")
    lines += [""] + [f"- note: {note}" for note in run.notes]
    return "\n".join(lines).rstrip() + "\n", passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=250.0, help="requests per second")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--web-processes", type=int, default=2, help="WEB_CONCURRENCY per node")
    parser.add_argument("--worker-processes", type=int, default=2, help="-c per worker node")
    parser.add_argument("--down-seconds", type=float, default=3.0, help="a killed node's outage")
    parser.add_argument("--reads", type=int, default=300, help="GET /v1/events/<id> to check")
    parser.add_argument("--out", default=str(ROOT / "var" / "rehearse"))
    parser.add_argument("--pg-ports", default="0,0", help="primary,replica (0: a free port)")
    parser.add_argument("--bouncer-port", type=int, default=0)
    parser.add_argument("--web-ports", default="0,0")
    parser.add_argument("--lb-port", type=int, default=0)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672")
    parser.add_argument("--keep", action="store_true", help="keep the servers' data directory")
    args = parser.parse_args()
    args.command = (
        "make rehearse" if len(sys.argv) == 1 else "scripts/rehearse.py " + " ".join(sys.argv[1:])
    )
    args.web_ports = [int(p) or free_port() for p in args.web_ports.split(",")]
    primary_port, replica_port = (int(p) or None for p in args.pg_ports.split(","))
    set_log_tag("rehearse", clock=True)

    reason = missing()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            log(f"{REQUIRE_ENV}=1 but {reason}")
            return 1
        log(f"skipped: {reason}")
        return 0

    trap_signals()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    (out / "logs").mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="h-rehearse-"))
    root.chmod(0o755)
    vhost = f"rehearse-{uuid.uuid4().hex[:8]}"
    run = Run(
        args=args,
        root=root,
        out=out,
        cluster=PgCluster(
            root / "pg",
            primary_port=primary_port,
            replica_port=replica_port,
            bouncer_port=args.bouncer_port or None,
            bouncer_pool_size=20,
        ),
        cache=PrivateRedis(root / "redis", "cache"),
        vhost=vhost,
    )
    passed = False
    clock = time.monotonic()
    try:
        log(f"PostgreSQL primary, replica and PgBouncer under {root}")
        run.cluster.start(databases=(DATABASE,))
        run.cache.start()
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        assert run.cluster.bouncer is not None
        run.env = {
            **os.environ,
            **APP_ENV,
            "DJANGO_SETTINGS_MODULE": "bigmind.settings",
            "DATABASE_URL": run.cluster.bouncer_url(DATABASE),
            # Transaction pooling: no prepared statements (PgBouncer 1.18 cannot serve them
            # across server connections), no server-side cursors (docs/deployment.md).
            "DATABASE_PGBOUNCER": "true",
            "DATABASE_PREPARED_STATEMENTS": "false",
            "DATABASE_REPLICA_URLS": run.cluster.replica_url(DATABASE),
            "CELERY_BROKER_URL": f"{args.amqp}/{vhost}",
            "CELERY_QUORUM_QUEUES": "true",
            "REDIS_URL": run.cache.url,
            "CACHE_URL": "",
            "CACHE_KEY_PREFIX": "bigmind-rehearse",
            "BIGMIND_RATE_LIMIT_EVENT": "100000000",
            "LOG_FORMAT": "json",
        }
        seed(run)
        nodes_create(run)
        for node in run.nodes.values():
            node.start()
        for node in run.nodes.values():
            node.ready_or_retry(run.api_key)
        lb_start(run)
        run.timings["cluster up (servers, migrate, nodes)"] = time.monotonic() - clock

        load = MixedLoad(
            port=run.lb_port,
            api_key=run.api_key,
            signal=METRIC_SIGNAL,
            prefix=f"r-{uuid.uuid4().hex[:6]}",
            total=args.events,
            rate=args.rate,
            threads=args.threads,
        )
        log(f"sending {args.events} events at {args.rate:g}/s through 127.0.0.1:{run.lb_port}")
        started = time.monotonic()
        watch = ReplicaWatch(run)
        watch.start()
        load.start()
        load.wait_sent(int(args.events * 0.3), timeout=args.events / args.rate * 5 + 60)
        kill_and_restart(run, load, "web-1", started)
        load.wait_sent(int(args.events * 0.55), timeout=args.events / args.rate * 5 + 60)
        kill_and_restart(run, load, "worker-1", started)
        load.join(timeout=args.events / args.rate * 5 + 120)
        run.timings["load"] = time.monotonic() - started
        watch.stop()
        run.replica_seen = (max(watch.lags, default=0.0), watch.connections)
        outcomes, first = retry(run, load, sorted(load.outcomes, key=lambda o: o.index))
        run.timings["retries of unanswered requests"] = (
            time.monotonic() - started - run.timings["load"]
        )
        accepted = sum(o.accepted for o in outcomes)
        drain = wait_processed(run, accepted, timeout=300)
        run.timings["processing after the load"] = drain
        checks, lost, duplicated = integrity(run, load, outcomes)
        text, passed = report(run, load, outcomes, first, checks, lost, duplicated)
        (out / "rehearsal.md").write_text(text)
        print(text)
        log(f"report: {out / 'rehearsal.md'}; logs: {out / 'logs'}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        for node in run.nodes.values():
            node.stop()
        lb_stop(run)
        run.cache.stop()
        with contextlib.suppress(Exception):
            rabbitmqctl("delete_vhost", vhost)
        run.cluster.stop(keep_logs=out / "logs")
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Soak: minutes of single-event ingest at 80% of the measured maximum, with workers running.

One command (`make bench-soak`, i.e. `.venv/bin/python scripts/bench_soak.py`), one run:

  1. its own PostgreSQL database (default `bench_soak`, dropped and recreated), migrated, with
     the demo data; its own Redis databases for the cache and the broker (emptied); gunicorn
     (bigmind/gunicorn_conf.py) and one Celery worker with one pool process per core, as
     scripts/bench_process.py starts them, and the per-signal rate limits raised;
  2. maximum: wrk on POST /v1/events (the three demo signals in turn) for --probe seconds WITH
     the workers running (they share the machine, as in production on one host); the maximum
     is the smaller of the 2xx rate and the rate of completions meanwhile (what the service
     sustains end to end); then it waits until the workers have drained that backlog;
  3. soak: a paced load generator (threads with keep-alive connections; request i is sent at
     t0 + i / rate, so the rate holds whatever the latency) sends --fraction (0.8) of that
     maximum for --duration seconds (300); every 5 s it samples the backlog (events pending or
     processing) and the resident memory (RSS) of every process of gunicorn (master and
     workers) and of the Celery worker (main process and pool children);
  4. after the load, the time to drain what is left; then the integrity checks that
     scripts/bench_process.py runs too (every event completed exactly once, aggregates,
     states, engagement);
  5. prints markdown: the rates, errors by status, backlog (max, at each minute, slope of the
     last half), and RSS (first minute against last minute, and the peak) per process.

The exit status is 1 when any request failed, an integrity check failed or the backlog grew
over the last half of the soak. The database, gunicorn, the worker, wrk, the paced client and the
integrity checks come from the shared harness (scripts/benchlib/). Only stdlib, psycopg and
redis (both in requirements.txt) and wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from benchlib import cli, loadgen, stack
from benchlib.db import Db, integrity
from benchlib.events import event_dict, identity_for
from benchlib.machine import session_rss
from benchlib.stack import log
from benchlib.stats import percentile, slope

SAMPLE_SECONDS = 5.0


# The tables the service updates (the rest only grow): what autovacuum would vacuum during a soak.
UPDATED_TABLES = (
    "events_app_event",
    "events_app_crmrecord",
    "events_app_metricaggregate",
    "events_app_recordstate",
    "signals_app_apikey",
)


class VacuumStandIn:
    """Autovacuum's work, when the server runs without it (this VM's PostgreSQL: `autovacuum =
    off`): VACUUM (ANALYZE) of the updated tables every `interval` seconds (autovacuum's default
    naptime) while the load runs. Without it, every event leaves two dead row versions behind
    (pending -> processing -> completed) that nothing removes, and the queries that look for
    pending events (the workers' claims, the backlog count) read more of them every minute: the
    backlog climbs because the database is never vacuumed, which no production server does."""

    def __init__(self, url: str, interval: float = 60.0) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        row = self.conn.execute("SHOW autovacuum").fetchone()
        self.needed = row is None or row[0] != "on"
        self.interval = interval
        self.runs: list[float] = []  # seconds each VACUUM took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.needed:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            started = time.monotonic()
            self.conn.execute(f"VACUUM (ANALYZE) {', '.join(UPDATED_TABLES)}")
            self.runs.append(time.monotonic() - started)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.conn.close()

    def describe(self) -> str:
        if not self.needed:
            return "autovacuum is on: PostgreSQL vacuumed the tables itself"
        took = f", {min(self.runs):.1f}-{max(self.runs):.1f} s each" if self.runs else ""
        return (
            f"autovacuum is off on this server: the script ran VACUUM (ANALYZE) of the updated "
            f"tables every {self.interval:g} s instead ({len(self.runs)} times{took})"
        )


@dataclass(kw_only=True)
class Soak(loadgen.PacedTally):
    target_rate: float
    seconds: float = 0.0
    client_cpu: float = 0.0  # CPU seconds of this script (mostly the load generator) meanwhile
    vacuum: str = ""  # what vacuumed the tables meanwhile (VacuumStandIn.describe)
    # (seconds since start, backlog, {group: {pid: rss KiB}})
    samples: list[tuple[float, int, dict[str, dict[int, int]]]] = field(default_factory=list)
    # (seconds since start, messages waiting in the broker): drained events leave their own
    # single-event messages behind, consumed later as no-ops (docs/operations.md, "Draining").
    messages: list[tuple[float, int]] = field(default_factory=list)
    tail_seconds: float = 0.0
    messages_left: int = 0
    messages_seconds: float = 0.0

    def backlog_slope(self) -> float:
        """Least-squares slope (events/s) of the backlog over the last half of the soak."""
        return slope([(t, b) for t, b, _ in self.samples if t >= self.seconds / 2])


@dataclass
class Probe:
    """The maximum: wrk with the workers running."""

    load: loadgen.LoadRun
    completed_per_s: float

    @property
    def maximum(self) -> float:
        # What the whole service sustains is the smaller of the two: when the workers fall
        # behind during the probe, wrk's rate takes CPU the workers would need to keep up.
        return min(self.load.ok_per_s, self.completed_per_s)


def paced_requests(args: argparse.Namespace, port: int, total: int) -> list[bytes]:
    """Every request of the soak as the bytes to send, made before the clock starts: building
    them while pacing (json.dumps, http.client) cost the load generator about five times the
    CPU, taken from the two cores the server and the workers share."""
    now = int(time.time())
    run_id = uuid.uuid4().hex[:8]
    requests = []
    for i in range(total):
        stream = i % args.clients
        reference = f"soak-{run_id}-{i}"
        body = json.dumps(
            event_dict(i + 1, identity_for(stream, i, args.identities), reference, now),
            separators=(",", ":"),
        ).encode()
        requests.append(loadgen.raw_post(port, "/v1/events", body, reference))
    return requests


def probe_run(args: argparse.Namespace, harness: stack.Stack, db: Db) -> Probe:
    """wrk on the pipeline's mix for --probe seconds with the workers running; then the wait
    until they have drained its backlog."""
    log(f"maximum: wrk for {args.probe:g} s with the workers running")
    before = db.sample()
    load = loadgen.wrk_mix_run(
        args, harness.workdir, harness.port, args.probe, f"probe-{uuid.uuid4().hex[:6]}"
    )
    after = db.sample()
    completed = (after[2] - after[0]) - (before[2] - before[0])
    probe = Probe(load, completed / load.duration if load.duration else 0.0)
    log(
        f"  {load.ok_per_s:.1f} events/s accepted, {probe.completed_per_s:.1f}/s "
        f"completed, errors {load.errors}"
    )
    if load.errors:
        raise RuntimeError(f"the probe had errors: {load.first_error}")
    started = time.monotonic()
    while db.backlog():
        if time.monotonic() - started > args.timeout:
            raise RuntimeError("the probe's backlog was not drained")
        time.sleep(0.5)
    log(f"  probe backlog drained in {time.monotonic() - started:.1f} s")
    return probe


def rss_table(soak: Soak) -> list[str]:
    """Per process: RSS in the first minute (its max), in the last minute (its max), peak."""
    first_window = [s for s in soak.samples if s[0] <= 60]
    last_window = [s for s in soak.samples if s[0] >= soak.seconds - 60]
    rows = []
    names: dict[tuple[str, int], None] = {}
    for _, _, groups in soak.samples:
        for group, pids in groups.items():
            for pid in pids:
                names[(group, pid)] = None

    def peak(samples: list[Any], group: str, pid: int) -> int:
        return max((s[2].get(group, {}).get(pid, 0) for s in samples), default=0)

    for group, pid in names:
        first, last, top = (
            peak(first_window, group, pid),
            peak(last_window, group, pid),
            peak(soak.samples, group, pid),
        )
        growth = f"{(last - first) / first * 100:+.1f}%" if first and last else "n/a (restarted)"
        rows.append(
            f"| {group} pid {pid} | {first / 1024:.1f} | {last / 1024:.1f} | {growth} | "
            f"{top / 1024:.1f} |"
        )
    return [
        "| process | RSS first minute, MiB | RSS last minute, MiB | change | peak MiB |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def report(args: argparse.Namespace, probe: Probe, soak: Soak, checks: list[str]) -> str:
    backlog_max = max((b for _, b, _ in soak.samples), default=0)
    minutes = [
        f"{b}" for t, b, _ in soak.samples if abs(t / 60 - round(t / 60)) * 60 < SAMPLE_SECONDS / 2
    ]
    ok = soak.statuses.get("202", 0)
    messages_max = max((m for _, m in soak.messages), default=0)
    messages_by_minute = [
        str(m) for t, m in soak.messages if abs(t / 60 - round(t / 60)) * 60 < SAMPLE_SECONDS / 2
    ]
    lines = [
        f"## Soak run ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"- Machine: {os.cpu_count()} cores; {stack.server_description(args)}; one Celery "
        f"worker with {args.processes} pool processes; PostgreSQL and Redis on the same host.",
        f"- Maximum single-event rate with the workers running (wrk, {args.probe:g} s, "
        f"{args.concurrency} connections): accepted {probe.load.ok_per_s:.1f} events/s, "
        f"completed {probe.completed_per_s:.1f}/s; the maximum the service sustains is the "
        f"smaller: **{probe.maximum:.1f} events/s** ({probe.load.errors} errors).",
        f"- Soak: {args.fraction:.0%} of that = **{soak.target_rate:.1f} events/s** for "
        f"{soak.seconds:.0f} s: {soak.sent} requests, {ok} answered 202 "
        f"({ok / soak.seconds:.1f}/s), {soak.statuses.get('200', 0)} answered 200 (a replay "
        f"of a request sent again), errors {soak.errors} "
        f"({dict((k, v) for k, v in soak.statuses.items() if k not in ('202', '200')) or 'none'}"
        f"); {soak.retried} sent again on a new connection after the server closed the old one "
        f"(a gunicorn process recycled); "
        f"latency p50 {percentile(soak.latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(soak.latencies, 0.99) * 1000:.1f} ms; "
        f"{soak.late} requests sent over 1 s after their slot; the load generator used "
        f"{soak.client_cpu / max(1, soak.sent) * 1e6:.0f} µs of CPU per request.",
        f"- Backlog (events pending or processing): max {backlog_max}; at each minute "
        f"{', '.join(minutes)}; slope over the last half {soak.backlog_slope():+.2f} events/s; "
        f"drained {soak.tail_seconds:.1f} s after the load stopped.",
        f"- Backlog every {SAMPLE_SECONDS:g} s: {' '.join(str(b) for _, b, _ in soak.samples)}.",
        f"- Vacuum: {soak.vacuum}.",
        f"- Broker messages waiting (`events.process`; mostly single-event messages of events "
        f"already drained, no-ops when consumed): max {messages_max}; at each minute "
        f"{', '.join(messages_by_minute)}; {soak.messages_left} left when the last event "
        f"completed, all consumed {soak.messages_seconds:.1f} s later.",
        "",
        *rss_table(soak),
        "",
        "Integrity:",
        "",
        *[f"- {line}" for line in checks],
        "",
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = cli.parser_for(__doc__)
    cli.add_service_arguments(
        parser, database="bench_soak", cache_db=14, broker_db=15, broker="emptied at the start"
    )
    parser.add_argument("--duration", "-d", type=float, default=300.0, help="soak seconds")
    parser.add_argument("--probe", type=float, default=30.0, help="seconds of the maximum probe")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the maximum, for the soak")
    parser.add_argument("--processes", type=int, default=cores, help="Celery pool processes")
    cli.add_server_arguments(parser)
    parser.add_argument(
        "--clients", type=int, default=16, help="paced load client threads (keep-alive)"
    )
    parser.add_argument("--identities", type=int, default=200, help="CRM records")
    parser.add_argument(
        "--vacuum-interval",
        type=float,
        default=60.0,
        help="seconds between the VACUUMs standing in for autovacuum when the server has it off",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a drain may take")
    args = parser.parse_args()
    cli.finish_server_arguments(parser, args)
    args.reset = True
    args.keep_database = False
    args.pool = "prefork"
    args.celery_app = "bigmind"
    return args


def soak_run(args: argparse.Namespace, harness: stack.Stack, db: Db, soak: Soak) -> None:
    """The paced load for --duration; every SAMPLE_SECONDS the backlog, the broker's queue and
    the RSS of gunicorn's and the worker's processes; then the wait until all is drained."""
    assert harness.gunicorn is not None
    worker = harness.workers[0]
    requests = paced_requests(args, harness.port, int(soak.target_rate * args.duration))
    log(f"soak: {soak.target_rate:.1f} events/s for {args.duration:g} s")
    load = threading.Thread(
        target=loadgen.paced_load,
        args=(harness.port, soak.target_rate, requests, args.clients, soak),
        daemon=True,
    )
    vacuum = VacuumStandIn(args.database_url, args.vacuum_interval)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    vacuum.start()
    load.start()
    next_sample = t0
    while load.is_alive():
        groups = {
            "gunicorn": {p: r for p, (_, r) in session_rss(harness.gunicorn.pid).items()},
            "celery": {p: r for p, (_, r) in session_rss(worker.pid).items()},
        }
        at = time.monotonic() - t0
        soak.samples.append((at, db.backlog(), groups))
        soak.messages.append((at, stack.broker_messages(harness.broker)[0]))
        if int(at) % 60 < SAMPLE_SECONDS:
            log(f"  {at:.0f} s: backlog {soak.samples[-1][1]}, sent {soak.sent}")
        next_sample += SAMPLE_SECONDS
        load.join(max(0.0, next_sample - time.monotonic()))
    soak.seconds = time.monotonic() - t0
    vacuum.stop()
    soak.vacuum = vacuum.describe()
    soak.client_cpu = time.process_time() - cpu0
    tail = time.monotonic()
    while db.backlog():
        if time.monotonic() - tail > args.timeout:
            raise RuntimeError("the soak's backlog was not drained")
        time.sleep(0.5)
    soak.tail_seconds = time.monotonic() - tail
    emptying = time.monotonic()
    soak.messages_left = stack.broker_wait_empty(harness.broker, [worker], args.timeout)
    soak.messages_seconds = time.monotonic() - emptying


def main() -> int:
    args = parse_args()
    stack.set_log_tag("soak", clock=True)
    harness = stack.Stack(args, "soak", var_dir="bench-soak")
    db: Db | None = None
    failed = True
    try:
        harness.prepare_database()
        harness.broker.flushdb()
        db = Db(args.database_url)
        # The backlog polls walk the status index itself, whose scans skip the entries of dead
        # row versions once seen; a bitmap scan (the planner's pick without statistics) visits
        # every such row again on every poll, a cost that grew to 0.6 s a poll by the fifth
        # minute and that the service under test paid for.
        db.conn.execute("SET enable_bitmapscan = off")
        harness.start_gunicorn()
        workers = harness.start_workers(args.processes, "soak")
        stack.broker_wait_consumers(harness.broker, args.broker_db, workers, 1, 60)

        probe = probe_run(args, harness, db)
        soak = Soak(target_rate=probe.maximum * args.fraction)
        soak_run(args, harness, db, soak)
        harness.stop_workers(workers)
        checks = integrity(db, harness.broker, harness.all_workers)
        print(report(args, probe, soak, checks), flush=True)
        failed = (
            soak.errors > 0
            or any(line.startswith("FAILED") for line in checks)
            or soak.backlog_slope() > 1.0
        )
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if db is not None:
            db.close()
        harness.close(keep_logs=failed)


if __name__ == "__main__":
    sys.exit(main())

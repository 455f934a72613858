#!/usr/bin/env python3
"""Benchmark the processing pipeline: events/s per Celery worker process, and keep-up with ingest.

One command (`make bench-process`, i.e. `.venv/bin/python scripts/bench_process.py`), one run:

  1. drops and recreates its own PostgreSQL database (default `bench_process`; `--keep-database`
     keeps it), migrates it and runs `bootstrap_demo --allow-production`; empties its own Redis
     broker database; starts gunicorn as scripts/bench_ingest.py does (bigmind/gunicorn_conf.py),
     with the per-signal rate limits raised so nothing is a 429;
  2. drain, single-event messages: with no worker running, stores a backlog of N events of the
     three demo signals (type event, metric and state, in turn; several CRM records) through
     POST /v1/events, so N `events.process_event` messages wait in the broker; then starts ONE
     worker process and times until all N are `completed`;
  3. drain, batch messages: the same N events through POST /v1/events/batch (100 per request,
     so N/100 `events.process_events` messages of 100 ids), and the same single worker;
  4. ingest reference: wrk on POST /v1/events (the same mix of signals) with no worker running;
  5. starts one worker process per core; they first drain the backlog of step 4 (the drain rate
     of that many processes), then wrk runs again for --duration seconds while they work: the
     backlog (events `pending` or `processing`) is sampled every second; after the load, the
     time to drain what is left;
  6. checks integrity: every event completed, exactly once (claimed once, one `completed`
     step in its status history), none failed or pending; insights, metric aggregates, record
     states and engagement sums equal what the events imply; the broker holds no message;
  7. prints markdown tables; stops gunicorn and the workers, also on Ctrl-C or an error. The
     exit status is 1 if an integrity check failed.

The worker is `celery -A bigmind worker -Q events.process,default` with the prefork pool
(`--pool prefork -c 1` for "one worker process", `-c <cores>` for the keep-up test; as in
docs/operations.md), or `--pool solo` with --pool. Drain rates are measured between the first
and the last completion (`processed_at`), so the worker's start-up does not count.

The database, gunicorn, the workers, wrk and the integrity checks come from the shared harness
(scripts/benchlib/), as in scripts/bench_ingest.py and scripts/bench_soak.py. Only stdlib,
psycopg and redis (both in requirements.txt) are used, and wrk (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from benchlib import cli, loadgen, stack
from benchlib.db import Db, integrity
from benchlib.events import event_dict, identity_for
from benchlib.machine import cpu_by_session, cpu_delta, machine_description, versions
from benchlib.stack import Worker, broker_messages, broker_wait_empty, log, workers_alive
from benchlib.stats import machine_lines, slope

BATCH_SIZE = 100  # events per POST /v1/events/batch, and ids per events.process_events message


# --- loading ---------------------------------------------------------------------------------
def preload(
    args: argparse.Namespace, port: int, prefix: str, count: int, *, batch: bool
) -> tuple[int, float]:
    """Store `count` events, one per request or 100 per batch request: (requests, seconds)."""
    now = int(time.time())
    size = BATCH_SIZE if batch else 1
    streams = 8  # client threads; each is a stream of events with identities of its own
    # Whole requests per stream; only the very last request may be a short batch.
    requests = -(-count // size)
    per_stream = [
        requests // streams + (1 if i < requests % streams else 0) for i in range(streams)
    ]
    first_request = [sum(per_stream[:i]) for i in range(streams)]

    def run(stream: int) -> None:
        for k in range(first_request[stream], first_request[stream] + per_stream[stream]):
            numbers = range(k * size + 1, min(count, (k + 1) * size) + 1)
            events = [
                event_dict(
                    n, identity_for(stream, n, args.identities), f"{prefix}-{stream}-{n}", now
                )
                for n in numbers
            ]
            body = json.dumps({"events": events} if batch else events[0]).encode()
            status, answer = stack.post(port, "/v1/events/batch" if batch else "/v1/events", body)
            if status != 202:
                raise RuntimeError(f"preload: {status} {answer[:300]!r}")

    started = time.monotonic()
    with ThreadPoolExecutor(streams) as pool:
        for future in [pool.submit(run, i) for i in range(streams)]:
            future.result()
    return requests, time.monotonic() - started


# --- the phases ------------------------------------------------------------------------------
@dataclass
class Drain:
    name: str
    task: str
    messages: int
    processes: int
    events: int = 0
    failed: int = 0
    seconds: float = 0.0  # first to last completion
    wall: float = 0.0  # worker start to last completion (start-up included)
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_events: int = 0  # events completed while `cpu` was measured
    messages_left: int = 0  # in the broker when the last event completed
    round: int = 1  # 0: all rounds together
    intervals: int = 0  # between completions: events - 1 (added up over rounds)

    @property
    def rate(self) -> float:
        """Completions per second between the first and the last one."""
        return self.intervals / self.seconds if self.seconds > 0 else 0.0

    @property
    def per_process(self) -> float:
        return self.rate / self.processes

    def cpu_ms(self, key: str) -> float:
        return self.cpu.get(key, 0.0) / self.cpu_events * 1000 if self.cpu_events else 0.0


def sessions(harness: stack.Stack, workers: list[Worker]) -> dict[int, str]:
    """The process sessions whose CPU is counted: gunicorn's and the workers'."""
    gunicorn = {harness.gunicorn.pid: "gunicorn"} if harness.gunicorn else {}
    return {**gunicorn, **{w.pid: "worker" for w in workers}}


def drain(
    args: argparse.Namespace,
    harness: stack.Stack,
    db: Db,
    workers: list[Worker],
    result: Drain,
    prefix: str,
    expected: int,
) -> Drain:
    """Let `workers` (just started) work off the backlog; the phase's events are `prefix`-*."""
    started = time.monotonic()
    deadline = started + args.timeout
    # CPU is measured from the first claim on, so the workers' start-up is not in it.
    while db.pending() >= expected:
        workers_alive(workers)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{result.name}: no event claimed in {args.timeout:g} s")
        time.sleep(0.05)
    done_at_start = expected - db.backlog()
    before = cpu_by_session(sessions(harness, workers))
    while (left := db.backlog()) > 0:
        workers_alive(workers)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{result.name}: {left} events still not processed")
        time.sleep(0.2)
    result.wall = time.monotonic() - started
    result.cpu = cpu_delta(before, cpu_by_session(sessions(harness, workers)))
    result.cpu_events = expected - done_at_start
    result.messages_left = broker_wait_empty(harness.broker, workers, args.timeout)
    counts = db.phase(prefix)
    result.events, result.failed = counts["completed"], counts["failed"]
    result.intervals = max(0, result.events - 1)
    if counts["first"] and counts["last"]:
        result.seconds = (counts["last"] - counts["first"]).total_seconds()
    log(
        f"  {result.name}: {result.events} completed, {result.failed} failed in "
        f"{result.seconds:.1f} s: {result.rate:.1f} events/s"
    )
    return result


def drain_kind(
    args: argparse.Namespace, harness: stack.Stack, db: Db, run_id: str, rnd: int, batch: bool
) -> Drain:
    """One drain test: a backlog of single-event or batch messages, one worker process."""
    kind = "batch" if batch else "single"
    prefix = f"{run_id}-{kind}{rnd}"
    log(f"round {rnd}: storing a backlog of {args.events} events ({kind} requests), no worker")
    messages, seconds = preload(args, harness.port, prefix, args.events, batch=batch)
    waiting, _ = broker_messages(harness.broker)
    # Single-event requests publish one message each, or, with coalesced wake-ups (the
    # default, events_app/pipeline/queue.py), one while none waits unstarted: at least one.
    if not (waiting == messages or (not batch and 1 <= waiting <= messages)):
        raise RuntimeError(f"{waiting} messages in the broker, expected {messages}")
    log(f"  stored in {seconds:.1f} s; {waiting} messages wait in the broker")
    result = Drain(
        name=(
            f"`events.process_events` (ids of one batch request: {BATCH_SIZE})"
            if batch
            else "`events.process_event` (one id)"
        ),
        task="events.process_events" if batch else "events.process_event",
        messages=messages,
        processes=1,
        round=rnd,
    )
    group = harness.start_workers(1, f"{kind}{rnd}")
    try:
        return drain(args, harness, db, group, result, prefix, args.events)
    finally:
        harness.stop_workers(group)


def drains_total(drains: list[Drain]) -> Drain:
    """The rounds of one kind as one: events and seconds added up, CPU per event overall."""
    first = drains[0]
    total = Drain(name=first.name, task=first.task, messages=0, processes=first.processes, round=0)
    for d in drains:
        total.messages += d.messages
        total.events += d.events
        total.failed += d.failed
        total.seconds += d.seconds
        total.cpu_events += d.cpu_events
        total.messages_left += d.messages_left
        for key, value in d.cpu.items():
            total.cpu[key] = total.cpu.get(key, 0.0) + value
        total.intervals += d.intervals
    return total


@dataclass
class KeepUp:
    reference: loadgen.LoadRun  # ingest with no worker running
    load: loadgen.LoadRun | None = None  # ingest while the workers work
    processes: int = 0
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, backlog, ...
    start: tuple[int, int, int] = (0, 0, 0)
    end: tuple[int, int, int] = (0, 0, 0)
    load_seconds: float = 0.0
    tail_seconds: float = 0.0  # after the load, until the backlog was 0
    messages_left: int = 0  # in the broker then
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        """Events completed during the load: stored in the window minus the backlog's growth."""
        return (self.end[2] - self.start[2]) - (self.end[0] - self.start[0])

    @property
    def completion_rate(self) -> float:
        return self.completed / self.load_seconds if self.load_seconds else 0.0

    def load_samples(self) -> list[tuple[float, int]]:
        return [(t, b) for t, b, _, _ in self.samples if t <= self.load_seconds]

    def last_half_slope(self) -> float:
        """Least-squares slope of the backlog (events/s) over the last half of the load."""
        return slope([(t, b) for t, b in self.load_samples() if t >= self.load_seconds / 2])

    def backlog_at(self, fraction: float) -> int:
        target = self.load_seconds * fraction
        points = self.load_samples()
        return min(points, key=lambda p: abs(p[0] - target))[1] if points else 0

    def bounded(self) -> bool:
        """The backlog did not grow over the last half: slope within 2% of the ingest rate."""
        ingest = self.load.ok_per_s if self.load else 0.0
        return self.last_half_slope() <= max(1.0, 0.02 * ingest)


def keep_up(
    args: argparse.Namespace,
    harness: stack.Stack,
    db: Db,
    workers: list[Worker],
    run_id: str,
    result: KeepUp,
) -> KeepUp:
    """wrk for --duration while `workers` (just started) work; the backlog every second."""
    stack.broker_wait_consumers(harness.broker, args.broker_db, workers, len(workers), 30)
    outcome: dict[str, Any] = {}

    def load() -> None:
        try:
            outcome["load"] = loadgen.wrk_mix_run(
                args, harness.workdir, harness.port, args.duration, f"{run_id}-keepup"
            )
        except Exception as exc:  # reported by the main thread
            outcome["exception"] = exc

    result.start = db.sample()
    before = cpu_by_session(sessions(harness, workers))
    t0 = time.monotonic()
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    next_sample = t0 + 1.0
    while thread.is_alive():
        time.sleep(max(0.0, next_sample - time.monotonic()))
        next_sample += 1.0
        if thread.is_alive():
            backlog, failed, total = db.sample()
            result.samples.append((time.monotonic() - t0, backlog, failed, total))
    thread.join()
    result.load_seconds = time.monotonic() - t0
    result.end = db.sample()
    result.cpu = cpu_delta(before, cpu_by_session(sessions(harness, workers)))
    if "exception" in outcome:
        raise outcome["exception"]
    result.load = outcome["load"]
    result.samples.append((result.load_seconds, *result.end))
    log(
        f"  ingest {result.load.ok_per_s:.0f}/s, completed {result.completion_rate:.0f}/s, "
        f"backlog at the end {result.end[0]}"
    )
    tail_start = time.monotonic()
    while (backlog := db.backlog()) > 0:
        if time.monotonic() - tail_start > args.timeout:
            raise RuntimeError(f"keep-up: {backlog} events left {args.timeout:g} s after the load")
        time.sleep(0.2)
    result.tail_seconds = time.monotonic() - tail_start
    result.messages_left = broker_wait_empty(harness.broker, workers, args.timeout)
    return result


# --- report ----------------------------------------------------------------------------------
def report(
    args: argparse.Namespace,
    machine: dict[str, str],
    found: dict[str, str],
    drains: list[Drain],
    keep: KeepUp,
    checks: list[str],
) -> str:
    out: list[str] = []
    cores = os.cpu_count() or 1
    out.append(
        f"## Processing benchmark ({args.rounds} x {args.events} events per drain test, "
        f"keep-up {args.duration:g} s, "
        f"pool {args.pool}, {stack.server_description(args)}, wrk -c {args.concurrency})"
    )
    out.append("")
    out.extend(machine_lines(machine, found))
    out.append("")
    out.append(
        f"Drain: a backlog of {args.events} events waiting in the broker, no ingest running; "
        f"{args.rounds} round(s) per kind, taking turns. events/s from the first to the last "
        "completion."
    )
    out.append("")
    out.append(
        "| messages | round | worker processes | events | seconds | events/s per process "
        "| worker CPU ms/event | PostgreSQL CPU ms/event | Redis CPU ms/event "
        "| machine busy % | other processes, cores |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    one = [d for d in drains if d.processes == 1]
    totals: dict[str, Drain] = {}
    for task in dict.fromkeys(d.task for d in one):
        totals[task] = drains_total([d for d in one if d.task == task])
    rows = sorted(one, key=lambda d: (d.task, d.round))
    rows += list(totals.values()) + [d for d in drains if d.processes != 1]
    for d in rows:
        wall = d.cpu.get("wall", 0) or 1
        ours = sum(d.cpu.get(k, 0) for k in ("worker", "postgres", "redis", "gunicorn"))
        busy = d.cpu.get("machine_busy", 0)
        label = "all" if d.round == 0 else (str(d.round) if d.processes == 1 else "-")
        bold = "**" if d.round == 0 else ""
        out.append(
            f"| {d.name} | {label} | {d.processes} | {d.events} | {d.seconds:.1f} "
            f"| {bold}{d.per_process:.1f}{bold} | {d.cpu_ms('worker'):.2f} "
            f"| {d.cpu_ms('postgres'):.2f} | {d.cpu_ms('redis'):.2f} "
            f"| {busy / wall / cores * 100:.0f} | {max(0.0, busy - ours) / wall:.2f} |"
        )
    left = [d for d in drains if d.messages_left] + ([keep] if keep.messages_left else [])
    if left:
        out.append("")
        out.append(
            "Messages still in the broker when the last event had completed (consumed before "
            "the next phase; they did no work): "
            + ", ".join(f"{getattr(x, 'name', 'keep-up')}: {x.messages_left}" for x in left)
            + "."
        )
    single = totals.get("events.process_event")
    batch = totals.get("events.process_events")
    if single and batch and single.rate:

        def server_ms(d: Drain) -> float:
            return sum(d.cpu_ms(k) for k in ("worker", "postgres", "redis"))

        per_round = []
        for rnd in range(1, args.rounds + 1):
            sr = next((d for d in one if d.task == single.task and d.round == rnd), None)
            br = next((d for d in one if d.task == batch.task and d.round == rnd), None)
            if sr and br and sr.rate:
                per_round.append(f"{br.rate / sr.rate:.2f}")
        out.append("")
        out.append(
            f"Batch messages ÷ single-event messages, one worker process: "
            f"**{batch.rate / single.rate:.2f}x events/s** (per round: {', '.join(per_round)}); "
            f"CPU per event (worker + PostgreSQL + Redis) {server_ms(batch):.2f} ms against "
            f"{server_ms(single):.2f} ms: {server_ms(single) / server_ms(batch):.2f}x less."
        )
    out.append("")
    ref, load = keep.reference, keep.load or loadgen.LoadRun(0, 0, 0.0, 0.0, 0.0, 0.0)
    ingest = load.ok_per_s
    wall = keep.cpu.get("wall", 0) or 1
    cpu_split = [keep.cpu.get(k, 0.0) for k in ("gunicorn", "worker", "postgres", "redis")]
    cpu_split.append(load.loadgen_cpu)
    busy = keep.cpu.get("machine_busy", 0.0)
    cpu_split += [max(0.0, busy - sum(cpu_split)), busy]
    out.append(
        f"Keep-up: POST /v1/events under wrk for {args.duration:g} s while {keep.processes} "
        f"worker processes ({args.pool}) process; backlog = events pending or processing, "
        "sampled every second."
    )
    out.append("")
    out.append("| measure | value |")
    out.append("|---|---:|")
    measures = [
        ("ingest 2xx/s, no worker running (reference)", f"{ref.ok_per_s:.0f}"),
        (f"ingest 2xx/s with {keep.processes} worker processes", f"{ingest:.0f}"),
        ("events completed/s during the load", f"{keep.completion_rate:.0f}"),
        ("completed ÷ ingested", f"{keep.completion_rate / ingest:.2f}" if ingest else "-"),
        ("backlog at the start", f"{keep.start[0]}"),
        ("backlog at half time", f"{keep.backlog_at(0.5)}"),
        ("backlog max", f"{max((b for _, b in keep.load_samples()), default=0)}"),
        ("backlog at the end of the load", f"{keep.end[0]}"),
        ("backlog slope over the last half, events/s", f"{keep.last_half_slope():+.1f}"),
        ("backlog bounded", "yes" if keep.bounded() else "NO"),
        ("seconds to drain after the load", f"{keep.tail_seconds:.1f}"),
        (
            "ingest errors (reference, load)",
            f"{ref.errors} / {ref.requests}, {load.errors} / {load.requests}",
        ),
        ("ingest p50 / p99 ms (reference)", f"{ref.p50_ms:.1f} / {ref.p99_ms:.1f}"),
        (
            "ingest p50 / p99 ms (with workers)",
            f"{load.p50_ms:.1f} / {load.p99_ms:.1f}",
        ),
        (
            "CPU cores used during the load: gunicorn / workers / PostgreSQL / Redis / wrk / "
            "other processes / whole machine",
            " / ".join(f"{v / wall:.2f}" for v in cpu_split),
        ),
        ("steal %", f"{keep.cpu.get('steal', 0) / wall / cores * 100:.0f}"),
    ]
    for name, value in measures:
        out.append(f"| {name} | {value} |")
    out.append("")
    step = max(1, round(len(keep.samples) / 12))
    timeline = ", ".join(
        f"{t:.0f}s: {b}" for i, (t, b, _, _) in enumerate(keep.samples) if i % step == 0
    )
    out.append(f"Backlog during the load (s: events): {timeline}; end: {keep.end[0]}.")
    out.append("")
    out.append("Integrity, all events of the run:")
    out.append("")
    out.extend(f"- {line}" for line in checks)
    for name, r in (("reference", ref), ("load", load)):
        if r.first_error:
            out.append(f"- First ingest error ({name}): {r.first_error}")
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = cli.parser_for(__doc__)
    cli.add_service_arguments(
        parser,
        database="bench_process",
        cache_db=8,
        broker_db=9,
        broker="Celery broker; this Redis database is emptied at the start",
    )
    parser.add_argument(
        "--events", "-n", type=int, default=2500, help="backlog per drain test and round"
    )
    parser.add_argument(
        "--rounds",
        "-r",
        type=int,
        default=2,
        help="drain tests of each kind (single-event, batch messages), taking turns",
    )
    parser.add_argument("--duration", "-d", type=float, default=60.0, help="keep-up test seconds")
    parser.add_argument(
        "--reference-duration",
        type=float,
        default=20.0,
        help="seconds of ingest with no worker running",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=cores,
        help="worker processes in the keep-up test (one per core)",
    )
    parser.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    cli.add_server_arguments(parser)
    parser.add_argument(
        "--identities", type=int, default=200, help="CRM records the events are spread over"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a drain may take")
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="do not drop and recreate the database (the integrity check covers all its events)",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--celery-app",
        default="bigmind",
        help="the workers' `celery -A` application (another one only for what-if experiments, "
        "importable from the project root or PYTHONPATH)",
    )
    args = parser.parse_args()
    cli.finish_server_arguments(parser, args)
    args.reset = not args.keep_database
    if args.events < BATCH_SIZE:
        parser.error(f"--events must be at least {BATCH_SIZE}")
    return args


def main() -> int:
    args = parse_args()
    stack.set_log_tag("bench-process")
    harness = stack.Stack(args, "process")
    machine = machine_description()
    db: Db | None = None
    failed = True
    try:
        harness.prepare_database()
        harness.broker.flushdb()
        found = versions(args)
        db = Db(args.database_url)
        harness.start_gunicorn()
        run_id = uuid.uuid4().hex[:8]
        if db.backlog():
            raise RuntimeError("the database has unprocessed events; run without --keep-database")

        drains: list[Drain] = []
        for rnd in range(1, args.rounds + 1):
            # The order alternates, so noise from the machine hits both kinds alike.
            for batch in (False, True) if rnd % 2 else (True, False):
                drains.append(drain_kind(args, harness, db, run_id, rnd, batch))

        log(f"ingest reference: wrk for {args.reference_duration:g} s, no worker running")
        reference = loadgen.wrk_mix_run(
            args, harness.workdir, harness.port, args.reference_duration, f"{run_id}-reference"
        )
        log(f"  {reference.ok_per_s:.0f} events/s accepted, errors {reference.errors}")
        harness.gunicorn_alive()
        backlog = db.backlog()
        processes = args.processes
        log(f"{processes} worker processes drain the reference's backlog of {backlog} events")
        group = harness.start_workers(processes, "keepup")
        result = Drain(
            name="`events.process_event` (one id), the reference's backlog",
            task="events.process_event",
            messages=backlog,
            processes=processes,
        )
        drains.append(drain(args, harness, db, group, result, f"{run_id}-reference", backlog))
        log(f"keep-up: wrk for {args.duration:g} s with {processes} worker processes")
        keep = KeepUp(reference=reference, processes=processes)
        keep_up(args, harness, db, group, run_id, keep)
        harness.stop_workers(group)
        time.sleep(0.5)
        checks = integrity(db, harness.broker, harness.all_workers)
        print(report(args, machine, found, drains, keep, checks), flush=True)
        failed = any(line.startswith("FAILED") for line in checks)
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if db is not None:
            db.close()
        harness.close(keep_logs=failed)
        try:
            stack.broker_queue_delete(harness.broker)
        except Exception as exc:
            log(f"could not empty the broker queue: {exc}")


if __name__ == "__main__":
    sys.exit(main())

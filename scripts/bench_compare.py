#!/usr/bin/env python3
"""Compare ingest and processing with a baseline git ref in the same run, and measure what each
event costs the web processes, the workers and PostgreSQL (the capacity model's figures).

One command (`make bench-compare`, i.e. `.venv/bin/python scripts/bench_compare.py`):

  1. checks out the baseline (`--baseline`, default c50db10: main before the partitioned events
     table, the code the throughput issue measured plus the issues after it) into a temporary
     `git worktree`; "head" is this checkout, uncommitted changes included (or, with --head,
     another ref, checked out the same way). Both run with this
     checkout's Python (.venv) and this checkout's harness (scripts/benchlib/), each side's
     own code: gunicorn, Celery and `manage.py` start in its own tree;
  2. gives each side two PostgreSQL databases of its own, dropped, recreated and migrated by
     that side's code (so the baseline gets its plain events table, head whatever its
     migrations make), with `bootstrap_demo`: `<prefix>_base_ingest`, `<prefix>_base_process`,
     `<prefix>_head_ingest`, `<prefix>_head_process`. Ingest fills its database with unprocessed
     events; processing drains backlogs of its own;
  3. starts one gunicorn per database (bigmind/gunicorn_conf.py, as `make bench`), all four at
     once, idle but for the one under load;
  4. runs rounds, the sides taking turns (baseline, head; then head, baseline; ...), so that
     the machine's noise hits both. Each side's turn:
       - ingest: wrk on `POST /v1/events` (`ingest`) and on `POST /v1/events/batch` (100
         events a request) for --duration s each, as scripts/bench_ingest.py measures them;
       - processing: a backlog of --events events of the three demo signals stored with no
         worker running, then one Celery worker process drains it, single-event messages and
         batch messages, as scripts/bench_process.py measures a drain;
  5. meanwhile reads the CPU seconds of gunicorn, of the Celery worker, of PostgreSQL (the
     backends of the four databases and the server's own processes) and Redis from /proc, and
     the WAL the server wrote (`pg_current_wal_lsn()`);
  6. prints the comparison (head ÷ baseline per figure, with the >= --target verdict), the
     capacity figures per side (events/s per web core and per worker core, PostgreSQL CPU ms
     and WAL bytes per event), and the integrity checks (every accepted ingest request stored;
     every processed event completed exactly once, rollups exact);
  7. stops everything and removes the worktree, also on Ctrl-C or an error. Exit status 1 if a
     figure misses the target or an integrity check fails.

The Redis cache database is shared by the four stacks, each under a key prefix of its own
(CACHE_KEY_PREFIX); the broker database is emptied at the start and the ingest runs' wake-up
messages are deleted before each drain (no worker runs during ingest).

Needs PostgreSQL (local, for the CPU figures; about 80 connections: nothing else should use much
of max_connections), Redis, wrk and git. Only stdlib, psycopg and
redis are used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench_ingest import RunResult, one_run, post_once, stored_problems
from bench_process import Drain, drain_kind, drains_total
from benchlib import cli, stack
from benchlib.db import Db, integrity
from benchlib.machine import PostgresMeter, machine_description, measure_postgres, versions
from benchlib.stack import ROOT, log
from benchlib.stats import machine_lines

DEFAULT_BASELINE = "c50db10"  # main before issue #16
TARGET = 0.95  # head ÷ baseline, each figure
SIDES = ("base", "head")
INGEST = ("ingest", "ingest-batch")  # scripts/benchlib/events.py ENDPOINTS
DRAINS = ("single", "batch")  # bench_process.drain_kind's kinds
LABELS = {
    "ingest": "ingest, `POST /v1/events` (events/s)",
    "ingest-batch": "batch ingest, `POST /v1/events/batch` of 100 (events/s)",
    "single": "processing, single-event messages, 1 worker process (events/s)",
    "batch": "processing, batch messages of 100 ids, 1 worker process (events/s)",
}


@dataclass
class Side:
    """One side of the comparison: its code, its two stacks and what they measured."""

    name: str
    commit: str
    root: Path
    ingest: stack.Stack | None = None
    process: stack.Stack | None = None
    runs: list[RunResult] = field(default_factory=list)  # measured rounds
    warm: list[RunResult] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    table: str = ""  # what the events table is: plain or partitioned
    stored: str = ""  # bytes per stored event in the ingest database
    processed: str = ""  # ... in the processing database, compacted

    def stacks(self) -> list[stack.Stack]:
        return [s for s in (self.ingest, self.process) if s is not None]


# --- the sides -------------------------------------------------------------------------------
def git(*command: str) -> str:
    out = subprocess.run(
        ["git", *command], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.strip()


def head_description() -> str:
    commit = git("rev-parse", "--short=10", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}{' + uncommitted changes' if dirty else ''}"


def checkout(ref: str, path: Path) -> str:
    """A detached worktree of `ref` at `path`; its commit."""
    try:
        commit = git("rev-parse", "--verify", "--short=10", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"{ref!r} is not a commit of this repository") from exc
    log(f"checking out {ref} ({commit}) into {path}")
    git("worktree", "add", "--detach", str(path), commit)
    return commit


def worktree_remove(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except subprocess.CalledProcessError as exc:
        log(f"could not remove the worktree {path}: {exc.stderr.strip()}")


def stack_args(args: argparse.Namespace, side: Side, kind: str) -> argparse.Namespace:
    """The options of one stack: its database, its code, and the measure's own settings."""
    own = argparse.Namespace(**vars(args))
    own.database_url = f"{args.postgres_url.rstrip('/')}/{args.prefix}_{side.name}_{kind}"
    own.root = side.root
    own.reset = True  # each run starts from freshly migrated databases
    own.identities = args.identities if kind == "ingest" else args.process_identities
    if kind == "process":
        # Its gunicorn only stores the drains' backlogs (not measured). One process: every
        # gunicorn thread keeps a PostgreSQL connection, and four servers of the default
        # 3 x 8 threads (and the writers) would pass the server's max_connections of 100.
        own.workers = 1
    return own


def start_stack(args: argparse.Namespace, side: Side, kind: str) -> stack.Stack:
    own = stack_args(args, side, kind)
    harness = stack.Stack(own, f"compare-{side.name}-{kind}", var_dir=f"bench-compare-{kind}")
    # All stacks share one cache database: their keys (the wake-up flag, rate-limit
    # counters) must not meet.
    harness.env["CACHE_KEY_PREFIX"] = f"bench-compare-{side.name}-{kind}"
    log(f"{side.name} ({side.commit}): preparing {own.database_url}")
    harness.prepare_database()
    harness.start_gunicorn()
    return harness


def storage(url: str, *, compact: bool = False) -> str:
    """Bytes per stored event on disk: the events table (every partition, its indexes and
    TOAST), its status history, and the whole database, divided by the events it holds.
    `compact`: after VACUUM FULL, so that the dead row versions of processing's two updates
    (which autovacuum makes reusable in production; it is off on the benchmark machine) do
    not count."""
    with Db(url) as db:
        try:  # VACUUM FULL and CHECKPOINT need the owner or a superuser
            if compact:
                db.conn.execute("VACUUM FULL events_app_event")
                db.conn.execute("VACUUM FULL events_app_eventtransition")
            db.conn.execute("CHECKPOINT")  # sizes of what was written, not of what waits
        except Exception as exc:
            log(f"sizes without VACUUM FULL or CHECKPOINT: {exc}")
        row = db.one(
            "SELECT (SELECT count(*) FROM events_app_event), "
            "(SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            " WHERE c.oid = 'events_app_event'::regclass OR c.oid IN "
            " (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events_app_event'::regclass)),"
            " coalesce(pg_total_relation_size(to_regclass('events_app_eventtransition')), 0),"
            " pg_database_size(current_database())"
        )
    events, table, history, database = (int(v) for v in row)
    if not events:
        return "no events"
    return (
        f"{events} events: the events table with its indexes {table / events:.0f} bytes per "
        f"event, the status history {history / events:.0f}, the whole database "
        f"{database / events:.0f}"
    )


def table_kind(url: str) -> str:
    with Db(url) as db:
        row = db.one(
            "SELECT c.relkind, (SELECT count(*) FROM pg_inherits i WHERE i.inhparent = c.oid) "
            "FROM pg_class c WHERE c.oid = to_regclass('events_app_event')"
        )
    if row is None:
        return "no events_app_event table"
    if row[0] == "p":
        return f"partitioned (relkind p, {row[1]} partitions)"
    return f"plain table (relkind {row[0]})"


# --- one turn of a side ----------------------------------------------------------------------
def turn(args: argparse.Namespace, side: Side, run_id: str, rnd: int, broker: Any, db: Db) -> None:
    """Ingest, then processing, on one side; the order of the two kinds alternates by round."""
    assert side.ingest is not None and side.process is not None
    ingest = side.ingest
    order = INGEST if rnd % 2 else INGEST[::-1]
    for name in order:
        log(f"round {rnd}, {side.name}: {name} for {args.duration:g} s")
        result = one_run(ingest.args, ingest, name, args.duration, f"{run_id}-r{rnd}-{name}")
        result.round = rnd
        log(f"  {result.eps:.0f} events/s, p99 {result.p99_ms:.1f} ms, errors {result.errors}")
        side.runs.append(result)
    # The ingest runs' wake-ups (no worker consumed them) must not wait in front of the
    # drain's messages; a request in flight when wrk stopped publishes a moment later.
    time.sleep(0.5)
    stack.broker_queue_delete(broker)
    for kind in DRAINS if rnd % 2 else DRAINS[::-1]:
        side.drains.append(
            drain_kind(side.process.args, side.process, db, run_id, rnd, kind == "batch")
        )


# --- figures ---------------------------------------------------------------------------------
def ingest_figure(side: Side, name: str) -> tuple[float, list[float]]:
    """(median events/s over the rounds, events/s per round)."""
    per_round = [r.eps for r in sorted(side.runs, key=lambda r: r.round) if r.endpoint == name]
    return (statistics.median(per_round) if per_round else 0.0), per_round


def drain_figure(side: Side, kind: str) -> tuple[float, list[float]]:
    """(events/s over all rounds, as bench_process totals them; events/s per round)."""
    task = "events.process_events" if kind == "batch" else "events.process_event"
    drains = sorted((d for d in side.drains if d.task == task), key=lambda d: d.round)
    if not drains:
        return 0.0, []
    return drains_total(drains).rate, [d.rate for d in drains]


def figure(side: Side, key: str) -> tuple[float, list[float]]:
    return ingest_figure(side, key) if key in INGEST else drain_figure(side, key)


@dataclass
class Cost:
    """What the events of one workload cost, all rounds together."""

    events: float = 0.0
    seconds: float = 0.0  # wall seconds measured
    cpu: dict[str, float] = field(default_factory=dict)

    def add(self, events: float, cpu: dict[str, float]) -> None:
        self.events += events
        self.seconds += cpu.get("wall", 0.0)
        for key, value in cpu.items():
            self.cpu[key] = self.cpu.get(key, 0.0) + value

    def ms(self, key: str) -> float:
        return self.cpu.get(key, 0.0) / self.events * 1000 if self.events else 0.0

    def per_core(self, key: str) -> float:
        """Events per CPU second of `key`: events/s one fully used core would handle."""
        used = self.cpu.get(key, 0.0)
        return self.events / used if used > 0 else 0.0

    def wal(self) -> float:
        return self.cpu.get("wal", 0.0) / self.events if self.events else 0.0

    def cores(self, key: str) -> float:
        return self.cpu.get(key, 0.0) / self.seconds if self.seconds else 0.0


def costs(side: Side) -> dict[str, Cost]:
    found = {key: Cost() for key in (*INGEST, *DRAINS)}
    for r in side.runs:
        found[r.endpoint].add(r.requests * r.per_request, r.cpu)
    for d in side.drains:
        found["batch" if d.task == "events.process_events" else "single"].add(d.cpu_events, d.cpu)
    return found


# --- report ----------------------------------------------------------------------------------
def efficiency(side: Side, key: str) -> float:
    """Events per CPU second of the service (gunicorn, worker, PostgreSQL, Redis): what the
    code costs, whatever else ran on the machine."""
    cost = costs(side)[key]
    used = sum(cost.cpu.get(k, 0.0) for k in ("gunicorn", "worker", "pg_bench", "redis"))
    return cost.events / used if used > 0 else 0.0


def comparison(args: argparse.Namespace, base: Side, head: Side) -> tuple[list[str], bool]:
    """The comparison table and the verdict lines; whether every figure meets the target."""
    out = [
        "| figure | baseline | head | head ÷ baseline | per round | verdict "
        "| events per CPU second, head ÷ baseline |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    verdicts: list[str] = []
    all_met = True
    for key in (*INGEST, *DRAINS):
        b, b_rounds = figure(base, key)
        h, h_rounds = figure(head, key)
        ratio = h / b if b else 0.0
        met = ratio >= args.target
        all_met &= met
        paired = ", ".join(f"{x / y:.2f}" for x, y in zip(h_rounds, b_rounds, strict=False) if y)
        b_eff, h_eff = efficiency(base, key), efficiency(head, key)
        eff = h_eff / b_eff if b_eff else 0.0
        out.append(
            f"| {LABELS[key]} | {b:.0f} ({_span(b_rounds)}) | {h:.0f} ({_span(h_rounds)}) "
            f"| **{ratio:.2f}** | {paired} | {'meets' if met else '**does NOT meet**'} "
            f"| {eff:.2f} |"
        )
        verdicts.append(
            f"{key}: head ÷ baseline {ratio:.2f}: {'meets' if met else 'does NOT meet'} the "
            f"target of >= {args.target:.2f} (events per CPU second: {eff:.2f})."
        )
    return [*out, "", *verdicts], all_met


def _span(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}" if values else "-"


def capacity(side: Side) -> list[str]:
    """What an event costs, per workload: the capacity model's figures."""
    out = [
        "| workload | events | events/s | web (gunicorn) CPU ms/event | events/s per web core "
        "| worker CPU ms/event | events/s per worker core | PostgreSQL CPU ms/event "
        "| WAL bytes/event "
        "| Redis CPU ms/event | cores used: web / worker / PostgreSQL / machine |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, cost in costs(side).items():
        rate, _ = figure(side, key)
        web_core = "-" if key in DRAINS else f"{cost.per_core('gunicorn'):.0f}"
        worker_core = f"{cost.per_core('worker'):.0f}" if key in DRAINS else "-"
        out.append(
            f"| {LABELS[key].rsplit(' (', 1)[0]} | {cost.events:.0f} | {rate:.0f} "
            f"| {cost.ms('gunicorn'):.3f} | {web_core} "
            f"| {cost.ms('worker'):.3f} | {worker_core} "
            f"| {cost.ms('pg_bench'):.3f} | {cost.wal():.0f} "
            f"| {cost.ms('redis'):.3f} | {cost.cores('gunicorn'):.2f} / {cost.cores('worker'):.2f}"
            f" / {cost.cores('pg_bench'):.2f} / {cost.cores('machine_busy'):.2f} |"
        )
    return out


def report(
    args: argparse.Namespace,
    base: Side,
    head: Side,
    machine: dict[str, str],
    found: dict[str, str],
    checks: list[str],
) -> tuple[str, bool]:
    out = [
        f"## Same-run comparison: head {head.commit} against baseline {base.commit} "
        f"({args.rounds} rounds, sides taking turns; ingest {args.duration:g} s per endpoint, "
        f"drains of {args.events} events; {stack.server_description(args)}, "
        f"wrk -c {args.concurrency})",
        "",
        *machine_lines(machine, found),
        "",
        f"Events table: baseline {base.table}; head {head.table}.",
        "",
    ]
    table, met = comparison(args, base, head)
    out += table
    out += [
        "",
        "Ingest figures are the medians of the rounds; processing figures are events/s over "
        "all rounds' drains (first to last completion). \"per round\" pairs each round's head "
        "with the same round's baseline. The last column divides the events by the CPU seconds "
        "of gunicorn, the worker, PostgreSQL and Redis, all rounds together: on a machine "
        "where other jobs take CPU, rates move with them, CPU per event much less.",
        "",
    ]
    for side in (base, head):
        out += [f"### What an event costs: {side.name} ({side.commit})", "", *capacity(side), ""]
    out += [
        "Per web core and per worker core: the workload's events divided by the CPU seconds "
        "of gunicorn (master and workers) or of the Celery worker (main and pool process). "
        "PostgreSQL: the backends of the benchmark's databases and the server's own processes "
        "(checkpointer, writers, the postmaster), from /proc. WAL: the cluster's "
        "`pg_current_wal_lsn()` difference (on a shared server, other databases' writes "
        "too). The cores column shows what was busy meanwhile (the machine: all its processes).",
        "",
        *(
            f"On disk, {side.name}: ingest's database (events stored, not processed): "
            f"{side.stored}; processing's (after VACUUM FULL): {side.processed}."
            for side in (base, head)
        ),
        "",
        "Integrity:",
        "",
        *(f"- {line}" for line in checks),
    ]
    return "\n".join(out), met


# --- integrity -------------------------------------------------------------------------------
def ingest_integrity(side: Side, run_id: str) -> str:
    assert side.ingest is not None
    with Db(side.ingest.args.database_url) as db:
        by_run = db.events_by_run(run_id)
    runs = side.warm + side.runs
    problems, _ = stored_problems(runs, by_run, side.ingest.args.concurrency)
    accepted = sum(r.ok * r.per_request for r in runs)
    errors = sum(r.errors for r in runs)
    log_errors = side.ingest.gunicorn_log_errors()
    ok = not problems and not errors and not log_errors
    text = (
        f"{side.name} ingest: {accepted} events accepted, {sum(by_run.values())} stored, "
        f"{errors} errors; "
        + ("; ".join(problems[:3]) if problems else "every run stored its accepted requests")
        + (f"; gunicorn log: {log_errors[0][:200]}" if log_errors else "")
    )
    return f"{'OK' if ok else 'FAILED'}: {text}"


# --- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = cli.parser_for(__doc__)
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        help="git ref of the baseline (main before issue #16 by default)",
    )
    parser.add_argument(
        "--head",
        default="",
        help="git ref of the code compared with the baseline (default: this checkout as it is)",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgres://postgres@127.0.0.1:5432",
        help="the PostgreSQL server, without a database",
    )
    parser.add_argument(
        "--prefix",
        default="bench_compare",
        help="database names: <prefix>_{base,head}_{ingest,process}; dropped and recreated",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/4", help="the cache, shared (key prefixes)"
    )
    parser.add_argument(
        "--broker-url",
        default="redis://127.0.0.1:6379/5",
        help="Celery broker, shared; emptied at the start",
    )
    cli.add_server_arguments(parser)
    parser.add_argument("--rounds", "-r", type=int, default=3, help="turns of each side")
    parser.add_argument(
        "--duration", "-d", type=float, default=8.0, help="ingest seconds per endpoint and turn"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="ingest warm-up seconds per endpoint and side"
    )
    parser.add_argument(
        "--events", "-n", type=int, default=2500, help="backlog per drain, kind and turn"
    )
    parser.add_argument(
        "--identities", type=int, default=10_000, help="identities of the ingest requests"
    )
    parser.add_argument(
        "--process-identities", type=int, default=200, help="CRM records of the drained events"
    )
    parser.add_argument("--target", type=float, default=TARGET, help="head ÷ baseline, at least")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a drain may take")
    parser.add_argument(
        "--keep-worktree", action="store_true", help="leave the baseline's worktree in place"
    )
    args = parser.parse_args()
    cli.finish_server_arguments(parser, args)
    args.pool = "prefork"
    args.celery_app = "bigmind"
    args.port = 0
    if "bench" not in args.prefix:
        parser.error("--prefix must contain 'bench': its databases are dropped and recreated")
    if args.events < 100:
        parser.error("--events must be at least 100 (one batch request)")
    if urlsplit(args.postgres_url).path.strip("/"):
        parser.error("--postgres-url names the server only; the databases are <prefix>_...")
    return args


def main() -> int:
    args = parse_args()
    stack.set_log_tag("bench-compare", clock=True)
    machine = machine_description()
    parent = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    base: Side | None = None
    head: Side | None = None
    meter: PostgresMeter | None = None
    db: dict[str, Db] = {}
    failed = True
    try:
        base = Side("base", checkout(args.baseline, parent / "baseline"), parent / "baseline")
        if args.head:
            head = Side("head", checkout(args.head, parent / "head"), parent / "head")
        else:
            head = Side("head", head_description(), ROOT)
        for side in (base, head):
            side.ingest = start_stack(args, side, "ingest")
            side.process = start_stack(args, side, "process")
            side.table = table_kind(side.ingest.args.database_url)
            db[side.name] = Db(side.process.args.database_url)
        broker = head.ingest.broker if head.ingest else None
        assert broker is not None
        broker.flushdb()
        found = versions(head.ingest.args if head.ingest else args)
        databases = {
            s.args.database_url.rsplit("/", 1)[1] for side in (base, head) for s in side.stacks()
        }
        meter = PostgresMeter(f"{args.postgres_url.rstrip('/')}/postgres", databases)
        measure_postgres(meter)

        run_id = uuid.uuid4().hex[:10]
        for side in (base, head):
            assert side.ingest is not None
            for name in INGEST:
                status, body = post_once(side.ingest.port, name, f"{run_id}-check-{name}")
                if status != 202:
                    raise RuntimeError(f"{side.name} {name}: answered {status}: {body[:300]!r}")
            if args.warmup > 0:
                log(f"{side.name}: warming up {args.warmup:g} s per ingest endpoint")
                side.warm = [
                    one_run(side.ingest.args, side.ingest, n, args.warmup, f"{run_id}-warm-{n}")
                    for n in INGEST
                ]

        for rnd in range(1, args.rounds + 1):
            for side in (base, head) if rnd % 2 else (head, base):
                turn(args, side, run_id, rnd, broker, db[side.name])

        time.sleep(0.5)
        for side in (base, head):
            assert side.ingest is not None
            side.stored = storage(side.ingest.args.database_url)
            assert side.process is not None
            side.processed = storage(side.process.args.database_url, compact=True)
        checks = [ingest_integrity(side, run_id) for side in (base, head)]
        for side in (base, head):
            assert side.process is not None
            checks += [
                f"{line.split(':', 1)[0]}: {side.name} processing:{line.split(':', 1)[1]}"
                for line in integrity(db[side.name], broker, side.process.all_workers)
            ]
        text, met = report(args, base, head, machine, found, checks)
        print(text, flush=True)
        failed = any(line.startswith("FAILED") for line in checks)
        return 1 if failed or not met else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        measure_postgres(None)
        if meter is not None:
            meter.close()
        for conn in db.values():
            conn.close()
        started = [s for s in (head, base) if s is not None]
        for harness in [h for s in started for h in s.stacks()]:
            harness.close(keep_logs=failed)
        for tree in [s.root for s in started if s.root != ROOT]:
            if not args.keep_worktree:
                worktree_remove(tree)
        if not args.keep_worktree:
            shutil.rmtree(parent, ignore_errors=True)
        os.chdir(ROOT)


if __name__ == "__main__":
    sys.exit(main())

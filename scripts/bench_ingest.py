#!/usr/bin/env python3
"""Benchmark POST /v1/events and /v1/events/batch against a bare Django view, under gunicorn.

One command (`make bench`, i.e. `.venv/bin/python scripts/bench_ingest.py`):

  1. creates the benchmark database if it is missing, migrates it and runs
     `bootstrap_demo --allow-production` (demo organization, signals and API key);
  2. starts gunicorn as docs/deployment.md runs it (`-c bigmind/gunicorn_conf.py`, its
     default worker class, processes and threads unless --workers/--server-threads) on a free
     port of 127.0.0.1, with the baseline views enabled (BIGMIND_BENCHMARK_ENDPOINTS=true) and
     the per-signal rate limits raised to 100,000,000/min, so that the benchmark measures the
     ingest work, not 429 answers;
  3. sends one request to each endpoint and stops if any does not answer 202;
  4. warms every endpoint up, then loads them in turn, several rounds each, in the same run
     (the order rotates every round so no endpoint always follows the same neighbour);
  5. prints a markdown table (requests/s and events/s, p50, p99, errors, ratios to the two
     baselines, batch events/s to single-event events/s), the per-round numbers, where the CPU
     went, and checks that every accepted event was stored (and that the broker got its
     wake-ups: one message per batch request, coalesced ones for single events);
  6. stops gunicorn, also on Ctrl-C or an error.

Endpoints:
  bare           POST /bench/bare (bigmind/bench.py): Django + json.loads + 202, nothing else
  bare-insert    POST /bench/bare-insert: the same plus one autocommit INSERT of the body
  ingest         POST /v1/events, signal `visited-documentation-page` (type event, no schema)
  ingest-schema  POST /v1/events, signal `api-calls` (type metric, JSON Schema version 1)
  ingest-batch   POST /v1/events/batch, 100 events of `ingest`'s kind per request (one
                 transaction, one broker message per request)

Governance endpoints (not in the default set; `make bench-governance` runs them with `ingest`;
their signals come from scripts/benchlib/governance_signals.yaml):
  ingest-plain     POST /v1/events, signal `bench-plain`: a schema (required string `email`,
                   number `value`), enforcement reject, no redaction
  ingest-governed  the same events to `bench-governed`: same schema, enforcement flag, `/email`
                   hashed
  ingest-flagged   events whose `value` is a string, to `bench-governed`: each fails the
                   schema, is accepted and stored flagged with its violation

Every event is unique (a per-run, per-thread, per-event `reference`), no Idempotency-Key is
sent, so nothing is an idempotent replay; identities cycle through a pool (--identities) so
the CRM upsert mostly updates existing records, as in production. A batch holds the events a
single-event client would have sent one after another. Any non-2xx answer (for a batch: any
answer but 202, since 207 means some events were rejected) and any socket error counts as an
error.

The load generator is wrk with a generated Lua script when wrk is installed (apt-get install
wrk), otherwise a Python one (processes x threads, http.client). Its own CPU use is reported,
and its throughput against the bare view is the ceiling of what this machine can measure.

The endpoints, the load generators, gunicorn and the database come from the shared harness
(scripts/benchlib/); this script holds what it measures and reports. Only stdlib, psycopg and
redis (both in requirements.txt) are used.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field

from benchlib import cli, loadgen, stack
from benchlib.db import Db
from benchlib.events import ENDPOINTS, ENDPOINTS_BY_NAME, body_for, endpoint_next_event_lua
from benchlib.machine import cpu_by_parent, cpu_delta, machine_description, self_cpu, versions
from benchlib.stack import BROKER_QUEUE, log
from benchlib.stats import machine_lines

INGEST_BARE_TARGET = 0.5  # ingest requests/s at least half the bare view's
INGEST_BARE_INSERT_TARGET = 1.0  # ... and at least the bare+INSERT view's
INGEST_P99_TARGET_MS = 50.0  # ingest's p99 at --concurrency 16
GOVERNED_TARGET = 0.9  # flag enforcement and one redaction rule: at least 0.9x plain ingest
BATCH_INGEST_TARGET = 5.0  # ingest-batch events/s at least 5 times ingest's
BASELINES = ("bare", "bare-insert")  # endpoints that store no event


@dataclass(kw_only=True)
class RunResult(loadgen.LoadRun):
    endpoint: str
    round: int = 0
    cpu: dict[str, float] = field(default_factory=dict)
    ref: str = ""  # the run's reference prefix: its events' references are {ref}-{thread}-{n}

    @property
    def rps(self) -> float:
        return self.requests / self.duration if self.duration else 0.0

    @property
    def ok(self) -> int:
        return self.requests - self.errors

    @property
    def per_request(self) -> int:
        return ENDPOINTS_BY_NAME[self.endpoint].events_per_request

    @property
    def eps(self) -> float:
        return self.rps * self.per_request


def post_once(port: int, name: str, reference: str) -> tuple[int, bytes]:
    endpoint = ENDPOINTS_BY_NAME[name]
    body = body_for(endpoint, reference, offset=0, first=1, identities=1)
    return stack.post(port, endpoint.path, body, auth=endpoint.auth, timeout=10)


def one_run(
    args: argparse.Namespace, harness: stack.Stack, name: str, seconds: float, rid: str
) -> RunResult:
    """Load one endpoint for `seconds`; its events' references start with `rid`."""
    endpoint = ENDPOINTS_BY_NAME[name]
    pid = harness.gunicorn.pid if harness.gunicorn else None
    before_cpu = cpu_by_parent(pid)
    if args.loadgen == "wrk":
        script = harness.workdir / f"{endpoint.name}-{rid}.lua"
        script.write_text(
            loadgen.wrk_lua(
                path=endpoint.path,
                run_id=rid,
                identities=args.identities,
                auth=endpoint.auth,
                batch=endpoint.batch_size,
                next_event=endpoint_next_event_lua(endpoint),
            )
        )
        load = loadgen.wrk_run(args, harness.port, endpoint.path, seconds, script)
    else:
        before_self = self_cpu()
        load = loadgen.python_run(args, harness.port, endpoint, seconds, rid)
        load.loadgen_cpu += self_cpu() - before_self
    result = RunResult(**vars(load), endpoint=name, ref=rid)
    result.first_error = result.first_error or result.socket_errors
    result.cpu = cpu_delta(before_cpu, cpu_by_parent(pid))
    harness.gunicorn_alive()
    return result


def stored_problems(
    runs: list[RunResult], by_run: dict[str, int], concurrency: int
) -> tuple[list[str], int]:
    """Whether each run stored the events of its accepted requests: (problems, requests that
    stored events). `by_run` is Db.events_by_run's count of the stored events per run."""
    # wrk stops counting at the deadline, but the requests in flight then (at most one per
    # connection and run) are still served and stored. Per run: the stored events are
    # whole requests (a batch is all or nothing), at least the accepted ones and at most
    # one more request per connection; each of those requests published one message.
    problems = []
    stored_requests = 0
    for r in runs:
        got, size = by_run.get(r.ref, 0), r.per_request
        low, high = r.ok * size, (r.ok + concurrency) * size
        if got % size or not low <= got <= high:
            problems.append(f"{r.ref}: {got} events stored, expected {low}-{high}")
        stored_requests += got // size
    return problems, stored_requests


def integrity(
    args: argparse.Namespace,
    harness: stack.Stack,
    ingest_runs: list[RunResult],
    run_id: str,
    events_before: int,
    queue_before: int,
) -> list[str]:
    """Every accepted ingest request stored its events (1, or all of a batch's) and published
    one message (a batch's events go in one message)."""
    with Db(args.database_url) as db:
        stored = db.events() - events_before
        by_run = db.events_by_run(run_id)
    accepted = sum(r.ok for r in ingest_runs)
    accepted_events = sum(r.ok * r.per_request for r in ingest_runs)
    published = stack.broker_depth(harness.broker) - queue_before
    checks = [
        f"Integrity: {accepted} ingest requests answered as accepted, holding "
        f"{accepted_events} events; {stored} events stored; {published} messages published "
        f"to {BROKER_QUEUE} (coalesced wake-ups: with no worker to start them, about one "
        "per BIGMIND_WAKEUP_TTL_SECONDS, plus one per batch request; stored may exceed "
        "accepted by the requests in flight when a run stops)."
    ]
    problems, stored_requests = stored_problems(ingest_runs, by_run, args.concurrency)
    if sum(by_run.values()) != stored:
        problems.append(f"{stored - sum(by_run.values())} stored events belong to no run")
    batch_requests = sum(
        by_run.get(r.ref, 0) // r.per_request for r in ingest_runs if r.per_request > 1
    )
    if stored_requests and not batch_requests <= published <= stored_requests:
        problems.append(
            f"{published} messages for the {stored_requests} requests that stored events "
            f"({batch_requests} of them batches, one message each)"
        )
    logfile = harness.gunicorn_log
    if problems:
        checks.append(
            "WARNING: stored events, published messages and accepted requests disagree "
            f"beyond the requests in flight when runs end: {'; '.join(problems[:5])}. "
            f"See the gunicorn log {logfile} (a failed publish is logged, not answered "
            "as an error)."
        )
    log_errors = harness.gunicorn_log_errors()
    if log_errors:
        checks.append(
            f"gunicorn log has {len(log_errors)} error lines, first: "
            f"{log_errors[0][:200]} (log: {logfile})"
        )
    return checks


# --- report ----------------------------------------------------------------------------------
def summarize(results: list[RunResult], names: list[str]) -> dict[str, dict[str, float]]:
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        runs = [r for r in results if r.endpoint == name]
        if not runs:
            continue
        summary[name] = {
            "per_request": runs[0].per_request,
            "rps": statistics.median(r.rps for r in runs),
            "rps_min": min(r.rps for r in runs),
            "rps_max": max(r.rps for r in runs),
            "eps": statistics.median(r.eps for r in runs),
            "eps_min": min(r.eps for r in runs),
            "eps_max": max(r.eps for r in runs),
            "p50": statistics.median(r.p50_ms for r in runs),
            "p99": statistics.median(r.p99_ms for r in runs),
            "errors": sum(r.errors for r in runs),
            "requests": sum(r.requests for r in runs),
        }
    return summary


def print_report(
    args: argparse.Namespace,
    results: list[RunResult],
    names: list[str],
    machine: dict[str, str],
    found: dict[str, str],
    checks: list[str],
) -> dict[str, float]:
    """Print the report; return the ratios of the targets ("ingest/bare", "batch/ingest")."""
    summary = summarize(results, names)
    bare = summary.get("bare", {}).get("eps")
    bare_insert = summary.get("bare-insert", {}).get("eps")
    single = summary.get("ingest", {}).get("eps")
    out: list[str] = []
    out.append(
        f"## Ingest benchmark ({args.rounds} rounds x {args.duration:g} s per endpoint, "
        f"concurrency {args.concurrency}, {stack.server_description(args)}, "
        f"load generator: {args.loadgen})"
    )
    out.append("")
    out.extend(machine_lines(machine, found))
    out.append("")
    out.append(
        "| endpoint | events/request | requests/s (median, min-max) "
        "| events/s (median, min-max) | p50 ms | p99 ms | errors (requests) "
        "| events/s ÷ bare | events/s ÷ bare-insert | events/s ÷ ingest |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        s = summary.get(name)
        if s is None:
            continue
        to_bare = f"{s['eps'] / bare:.2f}" if bare and name != "bare" else "-"
        to_insert = (
            f"{s['eps'] / bare_insert:.2f}" if bare_insert and name not in BASELINES else "-"
        )
        to_single = (
            f"{s['eps'] / single:.2f}" if single and name not in (*BASELINES, "ingest") else "-"
        )
        out.append(
            f"| {name} | {s['per_request']:.0f} "
            f"| {s['rps']:.0f} ({s['rps_min']:.0f}-{s['rps_max']:.0f}) "
            f"| {s['eps']:.0f} ({s['eps_min']:.0f}-{s['eps_max']:.0f}) | {s['p50']:.1f} "
            f"| {s['p99']:.1f} | {s['errors']:.0f} / {s['requests']:.0f} "
            f"| {to_bare} | {to_insert} | {to_single} |"
        )
    out.append("")
    out.append(
        "Ratios are of medians; the bare view handles one event per request, so its events/s "
        "is its requests/s."
    )
    out.append("")
    out.append(
        "Per round (events/s; in brackets the ratio to the same round's bare view, for a batch "
        "endpoint to the same round's ingest):"
    )
    out.append("")
    out.append("| round | " + " | ".join(names) + " |")
    out.append("|---|" + "---:|" * len(names))
    for rnd in sorted({r.round for r in results}):
        row = {r.endpoint: r for r in results if r.round == rnd}
        cells = []
        for name in names:
            r = row.get(name)
            base = row.get("ingest" if ENDPOINTS_BY_NAME[name].batch_size else "bare")
            if r is None:
                cells.append("-")
            elif name == "bare" or base is None or not base.eps:
                cells.append(f"{r.eps:.0f}")
            else:
                cells.append(f"{r.eps:.0f} ({r.eps / base.eps:.2f})")
        out.append(f"| {rnd} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "CPU per request, ms (all rounds; the machine has "
        f"{os.cpu_count()} cores shared by everything below):"
    )
    out.append("")
    out.append(
        "| endpoint | gunicorn | postgres | redis | load generator | other | "
        "machine busy % | steal % | gunicorn+postgres+redis per event |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        runs = [r for r in results if r.endpoint == name]
        if not runs:
            continue
        n = sum(r.requests for r in runs) or 1
        wall = sum(r.cpu.get("wall", 0) for r in runs) or 1
        busy = sum(r.cpu.get("machine_busy", 0) for r in runs)

        def per(key: str, runs: list[RunResult] = runs, n: int = n) -> str:
            return f"{sum(r.cpu.get(key, 0) for r in runs) / n * 1000:.2f}"

        def total(key: str, runs: list[RunResult] = runs) -> float:
            return sum(r.cpu.get(key, 0) for r in runs)

        lg = sum(r.loadgen_cpu for r in runs)
        server = total("gunicorn") + total("postgres") + total("redis")
        other = busy - server - lg
        cores = os.cpu_count() or 1
        events = n * runs[0].per_request
        out.append(
            f"| {name} | {per('gunicorn')} | {per('postgres')} | {per('redis')} "
            f"| {lg / n * 1000:.2f} | {max(other, 0) / n * 1000:.2f} "
            f"| {busy / wall / cores * 100:.0f} | {total('steal') / wall / cores * 100:.0f} "
            f"| {server / events * 1000:.3f} |"
        )
    out.append("")
    bare_runs = [r for r in results if r.endpoint == "bare"]
    if bare_runs:
        seconds = sum(r.duration for r in bare_runs)
        lg_share = sum(r.loadgen_cpu for r in bare_runs) / seconds
        gunicorn_share = sum(r.cpu.get("gunicorn", 0) for r in bare_runs) / seconds
        busy_share = sum(r.cpu.get("machine_busy", 0) for r in bare_runs) / seconds
        out.append(
            f"Load generator against the bare view: {summary['bare']['rps']:.0f} requests/s, "
            f"using {lg_share:.2f} cores while gunicorn used {gunicorn_share:.2f} and the "
            f"machine {busy_share:.2f} of its {os.cpu_count()}: the bare number is bounded by "
            "the CPU left to the server, not by the load generator."
        )
    for line in checks:
        out.append(line)
    errors = [r for r in results if r.first_error]
    for r in errors[:3]:
        out.append(f"First error of {r.endpoint} round {r.round}: {r.first_error}")
    print("\n".join(out), flush=True)
    ratios: dict[str, float] = {}
    if single and bare:
        ratios["ingest/bare"] = single / bare
    if single and bare_insert:
        ratios["ingest/bare-insert"] = single / bare_insert
    if single:
        ratios["ingest p99"] = summary["ingest"]["p99"]
    batch = summary.get("ingest-batch", {}).get("eps")
    if batch and single:
        ratios["batch/ingest"] = batch / single
    plain = summary.get("ingest-plain", {}).get("eps")
    for name in ("ingest-governed", "ingest-flagged"):
        governed = summary.get(name, {}).get("eps")
        if governed and plain:
            ratios[f"{name}/plain"] = governed / plain
        if governed and single:
            ratios[f"{name}/ingest"] = governed / single
    return ratios


# The verdicts printed after the report: (ratio's key, line, target, whether more is better).
VERDICTS = [
    (
        "ingest/bare",
        "Ingest/bare ratio {value:.2f}: {verdict} the target of >= {target:.2f}.",
        INGEST_BARE_TARGET,
        True,
    ),
    (
        "ingest/bare-insert",
        "Ingest/bare-insert ratio {value:.2f}: {verdict} the target of >= {target:.2f}.",
        INGEST_BARE_INSERT_TARGET,
        True,
    ),
    (
        "ingest p99",
        "Ingest p99 {value:.1f} ms at {concurrency} connections: {verdict} the "
        "target of <= {target:g} ms.",
        INGEST_P99_TARGET_MS,
        False,
    ),
    (
        "batch/ingest",
        "Batch/single events/s ratio {value:.1f}x (ingest-batch ÷ ingest, same run): "
        "{verdict} the target of >= {target:g}x.",
        BATCH_INGEST_TARGET,
        True,
    ),
]


for _name, _what in (
    ("ingest-governed", "flag mode and one hashed field"),
    ("ingest-flagged", "flag mode, one hashed field, every event failing the schema"),
):
    VERDICTS += [
        (
            f"{_name}/plain",
            f"{_name}/ingest-plain events/s {{value:.2f}} ({_what}, against the same schema "
            "in reject mode, same run): {verdict} the target of >= {target:.2f}.",
            GOVERNED_TARGET,
            True,
        ),
        (
            f"{_name}/ingest",
            f"{_name}/ingest events/s {{value:.2f}} ({_what}, against the signal without "
            "schema, same run): {verdict} the target of >= {target:.2f}.",
            GOVERNED_TARGET,
            True,
        ),
    ]


def print_verdicts(args: argparse.Namespace, ratios: dict[str, float]) -> None:
    for key, line, target, more_is_better in VERDICTS:
        if key not in ratios:
            continue
        value = ratios[key]
        meets = value >= target if more_is_better else value <= target
        verdict = "meets" if meets else "does NOT meet"
        print(
            line.format(value=value, verdict=verdict, target=target, concurrency=args.concurrency)
        )
    if "batch/ingest" not in ratios and "ingest-batch" in args.names:
        print("Batch/single ratio: needs `ingest` in the same run (--endpoints).")


# --- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = cli.parser_for(__doc__)
    cli.add_service_arguments(
        parser, database="bench", cache_db=2, broker_db=3, broker="Celery broker"
    )
    cli.add_server_arguments(
        parser,
        connections="open connections of the load generator",
        threads="load generator threads (wrk -t) or processes (Python)",
    )
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", "-r", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per endpoint")
    parser.add_argument(
        "--endpoints",
        default=",".join(e.name for e in ENDPOINTS),
        help="comma-separated subset of: " + ", ".join(ENDPOINTS_BY_NAME),
    )
    parser.add_argument(
        "--identities",
        type=int,
        default=10_000,
        help="distinct identity ids the requests cycle through",
    )
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--app",
        default="bigmind.wsgi:application",
        help="WSGI application gunicorn serves (another one only for what-if "
        "experiments, importable from the project root or PYTHONPATH)",
    )
    parser.add_argument(
        "--reset", action="store_true", help="drop and recreate the benchmark database first"
    )
    parser.add_argument(
        "--keep-queue",
        action="store_true",
        help=f"keep the published messages in the broker's {BROKER_QUEUE} queue "
        "(by default they are deleted at the end: no worker consumes them)",
    )
    parser.add_argument("--skip-setup", action="store_true", help="skip create/migrate/bootstrap")
    args = parser.parse_args()
    names = [n.strip() for n in args.endpoints.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENDPOINTS_BY_NAME]
    if unknown:
        parser.error(f"unknown endpoints: {', '.join(unknown)}")
    if "bare" not in names:
        names.insert(0, "bare")  # the baseline every ratio needs
    args.names = names
    args.wrk = shutil.which("wrk")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if args.wrk else "python"
    elif args.loadgen == "wrk" and not args.wrk:
        parser.error("wrk is not installed (apt-get install wrk), use --loadgen python")
    return args


def main() -> int:
    args = parse_args()
    harness = stack.Stack(args, "ingest")
    machine = machine_description()
    try:
        if not args.skip_setup:
            harness.prepare_database()
            stack.bench_table_prepare(args)
        found = versions(args)
        port = harness.start_gunicorn()

        run_id = uuid.uuid4().hex[:10]
        for name in args.names:
            status, body = post_once(port, name, f"{run_id}-check-{name}")
            if status != 202:
                path = ENDPOINTS_BY_NAME[name].path
                raise RuntimeError(f"{name}: {path} answered {status}: {body[:500]!r}")
        log("all endpoints answer 202")

        with Db(args.database_url) as db:
            events_before = db.events()
        queue_before = stack.broker_depth(harness.broker)

        warm: list[RunResult] = []
        if args.warmup > 0:
            log(f"warming up {args.warmup:g} s per endpoint")
            warm = [
                one_run(args, harness, name, args.warmup, f"{run_id}-warm-{name}")
                for name in args.names
            ]
        results: list[RunResult] = []
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(args.names)
            for name in args.names[shift:] + args.names[:shift]:
                log(f"round {rnd}/{args.rounds}: {name} for {args.duration:g} s")
                result = one_run(args, harness, name, args.duration, f"{run_id}-r{rnd}-{name}")
                result.round = rnd
                log(
                    f"  {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                    f"p99 {result.p99_ms:.1f} ms, errors {result.errors}"
                )
                results.append(result)

        time.sleep(0.5)
        ingest_runs = [r for r in warm + results if r.endpoint not in BASELINES]
        checks = integrity(args, harness, ingest_runs, run_id, events_before, queue_before)
        ratios = print_report(args, results, args.names, machine, found, checks)
        print()
        print_verdicts(args, ratios)
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        harness.close()
        if not args.keep_queue:
            try:
                if stack.broker_queue_delete(harness.broker):
                    log(f"deleted the benchmark's messages from {args.broker_url} {BROKER_QUEUE}")
            except Exception as exc:
                log(f"could not empty the broker queue: {exc}")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark what webhooks cost processing: the drain rate of one worker process with one webhook
endpoint subscribed to everything, against the rate without it, in the same run.

One command (`make bench-webhooks`, i.e. `.venv/bin/python scripts/bench_webhooks.py`), one run:

  1. drops and recreates its own PostgreSQL database (default `bench_webhooks`), migrates it,
     adds the demo data, empties its own Redis broker database, starts gunicorn (as
     scripts/bench_process.py does) and a local HTTP receiver in a process of its own
     (scripts/benchlib/receiver.py: asyncio, keep-alive; it answers 200 and records every
     request), at CPU priority `nice` --nice;
  2. creates one webhook endpoint of the demo organization, `events: ["*"]`, pointing at the
     receiver, and starts one `webhooks` worker as deployed (prefork, 8 processes), also
     at `nice` --nice, which runs for the whole benchmark. The receiver stands for the
     customer's machine, and the sender is background work that can wait: on this 2-core
     machine both share the cores with the processing worker, and the lower priority gives
     processing the CPU first (docs/benchmarks.md, "Webhooks", has the figures both ways);
  3. rounds, taking turns (`off` then `on`, then `on` then `off`, ...), each on a fresh backlog of
     --events events stored through POST /v1/events/batch with no processing worker running:
     `off` with the endpoint disabled, `on` with it enabled. Then ONE processing worker process is
     started and the drain is timed from the first completion to the last (`processed_at`), as in
     bench_process.py. In an `on` round the webhooks worker sends at the same time, on the same
     cores; the round ends when every delivery has succeeded (the time that takes is reported);
  4. checks: every event completed; in `on` rounds every completed event has exactly one
     `event.completed` delivery and every delivery succeeded; the receiver got every delivery id,
     and no id that is not one (duplicates counted); each body verifies with the endpoint's
     secret; in `off` rounds no delivery was written;
  5. prints markdown tables: the rate per round, and the ratio on/off of the totals (the target is
     0.8 or more). The exit status is 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass

from bench_process import BATCH_SIZE, Drain, drain, preload
from benchlib import cli, stack
from benchlib.db import Db
from benchlib.machine import machine_description, versions
from benchlib.stack import ROOT, log
from benchlib.stats import machine_lines

sys.path.insert(0, str(ROOT))  # events_app.webhooks.signing: the standard library only

from benchlib.receiver import LeanReceiver

from events_app.webhooks.signing import verify

WEBHOOK_PROCESSES = 8

ENDPOINT_CODE = """
from signals_app.models import ApiKey
from events_app.webhooks.endpoints import endpoint_create
key = ApiKey.objects.select_related("organization").first()
created = endpoint_create(organization=key.organization, url={url!r}, events=["*"], enabled=False)
print("ENDPOINT", created.endpoint.pk, created.secret)
"""


@dataclass
class Round:
    mode: str
    drain: Drain
    deliveries: int = 0
    succeeded: int = 0
    catch_up: float = 0.0  # last completion to last delivery succeeded
    sending: float = 0.0  # first delivery written to last delivery succeeded


def webhooks_worker(harness: stack.Stack) -> subprocess.Popen[bytes]:
    log_path = harness.workdir / "worker-webhooks.log"
    handle = open(log_path, "ab")  # noqa: SIM115 - kept open for the worker's lifetime
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        harness.args.celery_app,
        "worker",
        "-Q",
        "webhooks",
        "--pool",
        "prefork",
        "--concurrency",
        str(WEBHOOK_PROCESSES),
        "--without-mingle",
        "-n",
        f"bench-webhooks-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel",
        "WARNING",
    ]
    nice = harness.args.nice
    log(f"starting the webhooks worker: prefork, {WEBHOOK_PROCESSES} processes, nice {nice}")
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=harness.env,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=handle,
        start_new_session=True,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,
    )


def endpoint_create(harness: stack.Stack, url: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", ENDPOINT_CODE.format(url=url)],
        cwd=ROOT,
        env=harness.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("ENDPOINT "))
    _, pk, secret = line.split()
    return int(pk), secret


def deliveries_of(db: Db, prefix: str) -> tuple[int, int, int, float, float]:
    """Of a round: deliveries, succeeded, events without exactly one event.completed, seconds
    from the last completion to the last delivery's success, and from the first delivery's
    writing to the last one's success."""
    row = db.one(
        "SELECT count(d.id), count(d.id) FILTER (WHERE d.status = 'succeeded'), "
        "extract(epoch FROM max(d.completed_at) - max(e.processed_at)), "
        "extract(epoch FROM max(d.completed_at) - min(d.created_at)) "
        "FROM events_app_webhookdelivery d JOIN events_app_event e ON e.id = d.event_id "
        "WHERE e.reference LIKE %s",
        (f"{prefix}-%",),
    )
    bad = db.one(
        "SELECT count(*) FROM events_app_event e LEFT JOIN (SELECT event_id, count(*) AS n "
        "FROM events_app_webhookdelivery WHERE type = 'event.completed' GROUP BY event_id) d "
        "ON d.event_id = e.id WHERE e.reference LIKE %s AND coalesce(d.n, 0) <> 1",
        (f"{prefix}-%",),
    )
    return int(row[0]), int(row[1]), int(bad[0]), float(row[2] or 0), float(row[3] or 0)


def pending_deliveries(db: Db) -> int:
    return int(
        db.one("SELECT count(*) FROM events_app_webhookdelivery WHERE status = 'pending'")[0]
    )


def one_round(
    args: argparse.Namespace,
    harness: stack.Stack,
    db: Db,
    endpoint: int,
    run_id: str,
    rnd: int,
    mode: str,
) -> tuple[Round, list[str]]:
    prefix = f"{run_id}-{mode}{rnd}"
    db.conn.execute(
        "UPDATE events_app_webhookendpoint SET enabled = %s WHERE id = %s", (mode == "on", endpoint)
    )
    log(f"round {rnd} ({mode}): a backlog of {args.events} events, no processing worker")
    messages, _ = preload(args, harness.port, prefix, args.events, batch=True)
    result = Drain(
        name=f"{mode} {rnd}", task="events.process_events", messages=messages, processes=1
    )
    group = harness.start_workers(1, f"{mode}{rnd}")
    try:
        drain(args, harness, db, group, result, prefix, args.events)
    finally:
        harness.stop_workers(group)
    outcome = Round(mode=mode, drain=result)
    sender = webhooks_worker(harness) if args.no_sender and mode == "on" else None
    problems: list[str] = []
    deadline = time.monotonic() + args.timeout
    # A light poll (the partial index on pending rows); the full check once, after.
    while pending_deliveries(db) and time.monotonic() < deadline:
        time.sleep(0.2)
    total, succeeded, bad, outcome.catch_up, outcome.sending = deliveries_of(db, prefix)
    if sender is not None:
        sender.terminate()
        sender.wait(timeout=30)
    outcome.deliveries, outcome.succeeded = total, succeeded
    if mode == "on":
        if bad:
            problems.append(f"{prefix}: {bad} events without exactly one event.completed delivery")
        if succeeded != total:
            problems.append(f"{prefix}: {total - succeeded} deliveries not succeeded")
    elif total:
        problems.append(f"{prefix}: {total} deliveries written with the endpoint disabled")
    log(
        f"  {result.rate:.0f} events/s; {total} deliveries, {succeeded} succeeded "
        f"{outcome.catch_up:.1f} s after the last completion"
    )
    return outcome, problems


def receiver_check(
    db: Db, records: list[dict[str, str]], secret: str
) -> tuple[list[str], Counter[str]]:
    owed = {
        "whevt_" + str(row[0]).replace("-", "")
        for row in db.conn.execute("SELECT id FROM events_app_webhookdelivery").fetchall()
    }
    counts: Counter[str] = Counter(r["id"] for r in records)
    problems = []
    if set(counts) - owed:
        problems.append(f"the receiver got {len(set(counts) - owed)} ids it was not owed")
    if owed - set(counts):
        problems.append(f"{len(owed - set(counts))} owed ids never reached the receiver")
    unverified = sum(
        1
        for r in records
        if not verify(r["signature"], r["body"].encode("latin-1"), secret, tolerance=3600)
        or json.loads(r["body"])["id"] != r["id"]
    )
    if unverified:
        problems.append(f"{unverified} requests did not verify with the endpoint's secret")
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    log(f"receiver: {len(records)} requests, {len(counts)} ids, {duplicates} duplicates")
    return problems, counts


def report(
    args: argparse.Namespace,
    machine: dict[str, str],
    found: dict[str, str],
    rounds: list[Round],
    counts: Counter[str],
    problems: list[str],
) -> str:
    def total_rate(mode: str) -> float:
        chosen = [r.drain for r in rounds if r.mode == mode]
        intervals = sum(d.intervals for d in chosen)
        seconds = sum(d.seconds for d in chosen)
        return intervals / seconds if seconds else 0.0

    off, on = total_rate("off"), total_rate("on")
    ratio = on / off if off else 0.0
    lines = [
        "## Webhooks: processing with and without an endpoint subscribed to everything",
        "",
        *machine_lines(machine, found),
        "",
        f"One processing worker process (prefork, 1), `--events {args.events}` per round, stored "
        f"by POST /v1/events/batch ({BATCH_SIZE} per request) before the worker starts; one "
        f"`webhooks` worker (prefork, {WEBHOOK_PROCESSES}, nice {args.nice}) runs throughout and "
        f"sends to a local receiver (its own process, nice {args.nice}) that answers 200.",
        "",
        "| round | endpoint | events | drain (s) | events/s | deliveries | deliveries/s | "
        "last delivery after the last completion |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for number, r in enumerate(rounds, 1):
        lines.append(
            f"| {number} | {r.mode} | {r.drain.events} | {r.drain.seconds:.2f} | "
            f"{r.drain.rate:.0f} | {r.deliveries} | "
            + (
                f"{r.deliveries / r.sending:.0f} | {r.catch_up:.2f} s |"
                if r.mode == "on" and r.sending
                else "- | - |"
            )
        )
    lines += [
        "",
        f"**Processing rate with the endpoint: {on:.0f} events/s; without: {off:.0f} events/s; "
        f"ratio {ratio:.2f}** (target 0.80 or more: {'met' if ratio >= 0.8 else 'NOT met'}).",
        "",
        f"Receiver: {sum(counts.values())} requests, {len(counts)} distinct ids, "
        f"{sum(n - 1 for n in counts.values() if n > 1)} duplicates.",
        "",
        *(f"FAILED: {p}" for p in problems),
        *(["OK: every check passed"] if not problems else []),
    ]
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    parser = cli.parser_for(__doc__)
    cli.add_service_arguments(
        parser,
        database="bench_webhooks",
        cache_db=10,
        broker_db=11,
        broker="Celery broker; this Redis database is emptied at the start",
    )
    parser.add_argument("--events", "-n", type=int, default=3000, help="backlog per round")
    parser.add_argument("--rounds", "-r", type=int, default=3, help="pairs of rounds (off, on)")
    cli.add_server_arguments(parser)
    parser.add_argument(
        "--identities", type=int, default=200, help="CRM records the events are spread over"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds a phase may take")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="CPU priority (nice) of the webhooks worker and the receiver; 0: the same as "
        "processing",
    )
    parser.add_argument(
        "--no-sender",
        action="store_true",
        help="no webhooks worker during the drains (the outbox's own cost); deliveries are sent "
        "after each round",
    )
    parser.add_argument("--pool", default="prefork", help=argparse.SUPPRESS)
    parser.add_argument("--celery-app", default="bigmind", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cli.finish_server_arguments(parser, args)
    args.reset = True
    return args


def main() -> int:
    args = parse_args()
    stack.set_log_tag("bench-webhooks")
    harness = stack.Stack(args, "webhooks")
    harness.env["BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS"] = "true"
    machine = machine_description()
    db: Db | None = None
    sender: subprocess.Popen[bytes] | None = None
    failed = True
    try:
        harness.prepare_database()
        harness.broker.flushdb()
        found = versions(args)
        db = Db(args.database_url)
        harness.start_gunicorn()
        run_id = uuid.uuid4().hex[:8]
        receiver = LeanReceiver(harness.workdir, nice=args.nice)
        try:
            endpoint, secret = endpoint_create(harness, receiver.url)
            sender = None if args.no_sender else webhooks_worker(harness)
            rounds: list[Round] = []
            problems: list[str] = []
            for rnd in range(1, args.rounds + 1):
                # Taking turns, so the machine's noise hits both alike.
                for mode in ("off", "on") if rnd % 2 else ("on", "off"):
                    outcome, found_problems = one_round(
                        args, harness, db, endpoint, run_id, rnd, mode
                    )
                    rounds.append(outcome)
                    problems += found_problems
            if sender is not None and sender.poll() is not None:
                problems.append("the webhooks worker exited")
        finally:
            receiver.stop()
        found_problems, counts = receiver_check(db, receiver.records(), secret)
        problems += found_problems
        print(report(args, machine, found, rounds, counts, problems), flush=True)
        failed = bool(problems)
        return 1 if failed else 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        if sender is not None and sender.poll() is None:
            sender.terminate()
            try:
                sender.wait(timeout=20)
            except subprocess.TimeoutExpired:
                sender.kill()
        if db is not None:
            db.close()
        harness.close(keep_logs=failed)
        try:
            stack.broker_queue_delete(harness.broker)
        except Exception as exc:
            log(f"could not empty the broker queue: {exc}")


if __name__ == "__main__":
    sys.exit(main())

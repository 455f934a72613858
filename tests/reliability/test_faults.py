"""Faults injected while a load of single events is being sent: no accepted event is lost or
counted twice, and a request the app could not serve got a clear 503 and stored nothing.

Each test sends BIGMIND_FAULT_EVENTS (2,000) POST /v1/events at BIGMIND_FAULT_RATE per second
from BIGMIND_FAULT_THREADS threads through gunicorn, breaks one dependency once a quarter of
them are sent, repairs it BIGMIND_FAULT_HOLD_SECONDS later while the load goes on, then checks
every request against the database (docs/reliability.md has the rules and the last results).
The webhook fault sends a smaller, slower load and also checks every webhook delivery the
completed events owe against what a real receiver got.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from events_app.webhooks.signing import HEADER, verify
from tests.harness import Worker, cpu_ticks, manage, worker_start, workers_stop
from tests.reliability.conftest import ORGANIZATION, SIGNALS, FaultStack
from tests.reliability.load import Load, Outcome
from tests.reliability.report import FaultRow, WebhookCounts, row_write
from tests.webhook_receiver import Received, receiver_running

pytestmark = [pytest.mark.fault, pytest.mark.slow]

EVENTS = int(os.environ.get("BIGMIND_FAULT_EVENTS", "2000"))
RATE = float(os.environ.get("BIGMIND_FAULT_RATE", "100"))
THREADS = int(os.environ.get("BIGMIND_FAULT_THREADS", "8"))
HOLD_SECONDS = float(os.environ.get("BIGMIND_FAULT_HOLD_SECONDS", "5"))
# After the load: how long every accepted event may take to be `completed`.
COMPLETE_TIMEOUT = float(os.environ.get("BIGMIND_FAULT_COMPLETE_TIMEOUT", "180"))
TRIGGER_SHARE = 0.25  # the fault is injected once this share of the load is sent
KILL_TRIES = 3
# The web-process kill: a faster load, so that the killed process holds requests in flight.
WEB_KILL_RATE = float(os.environ.get("BIGMIND_FAULT_WEB_KILL_RATE", "400"))
WEB_KILL_THREADS = int(os.environ.get("BIGMIND_FAULT_WEB_KILL_THREADS", "24"))
WEB_KILL_TRIES = 5
# Its load lasts 10 s at 400/s, so that up to WEB_KILL_TRIES kills fit in it with load to spare.
WEB_KILL_EVENTS = int(os.environ.get("BIGMIND_FAULT_WEB_KILL_EVENTS", "4000"))


def _wall(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def _unfinished(stack: FaultStack, fault: str, *, received_before: float | None = None) -> int:
    """Events of this fault's signal not yet completed or failed (raises if the database is
    unreachable)."""
    sql = (
        "SELECT count(*) FROM events_app_event WHERE signal_id = %s "
        "AND status IN ('pending', 'processing')"
    )
    params: list[Any] = [stack.signal_ids[fault]]
    if received_before is not None:
        sql += " AND received_at <= %s"
        params.append(_wall(received_before))
    with stack.db() as conn:
        return int(conn.execute(sql, params).fetchone()[0])


class RecoveryWatch(threading.Thread):
    """From the repair on: when is every event accepted up to the repair processed?"""

    def __init__(self, stack: FaultStack, fault: str, repaired: float) -> None:
        super().__init__(name=f"recovery-{fault}", daemon=True)
        self.stack, self.fault, self.repaired = stack, fault, repaired
        self.recovered: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                left = _unfinished(self.stack, self.fault, received_before=self.repaired)
            except Exception:
                left = -1  # the database is still coming back
            if left == 0:
                self.recovered = time.time()
                return
            self._halt.wait(0.25)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


@dataclass
class FaultResult:
    row: FaultRow
    outcomes: list[Outcome]
    broken: float  # time.time() when the fault was injected
    repaired: float  # ... and when it was undone
    load_end: float  # ... and when the load's last answer came

    def during(self) -> list[Outcome]:
        """Requests sent and answered while the fault lasted."""
        return [
            o
            for o in self.outcomes
            if o.started >= self.broken and o.started + o.elapsed <= self.repaired
        ]


def _clear_503(outcome: Outcome) -> bool:
    return (
        outcome.status == 503
        and outcome.envelope
        and bool(outcome.code)
        and outcome.retry_after is not None
    )


def _error_kind(outcome: Outcome) -> str:
    if outcome.error is not None:
        # "other:<exception type>", without the message (it holds addresses and numbers).
        return ":".join(outcome.error.split(":", 2)[:2])
    if outcome.status == 503:
        return "503 without envelope, code or Retry-After"
    return f"{outcome.status} {outcome.code or ''}".strip()


def fault_run(
    stack: FaultStack,
    *,
    fault: str,
    description: str,
    inject: Callable[[Load], str | None],
    load_after_repair: bool = True,
    events: int = EVENTS,
    rate: float = RATE,
    threads: int = THREADS,
    retry_unanswered: bool = False,
) -> FaultResult:
    """Send the load, `inject` the fault (it returns once the fault is repaired), check all.

    `load_after_repair`: part of the load must come after the repair (a fault of the API's
    dependencies must be shown to end); not for a worker fault, which ingest does not see.
    `retry_unanswered`: a request that got no answer at all is sent again, as a client would,
    with the same Idempotency-Key and body (`retry_check` says what the retry must answer), and
    its retry's answer is what the checks see.
    """
    prefix = f"{fault}-{uuid.uuid4().hex[:8]}"
    load = Load(
        port=stack.port,
        api_key=stack.api_key,
        signal=SIGNALS[fault],
        prefix=prefix,
        total=events,
        rate=rate,
        threads=threads,
    )
    load.start()
    load.wait_sent(int(events * TRIGGER_SHARE), timeout=events / rate * 5 + 60)
    broken = time.time()
    notes = inject(load)
    repaired = time.time()
    sent_at_repair = load.sent
    watch = RecoveryWatch(stack, fault, repaired)
    watch.start()
    load.join(timeout=events / rate * 5 + 120)
    load_end = time.time()
    outcomes = sorted(load.outcomes, key=lambda o: o.index)
    retry_problems: list[str] = []
    if retry_unanswered:
        outcomes, retry_notes, retry_problems = retry_check(stack, load, outcomes)
        notes = "; ".join(filter(None, [notes, retry_notes]))

    deadline = time.monotonic() + COMPLETE_TIMEOUT
    while True:
        try:
            left = _unfinished(stack, fault)
        except Exception:
            left = -1
        if left == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    completed_at = time.time()
    watch.join(max(0.0, deadline - time.monotonic()) + 1)
    watch.stop()

    row, problems = check(stack, fault, prefix, outcomes)
    problems += retry_problems
    latencies = sorted(o.elapsed for o in outcomes)
    row.description = description
    after = [o for o in outcomes if o.started > repaired]
    if row.unavailable:
        late = sum(o.unavailable for o in after)
        back = [o.started + o.elapsed - repaired for o in after if o.accepted]
        ingest = f"first 2xx {min(back):.1f} s after the repair" if back else "no 2xx after it"
        notes = "; ".join(filter(None, [notes, f"{late} 503(s) after the repair, {ingest}"]))
    row.notes = notes or ""
    row.fault_seconds = repaired - broken
    row.recovered_seconds = None if watch.recovered is None else watch.recovered - repaired
    row.completed_seconds = completed_at - load_end
    row.p99_ms = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 1 else 0.0
    row.max_ms = latencies[-1] * 1000 if latencies else 0.0
    path = row_write(stack.var_dir, row)
    during = [o for o in outcomes if broken <= o.started <= repaired]
    print(
        f"{fault}: {row.to_json()}\n{len(during)} request(s) sent during the fault "
        f"({sum(o.accepted for o in during)} accepted), {len(after)} after it; "
        f"{sent_at_repair} sent by the repair; row: {path}"
    )
    # The fault must have happened while the load was running, or the test proved nothing.
    problems += [] if during else ["no request was sent while the fault lasted"]
    if load_after_repair and not after:
        problems.append("the load was over before the fault was repaired")
    if left != 0:
        problems.append(
            f"{left if left > 0 else 'unknown'} event(s) still pending or processing "
            f"{COMPLETE_TIMEOUT:.0f} s after the load ended"
        )
    assert not problems, f"{fault}: " + "; ".join(problems)
    return FaultResult(
        row=row, outcomes=outcomes, broken=broken, repaired=repaired, load_end=load_end
    )


def retry_check(
    stack: FaultStack, load: Load, outcomes: list[Outcome]
) -> tuple[list[Outcome], str, list[str]]:
    """Send each request that got no answer again; it must have left a whole event or nothing,
    and its retry must say so: 200 `Idempotent-Replayed` with that event's id, or a 202 that
    stores it now. The outcomes with the retries' answers in place, a note, and problems."""
    unanswered = [o for o in outcomes if o.status is None]
    if not unanswered:
        return outcomes, "every request was answered", []
    keys = [o.key for o in unanswered]
    with stack.db() as conn:
        # A whole event: the event row with its CRM record (one statement stored both).
        before = {
            row[0]: str(row[1])
            for row in conn.execute(
                "SELECT e.idempotency_key, e.id FROM events_app_event e "
                "JOIN events_app_crmrecord r ON r.id = e.crm_record_id "
                "WHERE e.organization_id = %s AND e.idempotency_key = ANY(%s)",
                [stack.organization_id, keys],
            ).fetchall()
        }
        rows = conn.execute(
            "SELECT count(*) FROM events_app_event WHERE organization_id = %s "
            "AND idempotency_key = ANY(%s)",
            [stack.organization_id, keys],
        ).fetchone()[0]
    problems = []
    if rows != len(before):
        problems.append(
            f"{rows - len(before)} unanswered request(s) left an event without its record"
        )
    retried = {}
    for outcome in unanswered:
        retry = outcome
        for _ in range(20):  # the killed process's port share is back within seconds
            retry = load.send(outcome.index)
            if retry.status is not None:
                break
            time.sleep(0.5)
        retried[outcome.index] = retry
        stored = before.get(outcome.key)
        if stored is not None:
            if not (retry.status == 200 and retry.replayed and retry.event_id == stored):
                problems.append(
                    f"{outcome.key} was stored as {stored} with no answer; its retry answered "
                    f"{retry.status} {retry.event_id} (replayed: {retry.replayed})"
                )
        elif retry.status != 202:
            problems.append(
                f"{outcome.key} was not stored and got no answer; its retry answered "
                f"{retry.status} {retry.code or retry.error or ''}"
            )
    note = (
        f"{len(unanswered)} request(s) got no answer: {len(before)} had been stored whole "
        f"(their retries answered 200 with the stored id), {len(unanswered) - len(before)} "
        "had left nothing (their retries stored them, 202)"
    )
    return [retried.get(o.index, o) for o in outcomes], note, problems


def check(
    stack: FaultStack, fault: str, prefix: str, outcomes: list[Outcome]
) -> tuple[FaultRow, list[str]]:
    """Every request against the database; the row and what is wrong (empty: nothing)."""
    with stack.db() as conn:
        stored = conn.execute(
            "SELECT idempotency_key, reference, status, last_error FROM events_app_event "
            "WHERE organization_id = %s AND signal_id = %s",
            [stack.organization_id, stack.signal_ids[fault]],
        ).fetchall()
        rollup = conn.execute(
            "SELECT coalesce(sum(sum), 0), coalesce(sum(count), 0) "
            "FROM events_app_metricaggregate WHERE signal_id = %s",
            [stack.signal_ids[fault]],
        ).fetchone()
    by_key = Counter(row[0] for row in stored)
    by_reference = Counter(row[1] for row in stored)
    status_of = {row[0]: (row[2], row[3]) for row in stored}
    sent_keys = {o.key for o in outcomes}

    problems: list[str] = []
    accepted = [o for o in outcomes if o.accepted]
    clear_503 = [o for o in outcomes if _clear_503(o)]
    others = [o for o in outcomes if not o.accepted and not _clear_503(o)]
    missing = [o.key for o in accepted if by_key[o.key] == 0]
    unfinished = [
        f"{o.key}: {status_of[o.key][0]} {status_of[o.key][1]!r}"
        for o in accepted
        if by_key[o.key] and status_of[o.key][0] != "completed"
    ]
    # A key can be stored once only (a unique index); the reference (the same string here) has
    # no such index, so it would show an event stored twice under another key.
    twice = sorted(
        {key for key, n in by_key.items() if n > 1}
        | {ref for ref, n in by_reference.items() if n > 1}
    )
    after_503 = [o.key for o in clear_503 if by_key[o.key]]
    strangers = [key for key in by_key if key not in sent_keys]
    completed = sum(1 for row in stored if row[2] == "completed")
    rollup_sum, rollup_count = float(rollup[0]), int(rollup[1])

    if missing:
        problems.append(f"{len(missing)} accepted event(s) not stored: {missing[:5]}")
    if unfinished:
        problems.append(f"{len(unfinished)} accepted event(s) not completed: {unfinished[:5]}")
    if twice:
        problems.append(f"{len(twice)} key(s) or reference(s) stored twice: {twice[:5]}")
    if after_503:
        problems.append(f"{len(after_503)} request(s) answered 503 stored anyway: {after_503[:5]}")
    if strangers:
        problems.append(f"{len(strangers)} stored event(s) nobody sent: {strangers[:5]}")
    if others:
        kinds = Counter(_error_kind(o) for o in others)
        problems.append(f"{len(others)} answer(s) neither 2xx nor a clear 503: {dict(kinds)}")
    if rollup_sum != completed or rollup_count != completed:
        problems.append(
            f"rollups count {rollup_count} event(s) summing to {rollup_sum:g}, "
            f"but {completed} event(s) are completed"
        )
    # Stored but the answer unknown (a client-side error): allowed, listed for the record.
    unknown_stored = [o.key for o in others if o.status is None and by_key[o.key]]
    if unknown_stored:
        print(f"{fault}: {len(unknown_stored)} request(s) without an answer were stored")

    row = FaultRow(
        fault=fault,
        description="",
        sent=len(outcomes),
        accepted=len(accepted),
        unavailable=len(clear_503),
        other_errors=len(others),
        lost=len(missing) + len(unfinished) + max(0, completed - int(rollup_sum)),
        duplicated=len(twice) + max(0, int(rollup_sum) - completed),
        stored_after_503=len(after_503),
        fault_seconds=0.0,
        recovered_seconds=None,
        completed_seconds=0.0,
        p99_ms=0.0,
        max_ms=0.0,
        finished_at=datetime.now(tz=UTC).isoformat(timespec="seconds"),
        errors=dict(Counter(_error_kind(o) for o in others)),
    )
    return row, problems


def _stuck_now(stack: FaultStack, fault: str, before: float) -> int:
    with stack.db() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM events_app_event WHERE signal_id = %s "
                "AND status = 'processing' AND claimed_at < %s",
                [stack.signal_ids[fault], _wall(before)],
            ).fetchone()[0]
        )


def _wait_until_busy(worker: Worker, timeout: float = 5.0) -> bool:
    """Wait until the worker's pool process is using CPU (so, most likely, holds claimed events):
    killing an idle worker would only test the easy case."""
    children = worker.pool_children()
    if len(children) != 1:
        return False
    deadline = time.monotonic() + timeout
    before = cpu_ticks(children[0])
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = cpu_ticks(children[0])
        if now > before >= 0:
            return True
        before = now
    return False


def test_it_loses_nothing_when_a_worker_is_killed(stack: FaultStack) -> None:
    """SIGKILL one worker's whole process group mid-load, then start a replacement.

    A worker holds claimed events only part of the time, and a kill that orphans none tests
    only the easy case (its unacknowledged message): up to KILL_TRIES workers are killed, one
    at a time, each replaced before the next kill, until one leaves claims behind.
    """

    def inject(load: Load) -> str:
        attempts = []
        for _ in range(KILL_TRIES):
            victim = next(worker for worker in stack.workers if worker.alive())
            busy = _wait_until_busy(victim)
            killed = time.time()
            victim.kill_group()
            # Claims the dead worker held stay `processing` until the sweep hands them back
            # (after the task time limit plus the margin); the other worker's finish at once.
            time.sleep(1.5)
            stuck = _stuck_now(stack, "worker-sigkill", killed)
            attempts.append(f"{stuck} ({'busy' if busy else 'apparently idle'})")
            stack.worker_start()
            if stuck:
                break
        return (
            f"{len(attempts)} worker(s) killed, one at a time; claimed events each left "
            f"`processing`: {', '.join(attempts)}"
        )

    fault_run(
        stack,
        fault="worker-sigkill",
        description="SIGKILL a Celery worker (main process and pool), start a new one",
        inject=inject,
        load_after_repair=False,
    )


def test_it_loses_nothing_when_redis_restarts(stack: FaultStack) -> None:
    """Stop the broker and cache Redis (without persistence: queued messages are gone), wait,
    start them again on the same ports."""

    def inject(load: Load) -> None:
        try:
            stack.broker.stop()
            stack.cache.stop()
            time.sleep(HOLD_SECONDS)
        finally:
            stack.broker.start()
            stack.cache.start()

    fault_run(
        stack,
        fault="redis-restart",
        description=f"stop both Redis servers (broker and cache) for {HOLD_SECONDS:g} s, "
        "start them empty",
        inject=inject,
    )


def test_it_answers_503_and_stores_nothing_while_postgres_is_down(stack: FaultStack) -> None:
    """`pg_ctl stop -m fast` (every connection cut, open transactions rolled back), wait,
    start again."""

    def inject(load: Load) -> None:
        try:
            stack.postgres.stop(mode="fast")
            time.sleep(HOLD_SECONDS)
        finally:
            stack.postgres.start()

    result = fault_run(
        stack,
        fault="postgres-restart",
        description=f"stop PostgreSQL (fast) for {HOLD_SECONDS:g} s, start it again",
        inject=inject,
    )
    # Ingest cannot store anything without the database: the outage shows as 503s, answered at
    # once rather than when the database is back.
    assert any(o.unavailable for o in result.during()), "no 503 was answered during the outage"


def test_it_keeps_accepting_when_the_cache_hangs(stack: FaultStack) -> None:
    """SIGSTOP the cache Redis: connections open but nothing answers, so every cache call runs
    into CACHE_SOCKET_TIMEOUT; then SIGCONT."""

    def inject(load: Load) -> None:
        stack.cache.freeze()
        try:
            time.sleep(HOLD_SECONDS)
        finally:
            stack.cache.thaw()

    result = fault_run(
        stack,
        fault="cache-unreachable",
        description=f"SIGSTOP the cache Redis for {HOLD_SECONDS:g} s (hangs), then SIGCONT",
        inject=inject,
    )
    # Answered while the cache still hung: the socket timeouts, not the SIGCONT, ended the wait.
    served = [o for o in result.during() if o.accepted]
    assert served, "no request was answered while the cache hung"


def _gunicorn_workers(stack: FaultStack) -> list[int]:
    assert stack.gunicorn is not None
    master = stack.gunicorn.process.pid
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def _client_connections(stack: FaultStack) -> dict[int, int]:
    """{gunicorn worker pid: established client connections it holds} (from /proc/net/tcp*)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == stack.port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    held = {}
    for pid in _gunicorn_workers(stack):
        try:
            links = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue
        held[pid] = sum(1 for link in links if link[8:-1] in inodes)  # "socket:[inode]"
    return held


def test_a_web_process_killed_with_commits_in_flight_leaves_whole_events_or_nothing(
    stack: FaultStack,
) -> None:
    """SIGKILL a gunicorn worker process (its request threads and its group-commit writer)
    while requests are in flight, as an OOM kill or a crash would; its master starts another.

    Requests of that process get no answer. Each must have left its whole event (committed with
    its group) or nothing, and a retry with the same Idempotency-Key must say which (200 with
    the stored id, or a 202 that stores it). Every 202 is stored exactly once. The load is
    faster than the other faults' so that groups are in flight when the kill comes; processes
    are killed one at a time (each replaced first, the busiest first) until one leaves a
    request unanswered.
    """

    def inject(load: Load) -> str:
        kills = 0
        for _ in range(WEB_KILL_TRIES):
            # Part of the load must come after the repair: no new kill in its last fifth (seen
            # in CI: kills 2 s apart outlasted a 5 s load, none leaving a request open).
            if load.sent >= load.total * 0.8:
                break
            before = sum(1 for o in list(load.outcomes) if o.status is None)
            # The process holding the most of the load's connections: a kill of one that holds
            # none leaves nothing in flight (seen: five such kills in a row, the newest process
            # each time, answered everything and outlasted the load).
            # Requests are short (one connection each), so wait, briefly, for a moment when
            # some process holds one.
            deadline = time.monotonic() + 1.0
            held = _client_connections(stack)
            while (not held or not any(held.values())) and time.monotonic() < deadline:
                time.sleep(0.001)
                held = _client_connections(stack)
            if not held:
                continue  # no worker process up at all this second: try again
            victim = max(held, key=lambda pid: (held[pid], -pid))  # a tie: the oldest
            os.kill(victim, signal.SIGKILL)
            kills += 1
            # The master notices, starts a replacement; the load goes on meanwhile. A request the
            # kill left open fails at once (connection reset), so stop waiting when one shows.
            waited = time.monotonic() + 2.0
            unanswered = 0
            while not unanswered and time.monotonic() < waited:
                time.sleep(0.05)
                unanswered = sum(1 for o in list(load.outcomes) if o.status is None) - before
            if unanswered:
                break
        return f"{kills} gunicorn worker process(es) SIGKILLed, one at a time"

    fault_run(
        stack,
        fault="web-sigkill",
        description="SIGKILL a gunicorn worker process mid-load (group commits in flight); "
        "retry each unanswered request with its Idempotency-Key",
        inject=inject,
        events=WEB_KILL_EVENTS,
        rate=WEB_KILL_RATE,
        threads=WEB_KILL_THREADS,
        retry_unanswered=True,
    )


# --- Webhooks: the sender killed mid-send, and the broker restarted ----------------------------
WEBHOOK_EVENTS = int(os.environ.get("BIGMIND_FAULT_WEBHOOK_EVENTS", "1000"))
# Slower than the other loads, so that the kill, the new sender's start and the broker's
# restart all fall within it.
WEBHOOK_RATE = float(os.environ.get("BIGMIND_FAULT_WEBHOOK_RATE", "40"))
# After every event is completed: how long every delivery may take to be sent.
WEBHOOK_TIMEOUT = float(os.environ.get("BIGMIND_FAULT_WEBHOOK_TIMEOUT", "120"))
# More threads than the per-endpoint cap of sends in flight (4), as deployed.
WEBHOOK_PROCESSES = 8
# Each answer waits this long (seconds, uniform), so that a kill most likely lands mid-send.
RECEIVER_DELAY = (0.05, 0.1)
IN_FLIGHT_WAIT = 15.0
# The header with the webhook id, as a receiver reads it (docs/webhooks.md).
ID_HEADER = "Bigmind-Webhook-Id"


def _webhook_endpoint_create(stack: FaultStack, *, url: str, signal_slug: str) -> tuple[int, str]:
    """An endpoint subscribed to every event type of this signal, made by the app's own service
    in a `manage.py shell` on the stack's database; its primary key and signing secret."""
    code = "\n".join(
        [
            "import json",
            "from events_app.webhooks.endpoints import endpoint_create",
            "from signals_app.models import Organization",
            "created = endpoint_create(",
            f"    organization=Organization.objects.get(slug={ORGANIZATION!r}),",
            f"    url={url!r}, events=['*'], signals=[{signal_slug!r}],",
            "    description='fault suite: webhook-worker-sigkill',",
            ")",
            "print(json.dumps({'id': created.endpoint.pk, 'secret': created.secret}))",
        ]
    )
    out = manage("shell", "-c", code, env=stack.env)
    created = json.loads(out.strip().splitlines()[-1])
    return int(created["id"]), str(created["secret"])


def _webhooks_worker_start(stack: FaultStack) -> Worker:
    """A worker of the `webhooks` queue alone, prefork as deployed (not one of the stack's
    workers: `problems()` counts those)."""
    worker = worker_start(
        env=stack.env,
        log_dir=stack.logs,
        concurrency=WEBHOOK_PROCESSES,
        queues=("webhooks",),
        pool="prefork",
    )
    worker.wait_ready(timeout=90)
    return worker


def _deliveries_pending(stack: FaultStack, endpoint_id: int) -> int:
    with stack.db() as conn:
        return int(
            conn.execute(
                "SELECT count(*) FROM events_app_webhookdelivery "
                "WHERE endpoint_id = %s AND status = 'pending'",
                [endpoint_id],
            ).fetchone()[0]
        )


def webhooks_check(
    stack: FaultStack,
    fault: str,
    *,
    endpoint_id: int,
    secret: str,
    received: list[Received],
    killed_in_flight: list[str],
    delivered_seconds: float,
) -> tuple[WebhookCounts, list[str]]:
    """The endpoint's deliveries against what the completed events owe, and what the receiver
    got against the deliveries; the counts and what is wrong (empty: nothing).

    Owed, per completed event of the fault's signal: one `event.completed`, and one
    `insight.created` when the event has an insight. The signal is a metric, so the pipeline
    announces no `state.changed`; and no event failed, so no `event.failed` is owed."""
    with stack.db() as conn:
        completed = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM events_app_event WHERE signal_id = %s AND status = 'completed'",
                [stack.signal_ids[fault]],
            ).fetchall()
        ]
        with_insight = {
            row[0]
            for row in conn.execute(
                "SELECT event_id FROM events_app_insight WHERE signal_id = %s",
                [stack.signal_ids[fault]],
            ).fetchall()
        }
        rows = conn.execute(
            "SELECT id, type, event_id, status, body FROM events_app_webhookdelivery "
            "WHERE endpoint_id = %s",
            [endpoint_id],
        ).fetchall()
    owed = {(event, "event.completed") for event in completed}
    owed |= {(event, "insight.created") for event in completed if event in with_insight}
    by_pair = Counter((row[2], row[1]) for row in rows)
    # The id a delivery is sent under (events_app.models.webhook_event_id), and its exact body.
    body_of = {f"whevt_{row[0].hex}": row[4].encode() for row in rows}
    owed_ids = {f"whevt_{row[0].hex}" for row in rows if (row[2], row[1]) in owed}

    problems: list[str] = []
    missing_rows = sorted(str(pair) for pair in owed if by_pair[pair] == 0)
    twice = sorted(str(pair) for pair, n in by_pair.items() if n > 1)
    unowed_rows = sorted(str(pair) for pair in by_pair if pair not in owed)
    unsent = [f"{row[0]} {row[1]}: {row[3]}" for row in rows if row[3] != "succeeded"]
    counts = Counter(r.json.get("id") for r in received)
    not_received = sorted(owed_ids - set(counts))
    strangers = sorted(str(i) for i in counts if i not in body_of)
    bad = []
    for r in received:
        webhook_id = r.json.get("id")
        header = r.headers.get(HEADER) or ""
        if (
            r.headers.get(ID_HEADER) != webhook_id
            or webhook_id not in body_of
            or r.body != body_of[webhook_id]
            or not verify(header, r.body, secret, now=r.received_at)
        ):
            bad.append(str(webhook_id))
    resent = [i for i in killed_in_flight if counts[i] > 1]

    if missing_rows:
        problems.append(f"{len(missing_rows)} owed delivery row(s) missing: {missing_rows[:5]}")
    if twice:
        problems.append(f"{len(twice)} (event, type) pair(s) with two rows: {twice[:5]}")
    if unowed_rows:
        problems.append(f"{len(unowed_rows)} delivery row(s) nobody owed: {unowed_rows[:5]}")
    if unsent:
        problems.append(f"{len(unsent)} delivery row(s) not succeeded: {unsent[:5]}")
    if not_received:
        problems.append(f"{len(not_received)} owed id(s) never received: {not_received[:5]}")
    if strangers:
        problems.append(f"{len(strangers)} id(s) received that no delivery has: {strangers[:5]}")
    if bad:
        problems.append(
            f"{len(bad)} request(s) not as stored or not verifying with the secret: {bad[:5]}"
        )
    if not killed_in_flight:
        problems.append("the sender was killed with no send in flight: the fault proved little")

    webhooks = WebhookCounts(
        owed=len(owed),
        received=len(received),
        distinct=len(counts),
        duplicates=len(received) - len(counts),
        lost=len(set(not_received) | set(missing_rows)) + len(unsent),
        not_owed=len(strangers) + len(unowed_rows),
        bad_signatures=len(bad),
        delivered_seconds=delivered_seconds,
        in_flight_at_kill=len(killed_in_flight),
        resent_after_kill=len(resent),
    )
    return webhooks, problems


def test_it_delivers_every_webhook_when_the_sender_is_killed_and_the_broker_restarts(
    stack: FaultStack,
) -> None:
    """Webhooks to a real receiver on 127.0.0.1 for every event of the load: SIGKILL the
    `webhooks` worker (its whole process group) while a send is in flight, start a new one, then
    restart the broker Redis (empty). Every delivery the completed events owe is written once,
    ends `succeeded`, and reaches the receiver, signed, at least once; a delivery received twice
    (at-least-once: the killed sender's, sent again once its claim's lease ran out) is counted,
    never one that is owed to nobody."""
    fault = "webhook-worker-sigkill"
    senders: list[Worker] = []
    endpoint_id = 0
    killed_in_flight: list[str] = []
    with receiver_running(delay=RECEIVER_DELAY) as receiver:
        try:
            endpoint_id, secret = _webhook_endpoint_create(
                stack, url=receiver.url, signal_slug=SIGNALS[fault]
            )
            senders.append(_webhooks_worker_start(stack))

            def inject(load: Load) -> str:
                victim = senders[-1]
                deadline = time.monotonic() + IN_FLIGHT_WAIT
                while not (in_flight := receiver.in_flight()) and time.monotonic() < deadline:
                    time.sleep(0.005)
                victim.kill_group()
                killed_in_flight.extend(in_flight)
                senders.append(_webhooks_worker_start(stack))
                try:
                    stack.broker.stop()
                    time.sleep(HOLD_SECONDS)
                finally:
                    stack.broker.start()
                return (
                    f"the webhooks worker SIGKILLed with {len(in_flight)} send(s) in flight, "
                    f"a new one started, the broker stopped for {HOLD_SECONDS:g} s"
                )

            result = fault_run(
                stack,
                fault=fault,
                description="SIGKILL the webhooks worker mid-send, start a new one; stop the "
                f"broker Redis for {HOLD_SECONDS:g} s, start it empty",
                inject=inject,
                events=WEBHOOK_EVENTS,
                rate=WEBHOOK_RATE,
            )
            deadline = time.monotonic() + WEBHOOK_TIMEOUT
            while _deliveries_pending(stack, endpoint_id) and time.monotonic() < deadline:
                time.sleep(0.25)
            delivered_seconds = time.time() - result.load_end
            # A send still being answered is recorded already; let it finish all the same.
            while receiver.in_flight() and time.monotonic() < deadline:
                time.sleep(0.05)
            with receiver.lock:
                received = list(receiver.received)
        finally:
            workers_stop(senders)
            if endpoint_id:
                # Later faults' events are of other signals; disabled all the same, so that
                # nothing is written for an endpoint that no worker sends to any more.
                with stack.db() as conn:
                    conn.execute(
                        "UPDATE events_app_webhookendpoint SET enabled = false WHERE id = %s",
                        [endpoint_id],
                    )

    webhooks, problems = webhooks_check(
        stack,
        fault,
        endpoint_id=endpoint_id,
        secret=secret,
        received=received,
        killed_in_flight=killed_in_flight,
        delivered_seconds=delivered_seconds,
    )
    row = result.row
    row.webhooks = webhooks
    row.notes = "; ".join(
        filter(
            None,
            [
                row.notes,
                f"{webhooks.duplicates} webhook(s) received twice or more, "
                f"{webhooks.resent_after_kill} of the {webhooks.in_flight_at_kill} in flight at "
                "the kill among them",
            ],
        )
    )
    path = row_write(stack.var_dir, row)
    print(f"{fault}: {webhooks}; row: {path}")
    assert not problems, f"{fault}: " + "; ".join(problems)

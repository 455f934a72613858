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

Every event is unique (a per-run, per-thread, per-event `reference`), no Idempotency-Key is
sent, so nothing is an idempotent replay; identities cycle through a pool (--identities) so
the CRM upsert mostly updates existing records, as in production. A batch holds the events a
single-event client would have sent one after another. Any non-2xx answer (for a batch: any
answer but 202, since 207 means some events were rejected) and any socket error counts as an
error.

The load generator is wrk with a generated Lua script when wrk is installed (apt-get install
wrk), otherwise a Python one (processes x threads, http.client). Its own CPU use is reported,
and its throughput against the bare view is the ceiling of what this machine can measure.

Only stdlib, psycopg and redis (both in requirements.txt) are used.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEMO_API_KEY = "sk_demo_local_only_not_for_production_000000"
HUGE_RATE_LIMIT = 100_000_000  # per minute: never reached, so no request is a 429
BROKER_QUEUE = "events.process"  # CELERY_TASK_ROUTES sends process_event(s) here
INGEST_BARE_TARGET = 0.5  # ingest requests/s at least half the bare view's
INGEST_BARE_INSERT_TARGET = 1.0  # ... and at least the bare+INSERT view's
INGEST_P99_TARGET_MS = 50.0  # ingest's p99 at --concurrency 16
BATCH_INGEST_TARGET = 5.0  # ingest-batch events/s at least 5 times ingest's
BASELINES = ("bare", "bare-insert")  # endpoints that store no event


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    signal: str
    data_template: str  # a JSON object; {n} becomes the event's sequence number
    auth: bool
    note: str
    batch_size: int = 0  # 0: the body is one event; n: {"events": [n events]}

    @property
    def events_per_request(self) -> int:
        return self.batch_size or 1

    def accepts(self, status: int) -> bool:
        """Whether an answer counts as a success (a batch only if every event was accepted)."""
        return status == 202 if self.batch_size else 200 <= status <= 299


ENDPOINTS = [
    Endpoint(
        "bare",
        "/bench/bare",
        "visited-documentation-page",
        '{{"page":"/docs/quickstart","duration_seconds":{n}}}',
        auth=False,
        note="bigmind/bench.py: read body, json.loads, 202",
    ),
    Endpoint(
        "bare-insert",
        "/bench/bare-insert",
        "visited-documentation-page",
        '{{"page":"/docs/quickstart","duration_seconds":{n}}}',
        auth=False,
        note="bigmind/bench.py: the bare view plus one autocommit INSERT of the body",
    ),
    Endpoint(
        "ingest",
        "/v1/events",
        "visited-documentation-page",
        '{{"page":"/docs/quickstart","duration_seconds":{n}}}',
        auth=True,
        note="signal without schema",
    ),
    Endpoint(
        "ingest-schema",
        "/v1/events",
        "api-calls",
        '{{"value":{n}}}',
        auth=True,
        note="signal with JSON Schema v1 (required number `value`)",
    ),
    Endpoint(
        "ingest-batch",
        "/v1/events/batch",
        "visited-documentation-page",
        '{{"page":"/docs/quickstart","duration_seconds":{n}}}',
        auth=True,
        note="100 events of `ingest`'s kind per request",
        batch_size=100,
    ),
]
ENDPOINTS_BY_NAME = {e.name: e for e in ENDPOINTS}


# --- small helpers ---------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# One event; the Lua script of wrk is generated from the same template (wrk_script).
EVENT_TEMPLATE = (
    '{{"signal":"{signal}","version":"latest","identity":{{"type":"account","id":"{identity}"}},'
    '"data":{data},"reference":"{reference}"}}'
)


def identity_for(offset: int, n: int, identities: int) -> str:
    return f"acct-{(offset + n) % identities:06d}"


def body_for(endpoint: Endpoint, prefix: str, offset: int, first: int, identities: int) -> bytes:
    """The body of one request: events first, first + 1, ... (one, or a batch of them).

    Event n has reference `{prefix}-{n}`, identity number (offset + n) % identities and n in its
    data, exactly as in the wrk script, so a batch holds the events that consecutive
    single-event requests of the same connection would have sent.
    """
    events = [
        EVENT_TEMPLATE.format(
            signal=endpoint.signal,
            identity=identity_for(offset, n, identities),
            data=endpoint.data_template.format(n=n),
            reference=f"{prefix}-{n}",
        )
        for n in range(first, first + endpoint.events_per_request)
    ]
    if not endpoint.batch_size:
        return events[0].encode()
    return ('{"events":[' + ",".join(events) + "]}").encode()


def headers_for(endpoint: Endpoint) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if endpoint.auth:
        headers["Authorization"] = f"Bearer {DEMO_API_KEY}"
    return headers


def post_once(port: int, endpoint: Endpoint, reference: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST",
            endpoint.path,
            body_for(endpoint, reference, offset=0, first=1, identities=1),
            headers_for(endpoint),
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- CPU accounting from /proc ---------------------------------------------------------------
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: str, *, reaped: bool = False) -> tuple[str, int, float] | None:
    """(comm, ppid, cpu seconds) of one process, or None if it is gone; with `reaped`, plus
    the CPU of its children that ended (a gunicorn master: workers it replaced)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is state (field 3); utime/stime are fields 14/15 of the file, cutime/cstime
    # (children waited for) 16/17.
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return comm, int(fields[1]), ticks / CLK_TCK


def cpu_snapshot(gunicorn_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of gunicorn (master + workers), PostgreSQL, Redis, and the machine."""
    totals = {"gunicorn": 0.0, "postgres": 0.0, "redis": 0.0}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        master = gunicorn_pid is not None and int(pid) == gunicorn_pid
        stat = _proc_stat(pid, reaped=master)
        if stat is None:
            continue
        comm, ppid, seconds = stat
        if gunicorn_pid is not None and (int(pid) == gunicorn_pid or ppid == gunicorn_pid):
            totals["gunicorn"] += seconds
        elif comm.startswith("postgres"):
            totals["postgres"] += seconds
        elif comm.startswith("redis-server"):
            totals["redis"] += seconds
    with open("/proc/stat") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts]
    # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
    values = (values + [0] * 8)[:8]
    totals["machine_busy"] = (sum(values) - values[3] - values[4] - values[7]) / CLK_TCK
    totals["steal"] = values[7] / CLK_TCK  # a noisy host taking the vCPU away
    totals["wall"] = time.monotonic()
    return totals


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- results ---------------------------------------------------------------------------------
@dataclass
class RunResult:
    endpoint: str
    round: int
    duration: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    loadgen_cpu: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    first_error: str = ""
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


# --- load generator: wrk ---------------------------------------------------------------------
WRK_LUA = r"""
-- generated by scripts/bench_ingest.py
local path = "%(path)s"
local run_id = "%(run_id)s"
local identities = %(identities)d
local auth = %(auth)s
local batch = %(batch)d  -- 0: the body is one event; n: {"events": [n events]}
-- format of one event; its %%s/%%d are, in this order: identity, data's number, reference
local event_format = '%(event_format)s'
local counter = 0  -- events of this thread so far
local non2xx = 0
local first_error = ""
local threads = {}
local next_tid = 0

local headers = { ["Content-Type"] = "application/json" }
if auth then headers["Authorization"] = "Bearer %(api_key)s" end

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

local function next_event()
  counter = counter + 1
  local identity = string.format("acct-%%06d", (tid * 7919 + counter) %% identities)
  local reference = string.format("%%s-%%d-%%d", run_id, tid, counter)
  return string.format(event_format, identity, counter, reference)
end

function request()
  local body
  if batch == 0 then
    body = next_event()
  else
    local events = {}
    for i = 1, batch do events[i] = next_event() end
    body = '{"events":[' .. table.concat(events, ",") .. ']}'
  end
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, body)
  -- a batch counts only if every event was accepted: 207 means some were rejected
  if status < 200 or status > 299 or (batch > 0 and status ~= 202) then
    non2xx = non2xx + 1
    if first_error == "" then first_error = status .. " " .. string.sub(body or "", 1, 300) end
  end
end

function done(summary, latency, requests)
  local bad, sample = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    local e = t:get("first_error")
    if sample == "" and e and e ~= "" then sample = e end
  end
  sample = string.gsub(sample, '[%%c"\\]', " ")  -- safe inside a JSON string
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%%d,"duration_us":%%d,"non2xx":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"first_error":"%%s"}\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), sample))
end
"""


def wrk_script(endpoint: Endpoint, run_id: str, identities: int, directory: Path) -> Path:
    event_format = EVENT_TEMPLATE.format(
        signal=endpoint.signal,
        identity="%s",
        data=endpoint.data_template.format(n="%d"),
        reference="%s",
    )
    script = WRK_LUA % {
        "path": endpoint.path,
        "run_id": run_id,
        "identities": identities,
        "auth": "true" if endpoint.auth else "false",
        "batch": endpoint.batch_size,
        "api_key": DEMO_API_KEY,
        "event_format": event_format,
    }
    target = directory / f"{endpoint.name}-{run_id}.lua"
    target.write_text(script)
    return target


def run_wrk(
    args: argparse.Namespace,
    port: int,
    endpoint: Endpoint,
    seconds: float,
    run_id: str,
    workdir: Path,
    procs: list[subprocess.Popen[str]],
) -> RunResult:
    script = wrk_script(endpoint, run_id, args.identities, workdir)
    threads = min(args.threads, args.concurrency)
    command = [
        args.wrk,
        "-t",
        str(threads),
        "-c",
        str(args.concurrency),
        "-d",
        f"{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{endpoint.path}",
    ]
    before = children_cpu()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    out, err = proc.communicate()  # on Ctrl-C, main() still finds and stops it in `procs`
    procs.remove(proc)
    loadgen_cpu = children_cpu() - before
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{out}\n{err}")
    data = json.loads(line[len("BENCH_JSON ") :])
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    first_error = data["first_error"]
    if socket_errors and not first_error:
        first_error = (
            f"socket errors: connect {data['connect']}, read {data['read']}, "
            f"write {data['write']}, timeout {data['timeout']}"
        )
    return RunResult(
        endpoint=endpoint.name,
        round=0,
        duration=data["duration_us"] / 1e6,
        requests=data["requests"],
        errors=data["non2xx"] + socket_errors,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        loadgen_cpu=loadgen_cpu,
        first_error=first_error,
    )


# --- load generator: Python (fallback) -------------------------------------------------------
def _py_worker(
    port: int,
    endpoint_name: str,
    seconds: float,
    run_id: str,
    identities: int,
    threads: int,
    proc_index: int,
    queue: Any,
) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)  # the parent stops us; no tracebacks
    endpoint = ENDPOINTS_BY_NAME[endpoint_name]
    headers = headers_for(endpoint)
    per_request = endpoint.events_per_request
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    counts = {"requests": 0, "errors": 0}
    first_error: list[str] = []
    lock = threading.Lock()

    def loop(tid: int) -> None:
        local_lat: list[float] = []
        requests = errors = 0
        n = 1  # this thread's next event
        prefix = f"{run_id}-{proc_index}.{tid}"
        offset = tid * 7919 + proc_index * 104729
        conn: http.client.HTTPConnection | None = None
        while time.monotonic() < deadline:
            body = body_for(endpoint, prefix, offset, n, identities)
            n += per_request
            started = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("POST", endpoint.path, body, headers)
                response = conn.getresponse()
                payload = response.read()
                status = response.status
                if response.will_close:  # gunicorn's sync workers close after every response
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                status, payload = 0, repr(exc).encode()
                if conn is not None:
                    conn.close()
                conn = None
            local_lat.append(time.perf_counter() - started)
            requests += 1
            if not endpoint.accepts(status):
                errors += 1
                if not first_error:
                    first_error.append(f"{status} {payload[:300].decode(errors='replace')}")
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(local_lat)
            counts["requests"] += requests
            counts["errors"] += errors

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put(
        {
            "latencies": latencies,
            **counts,
            "first_error": first_error[0] if first_error else "",
            "cpu": usage.ru_utime + usage.ru_stime,
        }
    )


def run_python(
    args: argparse.Namespace, port: int, endpoint: Endpoint, seconds: float, run_id: str
) -> RunResult:
    procs_n = max(1, min(args.threads, args.concurrency))
    per_proc = [
        args.concurrency // procs_n + (1 if i < args.concurrency % procs_n else 0)
        for i in range(procs_n)
    ]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=_py_worker,
            args=(port, endpoint.name, seconds, run_id, args.identities, per_proc[i], i, queue),
        )
        for i in range(procs_n)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.daemon = True  # never outlive the benchmark
        proc.start()
    try:
        parts = [queue.get() for _ in procs]
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    duration = time.monotonic() - started
    latencies = sorted(x for part in parts for x in part["latencies"])

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return RunResult(
        endpoint=endpoint.name,
        round=0,
        duration=duration,
        requests=sum(p["requests"] for p in parts),
        errors=sum(p["errors"] for p in parts),
        p50_ms=pct(50),
        p99_ms=pct(99),
        loadgen_cpu=sum(p["cpu"] for p in parts),
        first_error=next((p["first_error"] for p in parts if p["first_error"]), ""),
    )


# --- setup -----------------------------------------------------------------------------------
def bench_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "bigmind.settings",
            "DJANGO_DEBUG": "false",  # DEBUG keeps every SQL query in memory: never benchmark it
            "DJANGO_SECRET_KEY": "bench-only-secret-key-not-for-production-0123456789abcdef",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": args.database_url,
            "REDIS_URL": args.redis_url,
            "CELERY_BROKER_URL": args.broker_url,
            "BIGMIND_BENCHMARK_ENDPOINTS": "true",
            "BIGMIND_RATE_LIMIT_EVENT": str(HUGE_RATE_LIMIT),
            "BIGMIND_RATE_LIMIT_METRIC": str(HUGE_RATE_LIMIT),
            "BIGMIND_RATE_LIMIT_STATE": str(HUGE_RATE_LIMIT),
            "BIGMIND_VAR_DIR": str(ROOT / "var" / "bench"),
            "LOG_LEVEL": "WARNING",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.pop("CACHE_URL", None)  # REDIS_URL must be the cache
    return env


def database_prepare(args: argparse.Namespace) -> None:
    import psycopg
    from psycopg import sql

    url = urlsplit(args.database_url)
    name = unquote(url.path.lstrip("/"))
    if not name:
        raise SystemExit("--database-url must name a database")
    conninfo: dict[str, Any] = {
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "user": unquote(url.username or "postgres"),
        "dbname": "postgres",
    }
    if url.password:
        conninfo["password"] = unquote(url.password)
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and args.reset:
            if "bench" not in name:
                raise SystemExit(f"--reset drops the database; refusing for {name!r} (no 'bench')")
            log(f"dropping database {name} (--reset)")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = None
        if not exists:
            log(f"creating database {name}")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def bench_table_prepare(args: argparse.Namespace) -> None:
    """The table the bare+INSERT view writes to (bigmind/bench.py), emptied."""
    import psycopg

    sys.path.insert(0, str(ROOT))
    from bigmind.bench import BENCH_INSERT_DDL, BENCH_INSERT_TABLE

    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(BENCH_INSERT_DDL)
        conn.execute(f"TRUNCATE {BENCH_INSERT_TABLE}")


def manage(env: dict[str, str], *command: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def db_counts(args: argparse.Namespace) -> int:
    import psycopg

    with psycopg.connect(args.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM events_app_event").fetchone()
        return int(row[0]) if row else 0


def db_counts_by_run(args: argparse.Namespace, run_id: str) -> dict[str, int]:
    """Events stored per run of this benchmark, from their references ({ref}-{thread}-{n})."""
    import psycopg

    with psycopg.connect(args.database_url) as conn:
        rows = conn.execute(
            "SELECT substring(reference from '^(.*)-[0-9.]+-[0-9]+$') AS ref, count(*) "
            "FROM events_app_event WHERE reference LIKE %s GROUP BY ref",
            (f"{run_id}-%",),
        ).fetchall()
    return {str(ref): int(count) for ref, count in rows if ref is not None}


def broker_client(args: argparse.Namespace) -> Any:
    import redis

    return redis.Redis.from_url(args.broker_url)


def broker_depth(client: Any) -> int:
    return sum(int(client.llen(key)) for key in client.scan_iter(f"{BROKER_QUEUE}*"))


def server_description(args: argparse.Namespace) -> str:
    """How gunicorn runs: bigmind/gunicorn_conf.py's defaults unless --workers/--server-threads."""
    workers = args.workers if args.workers else "default"
    threads = getattr(args, "server_threads", None) or "default"
    return f"gunicorn -c bigmind/gunicorn_conf.py (workers {workers}, threads {threads})"


def start_gunicorn(
    args: argparse.Namespace, env: dict[str, str], port: int, logfile: Path
) -> subprocess.Popen[bytes]:
    # As docs/deployment.md runs it: the project's configuration file, with only the address,
    # the log and the listen backlog given here (command-line options override the file).
    server_env = dict(env)
    server_env["GUNICORN_BIND"] = f"127.0.0.1:{port}"
    server_env["GUNICORN_LOG_LEVEL"] = "warning"
    if args.workers:
        server_env["WEB_CONCURRENCY"] = str(args.workers)
    threads = getattr(args, "server_threads", None)
    if threads:
        server_env["GUNICORN_THREADS"] = str(threads)
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        str(ROOT / "bigmind" / "gunicorn_conf.py"),
        args.app,
        "--backlog",
        "2048",
        "--error-logfile",
        str(logfile),
    ]
    log(f"starting {server_description(args)} on 127.0.0.1:{port}")
    handle = open(logfile, "ab")  # noqa: SIM115 (kept open for the server's lifetime)
    # A session of its own: Ctrl-C in the terminal reaches only us, and we stop it in order.
    return subprocess.Popen(
        command, cwd=ROOT, env=server_env, stdout=handle, stderr=handle, start_new_session=True
    )


def stop_gunicorn(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping gunicorn (pid {proc.pid})")
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text()[-3000:]
            raise RuntimeError(f"gunicorn exited ({proc.returncode}):\n{tail}")
        try:
            status, _ = post_once(port, ENDPOINTS_BY_NAME["bare"], "ready")
            if status == 202:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within 30 s:\n{logfile.read_text()[-3000:]}")


def machine_description() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": f"{os.cpu_count()} CPU ({model})",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def versions(args: argparse.Namespace) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        import django
        import gunicorn

        found["django"] = django.get_version()
        found["gunicorn"] = gunicorn.__version__
    except ImportError:
        pass
    try:
        import psycopg

        with psycopg.connect(args.database_url) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            found["postgresql"] = str(row[0]) if row else "?"
    except Exception as exc:  # informational only
        log(f"PostgreSQL version unknown: {exc}")
    try:
        import redis

        found["redis"] = str(redis.Redis.from_url(args.redis_url).info("server")["redis_version"])
    except Exception as exc:
        log(f"Redis version unknown: {exc}")
    if args.loadgen == "wrk":
        out = subprocess.run([args.wrk, "--version"], capture_output=True, text=True)
        found["wrk"] = (out.stdout or out.stderr).split("\n")[0].split(" Copyright")[0]
    return found


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
        f"concurrency {args.concurrency}, {server_description(args)}, "
        f"load generator: {args.loadgen})"
    )
    out.append("")
    out.append(
        f"Machine: {machine['cpu']}, {machine['memory']}, {machine['os']}, "
        f"Python {machine['python']}, load average at start {machine['load']}"
    )
    out.append("Software: " + ", ".join(f"{k} {v}" for k, v in found.items()))
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
    return ratios


# --- main ------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],  # type: ignore[union-attr]
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2", help="the cache")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/3", help="Celery broker")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="gunicorn worker processes (0: bigmind/gunicorn_conf.py's default)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="threads per gunicorn worker (0: bigmind/gunicorn_conf.py's default)",
    )
    parser.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=16,
        help="open connections of the load generator",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=min(2, cores),
        help="load generator threads (wrk -t) or processes (Python)",
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
    os.chdir(ROOT)
    env = bench_env(args)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")})
    machine = machine_description()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Also when started from a non-interactive shell, which ignores SIGINT in background jobs.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)

    gunicorn: subprocess.Popen[bytes] | None = None
    loadgens: list[subprocess.Popen[str]] = []
    broker = broker_client(args)
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    logfile = workdir / "gunicorn.log"
    try:
        if not args.skip_setup:
            database_prepare(args)
            log("migrating")
            manage(env, "migrate", "--noinput")
            log("bootstrap_demo --allow-production")
            manage(env, "bootstrap_demo", "--allow-production")
            bench_table_prepare(args)
        found = versions(args)
        port = args.port or free_port()
        gunicorn = start_gunicorn(args, env, port, logfile)
        wait_ready(gunicorn, port, logfile)

        run_id = uuid.uuid4().hex[:10]
        for name in args.names:
            endpoint = ENDPOINTS_BY_NAME[name]
            status, body = post_once(port, endpoint, f"{run_id}-check-{name}")
            if status != 202:
                raise RuntimeError(f"{name}: {endpoint.path} answered {status}: {body[:500]!r}")
        log("all endpoints answer 202")

        events_before = db_counts(args)
        queue_before = broker_depth(broker)

        def one_run(name: str, seconds: float, tag: str) -> RunResult:
            endpoint = ENDPOINTS_BY_NAME[name]
            rid = f"{run_id}-{tag}"
            before_cpu = cpu_snapshot(gunicorn.pid if gunicorn else None)
            if args.loadgen == "wrk":
                result = run_wrk(args, port, endpoint, seconds, rid, workdir, loadgens)
            else:
                before_self = self_cpu()
                result = run_python(args, port, endpoint, seconds, rid)
                result.loadgen_cpu += self_cpu() - before_self
            after_cpu = cpu_snapshot(gunicorn.pid if gunicorn else None)
            result.cpu = {k: after_cpu[k] - before_cpu[k] for k in after_cpu}
            result.ref = rid
            if gunicorn and gunicorn.poll() is not None:
                raise RuntimeError(f"gunicorn died:\n{logfile.read_text()[-3000:]}")
            return result

        warm: list[RunResult] = []
        if args.warmup > 0:
            log(f"warming up {args.warmup:g} s per endpoint")
            warm = [one_run(name, args.warmup, f"warm-{name}") for name in args.names]
        results: list[RunResult] = []
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(args.names)
            order = args.names[shift:] + args.names[:shift]
            for name in order:
                log(f"round {rnd}/{args.rounds}: {name} for {args.duration:g} s")
                result = one_run(name, args.duration, f"r{rnd}-{name}")
                result.round = rnd
                log(
                    f"  {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                    f"p99 {result.p99_ms:.1f} ms, errors {result.errors}"
                )
                results.append(result)

        # Integrity: every accepted ingest request stored its events (1, or all of a batch's)
        # and published one message (a batch's events go in one message).
        time.sleep(0.5)
        ingest_runs = [r for r in warm + results if r.endpoint not in BASELINES]
        accepted = sum(r.ok for r in ingest_runs)
        accepted_events = sum(r.ok * r.per_request for r in ingest_runs)
        stored = db_counts(args) - events_before
        published = broker_depth(broker) - queue_before
        checks = [
            f"Integrity: {accepted} ingest requests answered as accepted, holding "
            f"{accepted_events} events; {stored} events stored; {published} messages published "
            f"to {BROKER_QUEUE} (coalesced wake-ups: with no worker to start them, about one "
            "per BIGMIND_WAKEUP_TTL_SECONDS, plus one per batch request; stored may exceed "
            "accepted by the requests in flight when a run stops)."
        ]
        # wrk stops counting at the deadline, but the requests in flight then (at most one per
        # connection and run) are still served and stored. Per run: the stored events are
        # whole requests (a batch is all or nothing), at least the accepted ones and at most
        # one more request per connection; each of those requests published one message.
        by_run = db_counts_by_run(args, run_id)
        problems = []
        stored_requests = 0
        for r in ingest_runs:
            got, size = by_run.get(r.ref, 0), r.per_request
            low, high = r.ok * size, (r.ok + args.concurrency) * size
            if got % size or not low <= got <= high:
                problems.append(f"{r.ref}: {got} events stored, expected {low}-{high}")
            stored_requests += got // size
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
        if problems:
            checks.append(
                "WARNING: stored events, published messages and accepted requests disagree "
                f"beyond the requests in flight when runs end: {'; '.join(problems[:5])}. "
                f"See the gunicorn log {logfile} (a failed publish is logged, not answered "
                "as an error)."
            )
        log_errors = [
            ln
            for ln in logfile.read_text(errors="replace").splitlines()
            if " ERROR " in ln or "Traceback" in ln
        ]
        if log_errors:
            checks.append(
                f"gunicorn log has {len(log_errors)} error lines, first: "
                f"{log_errors[0][:200]} (log: {logfile})"
            )
        ratios = print_report(args, results, args.names, machine, found, checks)
        print()
        if "ingest/bare" in ratios:
            ratio = ratios["ingest/bare"]
            verdict = "meets" if ratio >= INGEST_BARE_TARGET else "does NOT meet"
            print(
                f"Ingest/bare ratio {ratio:.2f}: {verdict} the target of "
                f">= {INGEST_BARE_TARGET:.2f}."
            )
        if "ingest/bare-insert" in ratios:
            ratio = ratios["ingest/bare-insert"]
            verdict = "meets" if ratio >= INGEST_BARE_INSERT_TARGET else "does NOT meet"
            print(
                f"Ingest/bare-insert ratio {ratio:.2f}: {verdict} the target of "
                f">= {INGEST_BARE_INSERT_TARGET:.2f}."
            )
        if "ingest p99" in ratios:
            p99 = ratios["ingest p99"]
            verdict = "meets" if p99 <= INGEST_P99_TARGET_MS else "does NOT meet"
            print(
                f"Ingest p99 {p99:.1f} ms at {args.concurrency} connections: {verdict} the "
                f"target of <= {INGEST_P99_TARGET_MS:g} ms."
            )
        if "batch/ingest" in ratios:
            ratio = ratios["batch/ingest"]
            verdict = "meets" if ratio >= BATCH_INGEST_TARGET else "does NOT meet"
            print(
                f"Batch/single events/s ratio {ratio:.1f}x (ingest-batch ÷ ingest, same run): "
                f"{verdict} the target of >= {BATCH_INGEST_TARGET:g}x."
            )
        elif "ingest-batch" in args.names:
            print("Batch/single ratio: needs `ingest` in the same run (--endpoints).")
        return 0
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        for proc in list(loadgens):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stop_gunicorn(gunicorn)
        if not args.keep_queue:
            try:
                keys = list(broker.scan_iter(f"{BROKER_QUEUE}*"))
                if keys:
                    broker.delete(*keys)
                    log(f"deleted the benchmark's messages from {args.broker_url} {BROKER_QUEUE}")
            except Exception as exc:
                log(f"could not empty the broker queue: {exc}")
        log_text = logfile.read_text(errors="replace") if logfile.exists() else ""
        # Plain-text and JSON (LOG_FORMAT=json, the default) log lines.
        if "Traceback" in log_text or " ERROR " in log_text or '"level": "ERROR"' in log_text:
            log(f"kept the gunicorn log: {logfile}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

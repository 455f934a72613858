"""The service under test, started for one benchmark run and stopped again: its environment,
its PostgreSQL database, gunicorn as docs/deployment.md runs it, Celery workers, the broker."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO_API_KEY = "sk_demo_local_only_not_for_production_000000"
HUGE_RATE_LIMIT = 100_000_000  # per minute: never reached, so no request is a 429
BROKER_QUEUE = "events.process"  # CELERY_TASK_ROUTES sends process_event(s) here
WORKER_QUEUES = "events.process,default"

_log_tag = "bench"
_log_clock = False


def set_log_tag(tag: str, *, clock: bool = False) -> None:
    """How the script's progress lines on stderr start: `[tag]`, or `[tag HH:MM:SS]`."""
    global _log_tag, _log_clock
    _log_tag, _log_clock = tag, clock


def code_root(args: argparse.Namespace) -> Path:
    """The checkout whose code runs: this one, or `args.root` (scripts/bench_compare.py runs a
    baseline's code from a worktree of its own with this checkout's harness)."""
    return Path(getattr(args, "root", None) or ROOT)


def log(message: str) -> None:
    tag = f"{_log_tag} {time.strftime('%H:%M:%S')}" if _log_clock else _log_tag
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def headers(*, auth: bool) -> dict[str, str]:
    found = {"Content-Type": "application/json"}
    if auth:
        found["Authorization"] = f"Bearer {DEMO_API_KEY}"
    return found


def post(
    port: int, path: str, body: bytes, *, auth: bool = True, timeout: float = 30
) -> tuple[int, bytes]:
    """One POST on a connection of its own: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body, headers(auth=auth))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def trap_signals() -> None:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so the run stops what it started;
    also when started from a non-interactive shell, which ignores SIGINT in background jobs."""

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)


# --- environment and database ----------------------------------------------------------------
def bench_env(args: argparse.Namespace, var_dir: str = "bench") -> dict[str, str]:
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
            "BIGMIND_VAR_DIR": str(code_root(args) / "var" / var_dir),
            "LOG_LEVEL": "WARNING",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    env.pop("CACHE_URL", None)  # REDIS_URL must be the cache
    return env


def database_prepare(args: argparse.Namespace) -> None:
    """Create the database if it is missing; with `args.reset`, drop it first."""
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


def manage(env: dict[str, str], *command: str, root: Path = ROOT) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


# --- gunicorn --------------------------------------------------------------------------------
def server_description(args: argparse.Namespace) -> str:
    """How gunicorn runs: bigmind/gunicorn_conf.py's defaults unless --workers/--server-threads."""
    workers = args.workers if args.workers else "default"
    threads = getattr(args, "server_threads", None) or "default"
    return f"gunicorn -c bigmind/gunicorn_conf.py (workers {workers}, threads {threads})"


def gunicorn_start(
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
        str(code_root(args) / "bigmind" / "gunicorn_conf.py"),
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
        command,
        cwd=code_root(args),
        env=server_env,
        stdout=handle,
        stderr=handle,
        start_new_session=True,
    )


def gunicorn_stop(proc: subprocess.Popen[bytes] | None) -> None:
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


def gunicorn_wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: Path) -> None:
    """Until the bare view answers 202 (bigmind/bench.py)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text()[-3000:]
            raise RuntimeError(f"gunicorn exited ({proc.returncode}):\n{tail}")
        try:
            status, _ = post(port, "/bench/bare", b'{"ready":1}', auth=False, timeout=10)
            if status == 202:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gunicorn did not answer within 30 s:\n{logfile.read_text()[-3000:]}")


# --- Celery workers and the broker -----------------------------------------------------------
@dataclass
class Worker:
    """One `celery worker` in a session of its own (main process and pool children)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    processes: int
    handle: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_errors(self) -> list[str]:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]

    def alive(self) -> None:
        """Raise if the worker has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # warm shutdown: finish the task in hand
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # pool children left behind, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.handle.close()


def worker_start(
    args: argparse.Namespace, env: dict[str, str], processes: int, workdir: Path, tag: str
) -> Worker:
    """`celery -A <args.celery_app> worker` as docs/operations.md runs it; prefork: one worker
    with `processes` pool processes; solo (`args.pool`): `processes` must be 1."""
    log_path = workdir / f"worker-{tag}.log"
    command = [sys.executable, "-m", "celery", "-A", args.celery_app, "worker", "-Q"]
    command.append(WORKER_QUEUES)
    if args.pool == "solo":
        assert processes == 1
        command += ["--pool", "solo"]
    else:
        command += ["--pool", "prefork", "--concurrency", str(processes)]
    command += [
        "--without-mingle",  # start-up only: no other worker to sync with
        "-n",
        f"bench-{tag}-{uuid.uuid4().hex[:6]}@%h",
        "--loglevel",
        "WARNING",
    ]
    handle = open(log_path, "ab")  # noqa: SIM115 (kept open for the worker's lifetime)
    log(f"starting worker {tag}: {args.pool}, {processes} process(es)")
    process = subprocess.Popen(
        command,
        cwd=code_root(args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=handle,
        start_new_session=True,
    )
    return Worker(process=process, log_path=log_path, processes=processes, handle=handle)


def broker_client(args: argparse.Namespace) -> Any:
    import redis

    return redis.Redis.from_url(args.broker_url)


def broker_depth(broker: Any) -> int:
    """Messages waiting in the events.process queue(s)."""
    return sum(int(broker.llen(key)) for key in broker.scan_iter(f"{BROKER_QUEUE}*"))


def broker_messages(broker: Any) -> tuple[int, int]:
    """(messages waiting in events.process*, messages delivered but not acknowledged)."""
    return broker_depth(broker), int(broker.hlen("unacked"))


def broker_consumers(broker: Any, db: int) -> int:
    """Clients of the broker database blocked in BRPOP: a worker waiting for messages."""
    return sum(
        1 for c in broker.client_list() if str(c.get("db")) == str(db) and c.get("cmd") == "brpop"
    )


def broker_queue_delete(broker: Any) -> int:
    """Delete the events.process queue(s) (no worker will consume them); how many keys."""
    keys = list(broker.scan_iter(f"{BROKER_QUEUE}*"))
    if keys:
        broker.delete(*keys)
    return len(keys)


def workers_alive(workers: list[Worker]) -> None:
    for worker in workers:
        worker.alive()


def broker_wait_consumers(
    broker: Any, db: int, workers: list[Worker], count: int, timeout: float
) -> None:
    """Until `count` clients wait for messages (a started worker is ready)."""
    deadline = time.monotonic() + timeout
    while broker_consumers(broker, db) < count:
        workers_alive(workers)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers are not waiting for messages after {timeout:g} s")
        time.sleep(0.1)


def broker_wait_empty(broker: Any, workers: list[Worker], timeout: float) -> int:
    """Wait until no message waits or is unacknowledged; returns how many waited at first.

    With the project's pipeline none is left once every event is completed. A what-if
    pipeline that claims events ahead of their messages leaves those messages behind, to be
    consumed (as no-ops) before the next phase starts.
    """
    first = sum(broker_messages(broker))
    deadline = time.monotonic() + timeout
    while sum(broker_messages(broker)):
        workers_alive(workers)
        if time.monotonic() > deadline:
            raise RuntimeError(f"messages still in the broker after {timeout:g} s")
        time.sleep(0.2)
    return first


# --- one run ---------------------------------------------------------------------------------
GOVERNANCE_SIGNALS = Path(__file__).with_name("governance_signals.yaml")


class Stack:
    """What one run starts: a work directory for the logs, gunicorn, Celery workers; `close()`
    stops them all (call it in a `finally`) and removes the work directory unless told to keep
    it. Creating it changes to the project root, exports the benchmark's database, cache and
    broker URLs and traps the signals that should stop the run (`trap_signals`)."""

    def __init__(self, args: argparse.Namespace, name: str, var_dir: str = "bench") -> None:
        self.args = args
        os.chdir(ROOT)
        self.env = bench_env(args, var_dir)
        os.environ.update(
            {k: self.env[k] for k in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        )
        trap_signals()
        self.broker = broker_client(args)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.gunicorn_log = self.workdir / "gunicorn.log"
        self.gunicorn: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.workers: list[Worker] = []  # running
        self.all_workers: list[Worker] = []  # ever started: their logs are checked

    def prepare_database(self) -> None:
        """Create (or with --reset recreate) the database, migrate it, add the demo data."""
        database_prepare(self.args)
        log("migrating")
        root = code_root(self.args)
        manage(self.env, "migrate", "--noinput", root=root)
        log("bootstrap_demo --allow-production")
        manage(self.env, "bootstrap_demo", "--allow-production", root=root)
        # The governance benchmark's signals (harmless to the others: nothing sends to them).
        manage(self.env, "sync_signals", str(GOVERNANCE_SIGNALS), root=root)

    def start_gunicorn(self) -> int:
        """Start gunicorn on --port (or a free one) and wait until it answers; its port."""
        self.port = getattr(self.args, "port", 0) or free_port()
        self.gunicorn = gunicorn_start(self.args, self.env, self.port, self.gunicorn_log)
        gunicorn_wait_ready(self.gunicorn, self.port, self.gunicorn_log)
        return self.port

    def gunicorn_alive(self) -> None:
        """Raise if gunicorn has exited."""
        if self.gunicorn is not None and self.gunicorn.poll() is not None:
            raise RuntimeError(f"gunicorn died:\n{self.gunicorn_log.read_text()[-3000:]}")

    def gunicorn_log_errors(self) -> list[str]:
        if not self.gunicorn_log.exists():
            return []
        text = self.gunicorn_log.read_text(errors="replace")
        return [ln for ln in text.splitlines() if " ERROR " in ln or "Traceback" in ln]

    def start_workers(self, processes: int, tag: str) -> list[Worker]:
        """prefork: one worker of `processes` pool processes; solo: `processes` workers."""
        if self.args.pool == "solo":
            group = [
                worker_start(self.args, self.env, 1, self.workdir, f"{tag}{i}")
                for i in range(processes)
            ]
        else:
            group = [worker_start(self.args, self.env, processes, self.workdir, tag)]
        self.workers.extend(group)
        self.all_workers.extend(group)
        return group

    def stop_workers(self, group: list[Worker]) -> None:
        for worker in group:
            worker.stop()
            self.workers.remove(worker)

    def logs(self) -> list[Path]:
        return [self.gunicorn_log, *(w.log_path for w in self.all_workers)]

    def logs_have_errors(self) -> bool:
        """Whether a log has an error: plain-text and JSON (LOG_FORMAT=json, the default)."""
        for path in self.logs():
            text = path.read_text(errors="replace") if path.exists() else ""
            if "Traceback" in text or " ERROR " in text or '"level": "ERROR"' in text:
                return True
        return False

    def close(self, *, keep_logs: bool = False) -> None:
        """Stop the workers and gunicorn; keep the logs if told to or if they have errors."""
        self.stop_workers(list(self.workers))
        gunicorn_stop(self.gunicorn)
        if keep_logs or self.logs_have_errors():
            log(f"kept the logs in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

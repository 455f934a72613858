"""The processes the tests start, in one place (a pytest plugin: tests/conftest.py lists it).

- pytest-xdist: the tests that must not run beside each other share one xdist worker; names two
  workers must not share get `xdist_suffix()` (the rest of the isolation is tests/settings.py's).
- Processes: `free_port`, `wait_for`, `Service` (a long-running process in its own group),
  `manage` (a management command in a subprocess).
- Celery: `worker_start` / `Worker` (a real `celery worker`), `beat_start`, `SlowProcessor`, and
  the `celery_stack` fixture (PostgreSQL and a network broker, queues purged around the test).
- gunicorn: `Gunicorn` (the app on a database of its own, seeded, on a free port) and
  `gunicorn_start` (the app on a given stack: the fault suite's).
- A raw-socket HTTP client that sends exactly the bytes it is given.
- Private PostgreSQL and Redis servers that the fault suite stops, restarts and freezes.
- `spend`: run in spawned processes by the rate-limit counter tests.

Nothing here imports Django at import time: Celery workers import `SlowProcessor` from this module
through the BIGMIND_PROCESSOR setting, spawned processes import `spend`, and gunicorn's seed runs
`seed` in `manage.py shell`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = REPO_ROOT / "bigmind" / "gunicorn_conf.py"


# --- pytest-xdist: one worker's share of the machine -------------------------------------------
def xdist_worker() -> str:
    """This process's pytest-xdist worker id ("gw0", "gw1"...), or "" outside xdist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "")


def xdist_suffix() -> str:
    """`_gw0`... under xdist, else "": for names (databases, files) that workers must not share."""
    worker = xdist_worker()
    return f"_{worker}" if worker else ""


# Before xdist's own hook, which turns the group into the suffix of the test's id.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`), tests that must not run beside each other share
    one worker: the real Celery workers (an amqp:// broker is one set of queues for all xdist
    workers) and the fault suite (one private stack, broken on purpose)."""
    for item in items:
        if item.get_closest_marker("fault") is not None:
            item.add_marker(pytest.mark.xdist_group("fault"))
        elif item.get_closest_marker("worker") is not None:
            item.add_marker(pytest.mark.xdist_group("celery-workers"))


# --- Processes ---------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for: {text}")
        time.sleep(interval)


def children_of(pid: int) -> list[int]:
    """The live child processes of `pid` (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            # The command name may hold spaces and parentheses: fields start after the last ')'.
            fields = stat[stat.rindex(")") + 2 :].split()
            state, ppid = fields[0], int(fields[1])
            if ppid == pid and state != "Z":
                found.append(int(entry.name))
        return sorted(found)
    try:
        return sorted(child.pid for child in psutil.Process(pid).children())
    except psutil.NoSuchProcess:
        return []


class Service:
    """A long-running process of the app (gunicorn, celery beat) in its own process group."""

    def __init__(self, name: str, command: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._log_file.close()


def cpu_ticks(pid: int) -> int:
    """A process's CPU time so far (utime + stime, in clock ticks); -1 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def manage(*args: str, env: Mapping[str, str], stdin: str | None = None) -> str:
    """Run a management command against the private stack; its stdout."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), *args],
        cwd=REPO_ROOT,
        env=dict(env),
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"manage.py {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
        )
    return result.stdout.decode()


# --- Celery ------------------------------------------------------------------------------------
QUEUES = ("default", "events.process", "webhooks")
# How long SlowProcessor sleeps before answering (seconds, a float).
SLOW_DELAY_ENV = "BIGMIND_TEST_PROCESSOR_DELAY_SECONDS"
SLOW_PROCESSOR = "tests.harness.SlowProcessor"


class SlowProcessor:
    """The local processor, only slower: a window in which a test can kill the worker."""

    name = "slow-local"

    def __init__(self) -> None:
        from events_app.pipeline.processors.local import LocalProcessor

        self._local = LocalProcessor()
        self.version = self._local.version
        self.delay = float(os.environ.get(SLOW_DELAY_ENV, "2"))

    def insight(self, job: Any) -> Any:
        time.sleep(self.delay)
        return self._local.insight(job)


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL naming the database pytest-django created (its NAME, not the original)."""
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    name = quote(str(settings_dict["NAME"]), safe="")
    return f"postgres://{credentials}{host}:{port}/{name}"


@dataclass
class Worker:
    """One `celery worker` process group."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"worker {self.name} exited with {self.process.returncode}:\n{self.log()}"
                )
            return " ready." in self.log()

        wait_for(ready, timeout=timeout, interval=0.1, message=f"worker {self.name} to be ready")

    def pool_children(self) -> list[int]:
        return children_of(self.pid)

    def kill_pool_child(self) -> int:
        """SIGKILL the prefork child (there is one with `-c 1`); returns its pid."""
        children = self.pool_children()
        assert len(children) == 1, f"expected one pool process under {self.pid}, got {children}"
        os.kill(children[0], signal.SIGKILL)
        return children[0]

    def kill_group(self) -> None:
        """SIGKILL the whole worker at once (main process and pool), as a lost machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL whatever is left."""
        if self.alive():
            try:
                self.process.send_signal(signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        # The group too: pool children outlive a main process that was killed.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        # A process stuck in uninterruptible sleep must not hang the teardown.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self._log_file.close()

    def count(self, text: str) -> int:
        return self.log().count(text)

    def received(self, task: str) -> int:
        """How many messages of this task the worker received (from its INFO log)."""
        return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] received", self.log()))


def workers_stop(workers: list[Worker]) -> None:
    """Warm shutdown of all at once (each takes a couple of seconds), then kill what is left."""
    for worker in workers:
        if worker.alive():
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.stop()


def worker_start(
    *,
    env: Mapping[str, str],
    log_dir: Path,
    concurrency: int = 1,
    queues: tuple[str, ...] = QUEUES,
    pool: str = "prefork",
) -> Worker:
    """Start a worker (not waiting for it to be ready: see Worker.wait_ready)."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"{name}.log"
    log_file = log_path.open("wb")
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bigmind",
        "worker",
        "-Q",
        ",".join(queues),
        "--pool",
        pool,
        "-c",
        str(concurrency),
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
        "-n",
        f"{name}@%h",
        "--loglevel",
        "INFO",
    ]
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        # Its own process group, so that teardown can kill the pool children with it.
        start_new_session=True,
    )
    return Worker(name=name, process=process, log_path=log_path, _log_file=log_file)


def beat_start(*, env: Mapping[str, str], log: Path, schedule: Path) -> Service:
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bigmind",
        "beat",
        "--schedule",
        str(schedule),
        "--loglevel",
        "INFO",
    ]
    service = Service("beat", command, env, log)
    wait_for(
        lambda: "beat: Starting..." in service.text() or not service.alive(),
        timeout=60,
        interval=0.2,
        message="celery beat to start",
    )
    assert service.alive(), f"celery beat exited:\n{service.text()}"
    return service


def broker_purge() -> None:
    """Empty the worker queues: leftovers of earlier tests must not reach a test's workers."""
    from bigmind.celery import app as celery_app

    with celery_app.connection_for_write() as conn:
        for queue in celery_app.conf.task_queues:
            if queue.name in QUEUES:
                simple = conn.SimpleQueue(queue)
                simple.clear()
                simple.close()
        channel = conn.default_channel
        if hasattr(channel, "unacked_key"):
            # Redis keeps the messages a SIGKILLed worker held and restores them to the queue
            # after the visibility timeout (an hour), into whatever test then reads the queue.
            channel.client.delete(channel.unacked_key, channel.unacked_index_key)


def worker_env(var_dir: Path) -> dict[str, str]:
    """The environment of a real worker on this test's database, broker and cache."""
    from django.conf import settings
    from django.db import connection

    return {
        "DJANGO_DEBUG": "true",
        "DATABASE_URL": database_url(connection.settings_dict),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "REDIS_URL": settings.REDIS_URL,
        "BIGMIND_VAR_DIR": str(var_dir),
        "BIGMIND_PROCESSOR": "local",
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture
def celery_stack(transactional_db: None) -> Iterator[None]:
    """PostgreSQL and a network broker for real workers (skipped without them), with the worker
    queues purged before and after the test."""
    from django.conf import settings
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("worker tests need PostgreSQL: run with DATABASE_URL=postgres://...")
    if settings.CELERY_BROKER_URL.startswith("filesystem"):
        pytest.skip(
            "worker tests need a network broker: set CELERY_BROKER_URL=redis://... or amqp://..."
        )
    broker_purge()
    yield
    # After the workers stopped (fixtures that start them depend on this one): the sweep's
    # duplicate messages must not reach the other tests that read the queue.
    broker_purge()


# --- gunicorn ----------------------------------------------------------------------------------
OPEN_SIGNAL = "abuse-open"
SCHEMA_SIGNAL = "abuse-schema"
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "number", "maximum": 10}, "s": {"type": "string"}},
}


def seed() -> None:
    """Run inside `manage.py shell`: an organization, its key (printed) and two signals."""
    from signals_app.services import (
        api_key_create,
        organization_get_or_create,
        schema_version_create,
        signal_create,
    )

    organization, _ = organization_get_or_create(slug="abuse")
    _, raw_key = api_key_create(organization=organization, name="abuse key")
    for slug in (OPEN_SIGNAL, SCHEMA_SIGNAL):
        signal = signal_create(
            organization=organization,
            name=slug,
            slug=slug,
            type="event",
            rate_limit_per_minute=10**9,
        )
        if slug == SCHEMA_SIGNAL:
            schema_version_create(signal=signal, schema=SCHEMA)
    print("ABUSE_KEY=" + raw_key)


def _postgres_params(url: str) -> tuple[dict[str, Any], str] | None:
    import environ

    config = environ.Env.db_url_config(url)
    if "postgresql" not in config["ENGINE"]:
        return None
    params = {
        "host": config.get("HOST") or None,
        "port": config.get("PORT") or None,
        "user": config.get("USER") or None,
        "password": config.get("PASSWORD") or None,
    }
    return params, str(config["NAME"])


def _postgres_recreate(url: str, name: str, *, drop_only: bool = False) -> None:
    import psycopg
    from psycopg import sql

    found = _postgres_params(url)
    assert found is not None
    params, _ = found
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        if not drop_only:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


@dataclass
class Gunicorn:
    """`python -m gunicorn bigmind.wsgi` on a free port; `start()` blocks until it answers.

    With the repository's config (bigmind/gunicorn_conf.py) when it exists; the fields left at
    None keep the config's values, the others are passed as flags, which win over it.
    """

    var_dir: Path
    worker_class: str | None = None
    workers: int = 2
    threads: int | None = None
    timeout: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    raw_key: str = ""
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _abuse_db: tuple[str, str] | None = None

    @property
    def log_path(self) -> Path:
        return self.var_dir / "gunicorn.log"

    def prepare(self, base_env: Mapping[str, str]) -> None:
        """Database, migrations and seed data; sets `raw_key`."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        env = dict(base_env)
        env["DJANGO_DEBUG"] = "false"
        env.setdefault("DJANGO_SECRET_KEY", "abuse-tests-only-not-a-real-secret-0123456789abcdef")
        env["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost"
        env["BIGMIND_VAR_DIR"] = str(self.var_dir)
        # Accepted events are queued in this var dir: no shared broker gets messages for a
        # database no worker knows.
        env["CELERY_BROKER_URL"] = "filesystem://"
        env["CACHE_KEY_PREFIX"] = f"bigmind-abuse-{uuid.uuid4().hex[:12]}"
        env.update(self.extra_env)
        url = env.get("DATABASE_URL", "")
        found = _postgres_params(url) if url else None
        if found is not None:
            _, name = found
            abuse_name = f"{name}_abuse{xdist_suffix()}"[:63]
            _postgres_recreate(url, abuse_name)
            self._abuse_db = (url, abuse_name)
            env["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + abuse_name
        else:
            database = self.var_dir / "abuse.sqlite3"
            for leftover in (database, database.with_name(database.name + "-wal")):
                leftover.unlink(missing_ok=True)
            env["DATABASE_URL"] = f"sqlite:///{database}"
        self.env = env
        manage = [sys.executable, str(REPO_ROOT / "manage.py")]
        subprocess.run(
            [*manage, "migrate", "--noinput", "-v", "0"], env=env, cwd=REPO_ROOT, check=True
        )
        out = subprocess.run(
            [*manage, "shell", "-c", "from tests.harness import seed; seed()"],
            env=env,
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.raw_key = next(
            line.split("=", 1)[1] for line in out.splitlines() if line.startswith("ABUSE_KEY=")
        )

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "gunicorn"]
        if GUNICORN_CONF.exists():
            command += ["-c", str(GUNICORN_CONF)]
        else:
            # No config in the repository yet: what it would hold for this test.
            command += ["--worker-class", self.worker_class or "gthread", "--threads", "4"]
        options = {
            "--worker-class": self.worker_class,
            "--threads": self.threads,
            "--timeout": self.timeout,
        }
        for flag, value in options.items():
            if value is not None:
                command += [flag, str(value)]
        return [
            *command,
            "bigmind.wsgi:application",
            "--bind",
            f"127.0.0.1:{self.port}",
            "--workers",
            str(self.workers),
            "--graceful-timeout",
            "5",
            # gunicorn 25+ opens a control socket at ~/.gunicorn/gunicorn.ctl: one path for
            # every gunicorn on the machine, so parallel test servers would fight over it.
            "--no-control-socket",
            "--access-logfile",
            "-",
            "--error-logfile",
            "-",
            *self.extra_args,
        ]

    def start(self) -> None:
        self.port = free_port()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gunicorn exited with {self.proc.returncode}: {self.log_tail()}"
                )
            # Not /v1/openapi.json: concurrent first requests for it in one threaded worker
            # hit a race in drf-spectacular (docs/fuzzing.md), which is not what this waits for.
            probe = http_request(
                "GET", "/v1/signals", headers={"Authorization": f"Bearer {self.raw_key}"}
            )
            with contextlib.suppress(OSError):
                status, _, _ = request(self.port, probe, 30)
                if status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer within 60 s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        if self._abuse_db is not None:
            with contextlib.suppress(Exception):
                _postgres_recreate(*self._abuse_db, drop_only=True)

    @contextlib.contextmanager
    def serving(self) -> Iterator[Gunicorn]:
        """Prepared (from this process's environment) and started; cleaned up afterwards."""
        try:
            self.prepare(os.environ)
            self.start()
            yield self
        finally:
            self.cleanup()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()] if path.exists() else []


def gunicorn_start(*, env: Mapping[str, str], log: Path, port: int, workers: int) -> Service:
    """The app under gunicorn with the production configuration (bigmind/gunicorn_conf.py: sync
    workers, 30 s timeout); only the address and the number of workers are given here."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(REPO_ROOT / "bigmind" / "gunicorn_conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "bigmind.wsgi:application",
    ]
    service = Service("gunicorn", command, env, log)

    def up() -> bool:
        if not service.alive():
            raise AssertionError(
                f"gunicorn exited with {service.process.returncode}:\n{service.text()}"
            )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v1/openapi.json", timeout=10
            ) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    wait_for(up, timeout=90, interval=0.3, message="gunicorn to serve")
    return service


# --- A client that sends exactly the bytes it is given ------------------------------------------
def connect(port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one HTTP/1.x response; an interim
    `100 Continue` before it is skipped."""
    data = b""
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        if not data:
            raise ConnectionError("the server closed the connection without answering")
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status != 100:
            break
        data = body
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        body = body[:length]
    else:
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                body += chunk
    return status, headers, body


def request(port: int, raw: bytes, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    with connect(port, timeout) as sock:
        sock.sendall(raw)
        return read_response(sock)


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    headers: Mapping[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """The bytes of a request; Host and Connection: close are added unless given."""
    all_headers = {"Host": "127.0.0.1", "Connection": "close", **(headers or {})}
    lines = [f"{method} {path} {version}"] + [
        f"{name}: {value}" for name, value in all_headers.items()
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def stored(server: Gunicorn, reference: str) -> int:
    """How many events with this reference the server has stored."""
    raw = http_request(
        "GET",
        f"/v1/events?reference={reference}",
        headers={"Authorization": f"Bearer {server.raw_key}"},
    )
    status, _, body = request(server.port, raw)
    assert status == 200, body
    return len(json.loads(body)["data"])


def event_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "signal": OPEN_SIGNAL,
        "identity": {"type": "account", "id": "acct-1"},
        "data": {"n": 1},
    }
    body.update(overrides)
    return body


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


# --- Private PostgreSQL and Redis servers (the fault suite's) ---------------------------------
# The suite stops, restarts and freezes these servers, so they are its own: a PostgreSQL cluster
# made with `initdb` in a temporary directory and `redis-server`s on free ports of 127.0.0.1.
# The machine's shared PostgreSQL (5432) and Redis (6379) are never touched.
PG_BIN = Path(os.environ.get("BIGMIND_FAULT_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("BIGMIND_FAULT_REDIS_SERVER", "redis-server")


def missing_binaries() -> str | None:
    """Why the suite cannot run here, or None."""
    for name in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / name).is_file():
            return f"{PG_BIN / name} is missing (PostgreSQL 15 server binaries)"
    if shutil.which(REDIS_SERVER) is None:
        return f"{REDIS_SERVER} is not on PATH (apt-get install redis-server)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: initdb refuses to run as root"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust authentication, one superuser `postgres`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        # initdb refuses to run as root; the cluster then belongs to the `postgres` user.
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, timeout: float = 120) -> None:
        command = [*self._as_owner, *args]
        result = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode}:\n"
                f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
                f"\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_owner:
            shutil.chown(self.root, user="postgres")
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """`fast`: open transactions are rolled back and every connection is cut."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str, **kwargs: Any) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            connect_timeout=5,
            **kwargs,
        )

    def create_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect("postgres", autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def destroy(self) -> None:
        if self.running():
            with contextlib.suppress(Exception):
                self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """One `redis-server` without persistence: a restart starts it empty, as a lost cache or a
    broker without persistence would be."""

    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.port = free_port()
        self.log = root / f"redis-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
            "--logfile",
            str(self.log),
        ]
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root
        )
        wait_for(self.ping, timeout=20, interval=0.05, message=f"redis {self.name} to answer")

    def ping(self) -> bool:
        import redis

        if self.process is None or self.process.poll() is not None:
            return False
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop` would: without persistence everything it held is gone."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # in case it is frozen
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


# --- Spawned processes -------------------------------------------------------------------------
def spend(store: dict[str, Any], key: str, lease: int, times: int, barrier: Any, out: Any) -> None:
    """Spend `times` units of one counter the way django-ratelimit does, leasing `lease` at once;
    put the unit numbers handed out on `out`."""
    from django.conf import settings

    if not settings.configured:
        settings.configure()
    cache: Any
    if store["kind"] == "redis":
        from bigmind.redis import RateLimitCounterCache

        cache = RateLimitCounterCache(store["location"], {"KEY_PREFIX": store["prefix"]})
    else:
        from bigmind.cache import SQLiteCounterCache

        cache = SQLiteCounterCache(store["location"], {})
    units = []
    barrier.wait(timeout=60)
    with cache.lease(lease):
        for _ in range(times):
            units.append(1 if cache.add(key, 1, 65) else cache.incr(key))
    out.put(units)

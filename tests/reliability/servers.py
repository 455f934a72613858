"""Private PostgreSQL and Redis servers, gunicorn and Celery beat, for the fault suite.

The suite stops, restarts and freezes these servers, so they are its own: a PostgreSQL cluster
made with `initdb` in a temporary directory and `redis-server`s on free ports of 127.0.0.1.
The machine's shared PostgreSQL (5432) and Redis (6379) are never touched. Celery workers come
from tests/worker_support.py, like the other real-worker tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.worker_support import REPO_ROOT, wait_for

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


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

"""A real gunicorn serving the app, and a raw-socket client, for the abuse tests.

Nothing here imports pytest or Django settings at import time: `seed()` runs inside the
gunicorn app's own environment (`manage.py shell`), the rest only starts and talks to processes.

The server gets a database of its own (a SQLite file, or `<name>_abuse` on the PostgreSQL server
of DATABASE_URL), its own var dir and the filesystem broker in it, so accepted events are queued
nowhere shared, and a cache key prefix of its own when the cache is a shared Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
GUNICORN_CONF = REPO_ROOT / "bigmind" / "gunicorn_conf.py"
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
            abuse_name = f"{name}_abuse"[:63]
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
            [*manage, "shell", "-c", "from tests.abuse.server import seed; seed()"],
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

"""Real Celery workers for the end-to-end pipeline tests (tests/events_app/test_worker_e2e.py).

A worker is `python -m celery -A bigmind worker` in its own process group, logging to a file,
configured only through the environment the way production configures it. Nothing here imports
pytest or touches Django at import time: the worker processes import `SlowProcessor` from this
module through the BIGMIND_PROCESSOR setting.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO_ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("default", "events.process")
# How long SlowProcessor sleeps before answering (seconds, a float).
SLOW_DELAY_ENV = "BIGMIND_TEST_PROCESSOR_DELAY_SECONDS"
SLOW_PROCESSOR = "tests.worker_support.SlowProcessor"


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


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL naming the database pytest-django created (its NAME, not the original)."""
    user = quote(str(settings_dict.get("USER") or ""), safe="")
    password = quote(str(settings_dict.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or "5432"
    name = quote(str(settings_dict["NAME"]), safe="")
    return f"postgres://{credentials}{host}:{port}/{name}"


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
        "prefork",
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

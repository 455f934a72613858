"""gunicorn workers that cut off a client too slow to send its request.

gunicorn's own workers put no deadline on reading a request (tests/abuse/test_slow_clients.py
shows it, docs/fuzzing.md has the numbers):

- `sync`: a client that trickles its headers or body holds the whole worker, which serves nobody
  else; after `timeout` seconds the arbiter aborts the worker, which answers that client
  `500 Internal Server Error` and is replaced.
- `gthread`: the trickling client holds one thread for as long as it keeps trickling, without
  any limit once its first byte arrived; other clients are served by the other threads until
  `workers x threads` slow clients hold them all.

These workers give each request a read deadline, `BIGMIND_REQUEST_READ_TIMEOUT` seconds
(default 20, below gunicorn's `timeout` of 30 so a sync worker is never aborted for it) from the
moment the worker takes the request up. Every `recv` waits at most until the deadline; past it
the socket reads as closed. A client still sending headers is then disconnected without an
answer (gunicorn: "premature client disconnection"); one still sending its body gives the app a
short body, which the API refuses with `400 body_incomplete`. Only reads are bounded: a request
whose body has arrived still gets its answer however long the app takes.

Use `--worker-class bigmind.gunicorn_worker.ReadDeadlineSyncWorker` (or
`...ReadDeadlineThreadWorker` with `--threads N`), or `worker_class` in a config file. A
buffering proxy in front (nginx's `client_header_timeout` / `client_body_timeout`) does the
same one hop earlier; these workers keep gunicorn safe when something reaches it directly.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from gunicorn.errors import AppImportError
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker


def read_timeout() -> float:
    return float(os.environ.get("BIGMIND_REQUEST_READ_TIMEOUT", "20"))


class DeadlineSocket:
    """A client socket whose reads end at `deadline` (time.monotonic()); past it, EOF.

    Everything but `recv` goes to the real socket unchanged.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def recv(self, size: int, *flags: int) -> bytes:
        if self.deadline is None:
            return self._sock.recv(size, *flags)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            return b""
        prior = self._sock.gettimeout()
        wait = remaining if prior is None else min(prior, remaining)
        self._sock.settimeout(wait)
        try:
            return self._sock.recv(size, *flags)
        except (TimeoutError, BlockingIOError):
            if prior is not None and prior <= remaining:
                raise  # the caller's own timeout (or non-blocking mode), not ours
            return b""
        finally:
            self._sock.settimeout(prior)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# With TLS terminated by gunicorn itself (`certfile`), the socket must stay a real socket for
# ssl.wrap_socket: these workers then behave as gunicorn's own. TLS belongs on the proxy.


class ConfigurationErrorWorker:
    """A setting missing or invalid (ImproperlyConfigured while the app loads) stops gunicorn with
    that one line, `gunicorn: configuration error: ...`, instead of a traceback per worker
    (issue #12): gunicorn prints an AppImportError's message alone and halts ("App failed to
    load") rather than booting workers again."""

    def load_wsgi(self) -> None:
        from django.core.exceptions import ImproperlyConfigured

        try:
            super().load_wsgi()  # type: ignore[misc]
        except ImproperlyConfigured as exc:
            message = " ".join(str(exc).split())
            raise AppImportError(f"gunicorn: configuration error: {message}") from None


class ReadDeadlineSyncWorker(ConfigurationErrorWorker, SyncWorker):
    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if self.cfg.is_ssl:
            super().handle(listener, client, addr)
            return
        wrapped = DeadlineSocket(client)
        wrapped.deadline = time.monotonic() + read_timeout()
        super().handle(listener, wrapped, addr)


class ReadDeadlineThreadWorker(ConfigurationErrorWorker, ThreadWorker):
    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl:
            return super().handle(conn)
        # Wrapped once per connection (its parser keeps the wrapper); a deadline per request.
        if not isinstance(conn.sock, DeadlineSocket):
            conn.sock = DeadlineSocket(conn.sock)
        conn.sock.deadline = time.monotonic() + read_timeout()
        try:
            return super().handle(conn)
        finally:
            conn.sock.deadline = None

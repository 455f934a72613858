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

They also answer gunicorn's own refusals (a request line over `limit_request_line` 414, headers
over the limits 431, an unknown `Transfer-Encoding` 501, malformed framing 400, an unknown
`Expect` 417...) in the API's JSON envelope instead of gunicorn's HTML page: gunicorn still
decides the status and logs it; only the body it writes is replaced (`EnvelopeErrors`).

Use `--worker-class bigmind.gunicorn_worker.ReadDeadlineSyncWorker` (or
`...ReadDeadlineThreadWorker` with `--threads N`), or `worker_class` in a config file. A
buffering proxy in front (nginx's `client_header_timeout` / `client_body_timeout`) does the
same one hop earlier; these workers keep gunicorn safe when something reaches it directly.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from http import HTTPStatus
from typing import Any

from gunicorn import util
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


# The envelope's `code` for each status gunicorn answers by itself (workers/base.py,
# handle_error); codes shared with the app (bigmind.errors) keep the app's word.
GUNICORN_ERROR_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "unsupported_transfer_coding",
}
_MESSAGE_MAX = 300


class _CapturedSocket:
    """Takes the place of the client's socket while gunicorn writes its error page
    (util.write_error -> write_nonblock -> sendall), so that the page can be replaced."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0  # "non-blocking already": write_nonblock calls sendall and nothing else

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data


def envelope_error_answer(status: int, reason: str, exc: BaseException | None) -> bytes:
    """The whole HTTP answer for a refusal of gunicorn's: the envelope of bigmind.errors
    (written here with json alone: this module loads before Django is set up) and an
    X-Request-ID, as on every answer of the API (SPEC §2). `Connection: close` as gunicorn's:
    the connection cannot be trusted after a framing error."""
    if status >= 500 and status != 501:
        message = "Internal server error"  # as bigmind.errors.handler500; the log has the rest
    else:
        detail = str(exc) if exc is not None else ""
        message = f"{reason}: {detail}" if detail else reason
        message = message[:_MESSAGE_MAX]
    body = json.dumps(
        {
            "success": False,
            "error": message,
            "code": GUNICORN_ERROR_CODES.get(status, "bad_request"),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {uuid.uuid4().hex}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class EnvelopeErrors:
    """gunicorn's own refusals in the envelope: gunicorn's handle_error picks the status and
    reason and writes the access and error log lines, into a captured socket; the client gets
    `envelope_error_answer` for that status instead of the HTML page."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _CapturedSocket()
        super().handle_error(req, captured, addr, exc)  # type: ignore[misc]
        status_line = captured.data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            answer = captured.data  # not a status line of gunicorn's: send what it wrote
        else:
            reason = parts[2] if len(parts) > 2 else ""
            if status == HTTPStatus.NOT_IMPLEMENTED:
                reason = HTTPStatus.NOT_IMPLEMENTED.phrase  # gunicorn says "501 Bad Request"
            answer = envelope_error_answer(status, reason, exc)
        if not answer:
            return
        try:
            util.write_nonblock(client, answer)
        except Exception:
            # As gunicorn's own: the client may be gone already.
            self.log.debug("Failed to send error message.")  # type: ignore[attr-defined]


# With TLS terminated by gunicorn itself (`certfile`), the socket must stay a real socket for
# ssl.wrap_socket: these workers then behave as gunicorn's own. TLS belongs on the proxy.


class ConfigurationErrorWorker:
    """A setting missing or invalid (ImproperlyConfigured while the app loads) stops gunicorn with
    that one line, `gunicorn: configuration error: ...`, instead of a traceback per worker
    (issue #12): gunicorn prints an AppImportError's message alone and halts ("App failed to
    load") rather than booting workers again."""

    def load_wsgi(self) -> None:
        from django.core.exceptions import ImproperlyConfigured

        from bigmind.startup import configuration_error_line

        try:
            super().load_wsgi()  # type: ignore[misc]
        except ImproperlyConfigured as exc:
            raise AppImportError(configuration_error_line("gunicorn", exc)) from None


class ReadDeadlineSyncWorker(ConfigurationErrorWorker, EnvelopeErrors, SyncWorker):
    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if self.cfg.is_ssl:
            super().handle(listener, client, addr)
            return
        wrapped = DeadlineSocket(client)
        wrapped.deadline = time.monotonic() + read_timeout()
        super().handle(listener, wrapped, addr)


class ReadDeadlineThreadWorker(ConfigurationErrorWorker, EnvelopeErrors, ThreadWorker):
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

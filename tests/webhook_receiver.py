"""A real local HTTP receiver for webhook tests, the fault test and the benchmark.

It records every request it gets (the raw body bytes and the headers, as sent) and answers
according to a script: a list of behaviours consumed one per request, then `default`. A
behaviour is an HTTP status, or one of `hang` (answer nothing until the sender gives up),
`trickle` (send the headers and then one byte a second), `redirect` (302 elsewhere) and `huge`
(200 with a 5 MB body). Threaded, so a hanging request does not block the others.

`delay=(low, high)` makes every answer wait a random time in that range first (the fault suite:
a sender killed then is most likely mid-send), and `in_flight()` lists the webhook ids of the
requests received and not yet being answered.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Behaviour = int | str


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    received_at: float = field(default_factory=time.time)  # wall clock: a signature's `t`
    peer: tuple[str, int] = ("", 0)  # the sender's address: one per connection

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def id(self) -> str:
        return self.json["id"]


@dataclass
class Receiver:
    host: str
    port: int
    script: list[Behaviour] = field(default_factory=list)
    default: Behaviour = 200
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Set on teardown: hanging handlers stop waiting.
    closing: threading.Event = field(default_factory=threading.Event)
    delay: tuple[float, float] | None = None
    # Webhook id -> requests with that id received, whose answer has not started yet.
    waiting: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hooks"

    def next_behaviour(self) -> Behaviour:
        with self.lock:
            return self.script.pop(0) if self.script else self.default

    def ids(self) -> list[str]:
        with self.lock:
            return [r.id for r in self.received]

    def in_flight(self) -> list[str]:
        with self.lock:
            return sorted(+self.waiting)

    def counts(self) -> Counter[str]:
        return Counter(self.ids())

    def wait_for(self, n: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"the receiver got {len(self.received)} request(s), not {n}")


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with receiver.lock:
                receiver.received.append(
                    Received(
                        self.path,
                        dict(self.headers.items()),
                        body,
                        time.monotonic(),
                        peer=self.client_address[:2],
                    )
                )
            if receiver.delay is not None:
                self._wait(body)
            behaviour = receiver.next_behaviour()
            if behaviour == "hang":
                receiver.closing.wait(60)
                return
            if behaviour == "trickle":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    if receiver.closing.wait(1):
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
                return
            if behaviour == "redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, answer = (
                (200, b"y" * 5_000_000)
                if behaviour == "huge"
                else (
                    int(behaviour),
                    b'{"ok": true}',
                )
            )
            # The sender may stop reading (its bounded read: expected for `huge`), or be gone
            # (killed mid-send by the fault suite).
            with contextlib.suppress(OSError):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        def _wait(self, body: bytes) -> None:
            """The configured delay, counted as in flight until the answer starts (so an id
            listed by `in_flight()` cannot have been answered yet)."""
            assert receiver.delay is not None
            try:
                webhook_id = str(json.loads(body)["id"])
            except (ValueError, KeyError, TypeError):
                webhook_id = ""
            with receiver.lock:
                receiver.waiting[webhook_id] += 1
            try:
                receiver.closing.wait(random.uniform(*receiver.delay))
            finally:
                with receiver.lock:
                    receiver.waiting[webhook_id] -= 1

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog (default 5): a burst of connections must not be refused.
    request_queue_size = 64


@contextmanager
def receiver_running(
    script: list[Behaviour] | None = None,
    default: Behaviour = 200,
    *,
    delay: tuple[float, float] | None = None,
) -> Iterator[Receiver]:
    server = _Server(("127.0.0.1", 0), BaseHTTPRequestHandler)
    receiver = Receiver(
        "127.0.0.1", server.server_address[1], list(script or []), default, delay=delay
    )
    server.RequestHandlerClass = _handler(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.closing.set()
        server.shutdown()
        server.server_close()

"""The load client of the fault suite: single events at a steady rate from several threads.

Every request is unique (its own Idempotency-Key and `reference`), is sent once (no retry: a
retry would hide what the first answer was), and leaves one `Outcome`: the HTTP status and the
envelope's `code`, or what went wrong on the client side, classified (timeout, refused, reset,
closed without an answer). Nothing here imports Django.
"""

from __future__ import annotations

import errno
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    index: int
    key: str
    started: float  # time.time()
    elapsed: float = 0.0
    status: int | None = None  # None: no HTTP answer (see `error`)
    code: str | None = None  # the envelope's `code`, when the body is one
    envelope: bool = False  # the body is JSON with a boolean `success`
    retry_after: str | None = None
    error: str | None = None  # client side: timeout, refused, reset, closed, other:...
    event_id: str | None = None  # the answer's data.id (an accepted event or its replay)
    replayed: bool = False  # the answer had `Idempotent-Replayed: true`

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def unavailable(self) -> bool:
        return self.status == 503


def _classify(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed"  # the server closed the connection without an answer
    if isinstance(exc, OSError) and exc.errno == errno.ECONNRESET:
        return "reset"
    return f"other:{type(exc).__name__}:{exc}"


@dataclass
class Load:
    """`total` POST /v1/events at `rate` per second, at most `threads` in flight."""

    port: int
    api_key: str
    signal: str
    prefix: str  # unique per run: keys and references are `{prefix}-{index}`
    total: int
    rate: float
    threads: int
    timeout: float = 30.0
    identities: int = 40
    outcomes: list[Outcome] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: float = 0.0
    _workers: list[threading.Thread] = field(default_factory=list)

    def key(self, index: int) -> str:
        return f"{self.prefix}-{index:06d}"

    def body(self, index: int) -> bytes:
        event: dict[str, Any] = {
            "signal": self.signal,
            "identity": {"type": "account", "id": f"{self.prefix}-acct-{index % self.identities}"},
            # A metric of value 1: the aggregates' sum must equal the number of events stored.
            "data": {"value": 1},
            "reference": self.key(index),
        }
        return json.dumps(event).encode()

    def send(self, index: int) -> Outcome:
        key = self.key(index)
        outcome = Outcome(index=index, key=key, started=time.time())
        begun = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            conn.request(
                "POST",
                "/v1/events",
                self.body(index),
                {
                    "Authorization": f"Bearer {self.api_key}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": key,
                },
            )
            response = conn.getresponse()
            raw = response.read()
            outcome.status = response.status
            outcome.retry_after = response.getheader("Retry-After")
            outcome.replayed = response.getheader("Idempotent-Replayed") == "true"
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("success"), bool):
                outcome.envelope = True
                code = body.get("code")
                outcome.code = code if isinstance(code, str) else None
                data = body.get("data")
                if isinstance(data, dict) and isinstance(data.get("id"), str):
                    outcome.event_id = data["id"]
        except Exception as exc:
            outcome.error = _classify(exc)
        finally:
            conn.close()
            outcome.elapsed = time.monotonic() - begun
        return outcome

    def _run(self) -> None:
        while True:
            with self._lock:
                index = self._next
                if index >= self.total:
                    return
                self._next += 1
            # Open-loop pacing: request n is due at start + n / rate, whatever came before.
            delay = self._started + index / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            outcome = self.send(index)
            with self._lock:
                self.outcomes.append(outcome)

    def start(self) -> None:
        self._started = time.monotonic()
        self._workers = [
            threading.Thread(target=self._run, name=f"load-{n}", daemon=True)
            for n in range(self.threads)
        ]
        for worker in self._workers:
            worker.start()

    @property
    def sent(self) -> int:
        """Requests begun so far."""
        with self._lock:
            return self._next

    def done(self) -> int:
        with self._lock:
            return len(self.outcomes)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        assert not any(w.is_alive() for w in self._workers), "the load did not finish in time"

    def wait_sent(self, count: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < count:
            assert time.monotonic() < deadline, f"load: only {self.sent} of {count} sent in time"
            time.sleep(0.05)

"""Webhook POSTs, under the rules of docs/webhooks.md: to an address `addresses` checked at
connect time, no redirect followed, the response read up to a bound, 10 seconds in all.

The standard library's http.client over a socket this module connects itself: each connection
resolves and checks the host again (DNS rebinding), then connects to a checked address, with the
URL's host name kept for TLS (SNI and certificate check) and for `Host`. http.client never
follows a redirect, so a 3xx is only a status: a failure, as any non-2xx.

A `Connection` is kept for the sends of one claim (up to 20 deliveries to one endpoint): one TCP
and TLS handshake for them all instead of one each, which is most of an attempt's CPU on both
sides. A connection the receiver closed while idle is opened again once.

The 10 seconds cover the whole attempt: a socket time-out alone bounds each read, and a receiver
that trickles one byte every few seconds would hold a worker for minutes. One watchdog thread
per process shuts a socket down at its attempt's deadline, which ends any read in progress.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from events_app.webhooks.addresses import Address, ResolveTimeout, UnsafeUrl, connect_addresses

# What is kept of a response body: enough to show staff what the receiver said.
EXCERPT_BYTES = 2048


@dataclass(frozen=True)
class Outcome:
    """An attempt's result: the HTTP status (None when there was no response), what the receiver
    answered (an excerpt), and the error that made it a failure ("" for a 2xx)."""

    status_code: int | None
    excerpt: str
    error: str
    seconds: float

    @property
    def succeeded(self) -> bool:
        return not self.error


class Connection:
    """Sends to one URL over one checked connection, opened on the first send and kept while
    the receiver keeps it (`close()` when done)."""

    def __init__(
        self,
        url: str,
        *,
        allow_private: bool,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.allow_private = allow_private
        self.ssl_context = ssl_context
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.https = parts.scheme == "https"
        self.port = parts.port or (443 if self.https else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._http: _Http | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def post(self, body: bytes, headers: dict[str, str], *, timeout: float) -> Outcome:
        """POST `body`; never raises for what the receiver or the network does."""
        started = time.monotonic()
        deadline = started + timeout

        def outcome(status: int | None, excerpt: str, error: str) -> Outcome:
            return Outcome(status, excerpt, error[:500], time.monotonic() - started)

        reused = self._http is not None
        try:
            if self._http is None:
                self._http = self._open(deadline)
            with _WATCHDOG.armed(self._http.guard, deadline):
                try:
                    response = self._exchange(body, headers)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    if not reused:
                        raise
                    # The receiver closed the idle connection: once more, on a new one.
                    self.close()
                    self._http = self._open(deadline)
                    with _WATCHDOG.armed(self._http.guard, deadline):
                        response = self._exchange(body, headers)
                excerpt = response.read(EXCERPT_BYTES).decode("utf-8", errors="replace")
                if response.will_close or not response.isclosed():
                    self.close()  # the receiver ends it, or unread bytes are left: not reusable
            status = response.status
        except UnsafeUrl as refused:
            self.close()
            return outcome(None, "", f"Refused: {refused}")
        except _ConnectFailed as failed:
            self.close()
            return outcome(None, "", str(failed))
        except (OSError, http.client.HTTPException) as error:
            self.close()
            if time.monotonic() >= deadline - 0.05:
                return outcome(None, "", f"Timed out after {timeout:g} s")
            return outcome(None, "", f"{type(error).__name__}: {error}".rstrip(": "))
        if time.monotonic() > deadline:
            self.close()
            return outcome(status, excerpt, f"Timed out after {timeout:g} s")
        if 200 <= status < 300:
            return outcome(status, excerpt, "")
        if 300 <= status < 400:
            where = response.getheader("Location") or "nowhere"
            return outcome(status, excerpt, f"HTTP {status}: redirects are not followed ({where})")
        return outcome(status, excerpt, f"HTTP {status}")

    def _exchange(self, body: bytes, headers: dict[str, str]) -> http.client.HTTPResponse:
        assert self._http is not None
        self._http.request("POST", self.target, body=body, headers=headers)
        return self._http.getresponse()

    def _open(self, deadline: float) -> _Http:
        addresses = resolve(self.url, allow_private=self.allow_private, deadline=deadline)
        raw = _connect(addresses, self.port, deadline)
        # The watchdog's handle on the connection: wrapping in TLS detaches `raw` (its
        # descriptor becomes -1), and shutting down a duplicate descriptor ends the connection
        # itself, so a read blocked inside TLS returns too.
        guard = raw.dup()
        sock: socket.socket = raw
        try:
            if self.https:
                with _WATCHDOG.armed(guard, deadline):
                    sock = (self.ssl_context or _tls()).wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            guard.close()
            raise
        return _Http(self.host, self.port, sock, guard, default_port=443 if self.https else 80)


def post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Outcome:
    """One POST on a connection of its own."""
    connection = Connection(url, allow_private=allow_private, ssl_context=ssl_context)
    try:
        return connection.post(body, headers, timeout=timeout)
    finally:
        connection.close()


class _ConnectFailed(Exception):
    pass


def resolve(url: str, *, allow_private: bool, deadline: float) -> list[Address]:
    """`addresses.connect_addresses`, given until `deadline` (time.monotonic())."""
    try:
        return connect_addresses(
            url, allow_private=allow_private, timeout=max(0.0, deadline - time.monotonic())
        )
    except ResolveTimeout:
        raise _ConnectFailed("Timed out while resolving the host") from None


def _connect(addresses: list[Address], port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first checked address that answers."""
    error = "No address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _ConnectFailed("Timed out while connecting")
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect((str(address), port))
        except OSError as failure:
            sock.close()
            error = f"Could not connect to {address}: {failure}"
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise _ConnectFailed(error)


_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The system's trust store and certificate checks, loaded once per process (loading the
    CA bundle costs more than a TLS handshake)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


class _Http(http.client.HTTPConnection):
    """http.client over a socket already connected (to a checked address); `Host` is the URL's.
    `guard` is a duplicate of the TCP socket's descriptor, the one the watchdog shuts down."""

    def __init__(
        self, host: str, port: int, sock: socket.socket, guard: socket.socket, *, default_port: int
    ) -> None:
        self.default_port = default_port  # `Host: name`, with the port only when not the default
        super().__init__(host, port)
        self.sock = sock
        self.guard = guard

    def connect(self) -> None:  # the socket is given; never resolve the name again
        raise http.client.HTTPException("the connection was closed")

    def close(self) -> None:
        super().close()
        self.guard.close()


@dataclass(order=True)
class _Alarm:
    deadline: float
    seq: int
    sock: socket.socket = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class _Watchdog:
    """One thread per process that shuts sockets down at their deadlines (a timer thread per
    attempt would cost a thread start each)."""

    def __init__(self) -> None:
        self._alarms: list[_Alarm] = []
        self._wake = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def armed(self, sock: socket.socket, deadline: float):  # type: ignore[no-untyped-def]
        alarm = _Alarm(deadline, next(self._seq), sock)
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                # Started on first use, in the process that sends (after a prefork fork too).
                self._thread = threading.Thread(target=self._run, name="webhook-deadlines")
                self._thread.daemon = True
                self._thread.start()
            heapq.heappush(self._alarms, alarm)
            if self._alarms[0] is alarm:
                self._wake.notify()
        try:
            yield
        finally:
            alarm.cancelled = True  # dropped when it comes up

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._alarms and self._alarms[0].cancelled:
                    heapq.heappop(self._alarms)
                if not self._alarms:
                    self._wake.wait()
                    continue
                wait = self._alarms[0].deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                alarm = heapq.heappop(self._alarms)
                with contextlib.suppress(OSError):
                    alarm.sock.shutdown(socket.SHUT_RDWR)


_WATCHDOG = _Watchdog()

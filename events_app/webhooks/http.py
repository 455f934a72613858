"""One webhook POST, under the rules of docs/webhooks.md: to an address `addresses` checked at
connect time, no redirect followed, the response read up to a bound, 10 seconds in all.

The standard library's http.client, not a pooled client: each attempt resolves and checks the
host again (DNS rebinding), then connects to the checked address itself, with the URL's host
name kept for TLS (SNI and certificate check) and for `Host`. http.client never follows a
redirect, so a 3xx is only a status: a failure, as any non-2xx.

The 10 seconds cover everything (resolution aside): a socket time-out alone bounds each read,
and a receiver that trickles one byte every few seconds would hold a worker for minutes. A
watchdog timer shuts the socket down at the deadline, which ends any read in progress.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from events_app.webhooks.addresses import Address, UnsafeUrl, connect_addresses

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


def post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    allow_private: bool,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Outcome:
    """POST `body` to `url`; never raises for what the receiver or the network does."""
    started = time.monotonic()
    deadline = started + timeout

    def outcome(status: int | None, excerpt: str, error: str) -> Outcome:
        return Outcome(status, excerpt, error[:500], time.monotonic() - started)

    try:
        addresses = connect_addresses(url, allow_private=allow_private)
    except UnsafeUrl as refused:
        return outcome(None, "", f"Refused: {refused}")
    parts = urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    sock: socket.socket | None = None
    watchdog: threading.Timer | None = None
    try:
        sock, connect_error = _connect(addresses, port, deadline)
        if sock is None:
            return outcome(None, "", connect_error)
        watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _shut, (sock,))
        watchdog.daemon = True
        watchdog.start()
        if https:
            sock = (ssl_context or _tls()).wrap_socket(sock, server_hostname=host)
        connection = _Connection(host, port, sock, default_port=443 if https else 80)
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        excerpt = response.read(EXCERPT_BYTES).decode("utf-8", errors="replace")
        status = response.status
        if time.monotonic() > deadline:
            return outcome(status, excerpt, f"Timed out after {timeout:g} s")
        if 200 <= status < 300:
            return outcome(status, excerpt, "")
        if 300 <= status < 400:
            where = response.getheader("Location") or "nowhere"
            return outcome(status, excerpt, f"HTTP {status}: redirects are not followed ({where})")
        return outcome(status, excerpt, f"HTTP {status}")
    except (OSError, http.client.HTTPException) as error:
        if time.monotonic() >= deadline - 0.05:
            return outcome(None, "", f"Timed out after {timeout:g} s")
        return outcome(None, "", f"{type(error).__name__}: {error}".rstrip(": "))
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if sock is not None:
            sock.close()


def _connect(
    addresses: list[Address], port: int, deadline: float
) -> tuple[socket.socket | None, str]:
    """A TCP connection to the first checked address that answers."""
    error = "No address to connect to"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, "Timed out while connecting"
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(remaining)
        try:
            sock.connect((str(address), port))
        except OSError as failure:
            sock.close()
            error = f"Could not connect to {address}: {failure}"
            continue
        return sock, ""
    return None, error


_TLS: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    """The system's trust store and certificate checks, loaded once per process (loading the
    CA bundle costs more than a TLS handshake)."""
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS


def _shut(sock: socket.socket) -> None:
    """The deadline: end whatever read or write is blocked on `sock`."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Connection(http.client.HTTPConnection):
    """http.client over a socket already connected (to a checked address); `Host` is the URL's."""

    def __init__(self, host: str, port: int, sock: socket.socket, *, default_port: int) -> None:
        self.default_port = default_port  # `Host: name`, with the port only when not the default
        super().__init__(host, port)
        self.sock = sock

    def connect(self) -> None:  # the socket is given; never resolve the name again
        raise http.client.HTTPException("the connection was closed")

"""One webhook attempt on the wire (events_app/webhooks/http.py): over real TLS to a local server
with a certificate made here, the 10 s rule (here 1 s) holds through TLS, SNI and `Host` carry
the URL's name, and what could once escape an attempt is an outcome instead."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from events_app.webhooks import http, sending
from events_app.webhooks.addresses import UnsafeUrl, url_check
from events_app.webhooks.endpoints import endpoint_create
from tests.conftest import Tenant


def _certificate(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class TlsServer:
    port: int
    behaviour: str = "ok"  # "ok", or "trickle": headers, then one byte a second
    server_names: list[str | None] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[tuple[TlsServer, ssl.SSLContext]]:
    cert, key = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = TlsServer(listener.getsockname()[1])
    server_context.sni_callback = lambda _sock, name, _ctx: server.server_names.append(name)

    def handle(conn: socket.socket) -> None:
        with conn, server_context.wrap_socket(conn, server_side=True) as tls_conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += tls_conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            while len(body) < length:  # all of it: closing with unread bytes would reset
                body += tls_conn.recv(65536)
            server.requests.append(data)
            if server.behaviour == "trickle":
                tls_conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                for _ in range(100):
                    if server.stop.wait(0.3):
                        return
                    tls_conn.sendall(b"x")
            else:
                tls_conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def serve() -> None:
        while not server.stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed at teardown
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    client_context = ssl.create_default_context(cafile=str(cert))
    yield server, client_context
    server.stop.set()
    listener.close()


def post(url: str, context: ssl.SSLContext, timeout: float = 1.0) -> http.Outcome:
    return http.post(
        url,
        body=b"{}",
        headers={"Content-Type": "application/json"},
        allow_private=True,
        timeout=timeout,
        ssl_context=context,
    )


def test_over_tls_the_url_name_is_the_sni_and_the_host(tls: Any) -> None:
    server, context = tls
    outcome = post(f"https://localhost:{server.port}/hooks?a=1", context)
    assert outcome.succeeded, outcome
    assert server.server_names == ["localhost"]
    request = server.requests[0].decode()
    assert request.startswith("POST /hooks?a=1 HTTP/1.1\r\n")
    assert f"\r\nHost: localhost:{server.port}\r\n" in request


def test_a_certificate_for_another_name_is_refused(tls: Any) -> None:
    server, context = tls
    context.check_hostname = True
    outcome = post(f"https://127.0.0.2:{server.port}/hooks", context)
    assert not outcome.succeeded and outcome.status_code is None
    assert "certificate" in outcome.error.lower() or "connect" in outcome.error.lower()


def test_a_receiver_trickling_through_tls_is_cut_at_the_deadline(tls: Any) -> None:
    server, context = tls
    server.behaviour = "trickle"
    started = time.monotonic()
    outcome = post(f"https://localhost:{server.port}/hooks", context, timeout=1.0)
    took = time.monotonic() - started
    # Each byte comes within the socket's time-out; only the watchdog ends it.
    assert 0.9 < took < 1.8, took
    assert outcome.error == "Timed out after 1 s"


def test_a_slow_name_server_costs_the_attempt_its_deadline_not_more() -> None:
    def slow(*args: Any, **kwargs: Any) -> list[Any]:
        time.sleep(3)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))]

    with mock.patch("events_app.webhooks.addresses.socket.getaddrinfo", slow):
        started = time.monotonic()
        outcome = http.post(
            "http://slow.example/hooks", body=b"{}", headers={}, allow_private=True, timeout=0.5
        )
        assert time.monotonic() - started < 1.5
        assert outcome.error == "Timed out while resolving the host"
        # Saving an endpoint waits SAVE_RESOLVE_SECONDS, then refuses the URL with the reason.
        with (
            mock.patch("events_app.webhooks.addresses.SAVE_RESOLVE_SECONDS", 0.5),
            pytest.raises(UnsafeUrl, match=r"did not resolve within 0\.5 s"),
        ):
            url_check("https://slow.example/hooks", allow_private=False)


def test_a_url_that_is_not_ascii_is_refused_when_saved() -> None:
    with pytest.raises(UnsafeUrl, match="must be ASCII"):
        url_check("https://93.184.215.14/h\u00e9", allow_private=False)


def test_an_attempt_that_raises_is_a_failed_attempt_not_a_stuck_claim(
    tenant: Tenant, settings: Any, pipeline_in_process: Any
) -> None:
    settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    endpoint = endpoint_create(
        organization=tenant.organization, url="http://127.0.0.1:9/hooks", events=["*"]
    ).endpoint
    first, second = (sending.ping_create(endpoint=endpoint) for _ in range(2))
    claim = sending.deliveries_claim(endpoint_id=endpoint.pk)
    assert claim is not None
    with mock.patch.object(
        sending, "delivery_send", side_effect=UnicodeEncodeError("ascii", "", 0, 1, "x")
    ):
        outcomes = sending.claim_send(claim)
    assert [o.error for o in outcomes] == ["Internal error: UnicodeEncodeError"]
    assert sending.claim_record(claim, outcomes) == ["pending"]
    first.refresh_from_db()
    second.refresh_from_db()
    assert first.claimed_at is None and first.last_error == "Internal error: UnicodeEncodeError"
    assert second.claimed_at is None and second.attempts == 0  # released, untried

    # An unreadable secret (SECRET_KEY changed without its fallback): every delivery of the
    # claim is a failed attempt with the reason, none left claimed.
    claim = sending.deliveries_claim(endpoint_id=endpoint.pk, now=first.next_attempt_at)
    assert claim is not None
    with mock.patch.object(sending, "signing_secrets", side_effect=ValueError("bad token")):
        outcomes = sending.claim_send(claim)
    assert {o.error for o in outcomes} == {
        "The signing secret cannot be read (ValueError): rotate it"
    }
    assert set(sending.claim_record(claim, outcomes)) == {"pending"}


def test_the_backoff_of_a_much_retried_delivery_does_not_overflow(settings: Any) -> None:
    settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_SECONDS = 30
    settings.BIGMIND_WEBHOOK_RETRY_BACKOFF_MAX_SECONDS = 21600
    assert 10800 <= sending.retry_delay(5000) <= 21600

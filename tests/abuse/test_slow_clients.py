"""Slow clients against a real gunicorn: the read-deadline workers of bigmind/gunicorn_worker.py.

A client that trickles its request byte by byte, or stalls half way, must not get a 5xx, must
not keep other clients from being served meanwhile, and must be cut off within a bounded time
(`BIGMIND_REQUEST_READ_TIMEOUT`, 3 s here). gunicorn's stock workers fail the last part (sync:
a 500 and a killed worker after `timeout`; gthread: never cut off): docs/fuzzing.md.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    Gunicorn,
    connect,
    event_body,
    http_request,
    json_bytes,
    read_response,
    request,
    stored,
)

# One xdist worker runs the whole module, so its module-scoped server starts once, not once
# per worker that happens to get one of its tests.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slow-clients")]

READ_TIMEOUT = 3.0
# The deadline plus slack for a 2-core machine under load (seen: load average 10).
CUT_OFF_WITHIN = READ_TIMEOUT + 7


@pytest.fixture(
    scope="module",
    params=[
        ("bigmind.gunicorn_worker.ReadDeadlineSyncWorker", 1),
        ("bigmind.gunicorn_worker.ReadDeadlineThreadWorker", 4),
    ],
    ids=["sync", "gthread"],
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gunicorn]:
    worker_class, threads = request.param
    gunicorn = Gunicorn(
        var_dir=Path(tmp_path_factory.mktemp("slow-gunicorn")),
        worker_class=worker_class,
        workers=2,
        threads=threads,
        timeout=30,
        extra_env={"BIGMIND_REQUEST_READ_TIMEOUT": str(READ_TIMEOUT)},
    )
    with gunicorn.serving():
        yield gunicorn


def ingest_request(server: Gunicorn, reference: str, **headers: str) -> bytes:
    body = json_bytes(event_body(reference=reference))
    all_headers = {
        "Authorization": f"Bearer {server.raw_key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **headers,
    }
    return http_request("POST", "/v1/events", body, headers=all_headers)


class Trickler(threading.Thread):
    """Sends `head` at once, then `tail` one byte every `interval` seconds until cut off."""

    def __init__(self, port: int, head: bytes, tail: bytes, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.port, self.head, self.tail, self.interval = port, head, tail, interval
        self.answer: tuple[int, dict[str, str], bytes] | None = None
        self.closed_without_answer = False
        self.sent_all = False
        self.elapsed = 0.0

    def run(self) -> None:
        started = time.monotonic()
        with connect(self.port, timeout=60) as sock:
            try:
                sock.sendall(self.head)
                for byte in self.tail:
                    sock.sendall(bytes([byte]))
                    time.sleep(self.interval)
                self.sent_all = True
            except OSError:
                pass  # cut off while sending
            try:
                self.answer = read_response(sock)
            except (ConnectionError, OSError):
                self.closed_without_answer = True
        self.elapsed = time.monotonic() - started


def others_are_served(server: Gunicorn, slow: threading.Thread) -> int:
    """How many normal requests were answered (202) while the slow client was still connected."""
    served = 0
    while slow.is_alive() and served < 20:
        raw = ingest_request(server, f"other-{uuid.uuid4().hex[:8]}")
        status, _, body = request(server.port, raw, 30)
        assert status == 202, body
        if slow.is_alive():
            served += 1
        time.sleep(0.1)
    return served


def assert_no_5xx_logged(server: Gunicorn) -> None:
    log = server.log_text()
    assert "WORKER TIMEOUT" not in log and "Traceback" not in log, log[-3000:]
    assert '" 500 ' not in log and '"status": 500' not in log, log[-3000:]


def _split(raw: bytes, marker: bytes) -> tuple[bytes, bytes]:
    at = raw.index(marker)
    return raw[:at], raw[at:]


def test_a_client_trickling_its_headers_is_cut_off_while_others_are_served(
    server: Gunicorn,
) -> None:
    reference = f"trickle-head-{uuid.uuid4().hex[:8]}"
    raw = ingest_request(server, reference)
    slow = Trickler(server.port, b"", raw)  # 1 byte / 0.2 s: ~60 s for the whole request
    slow.start()
    time.sleep(0.5)
    served = others_are_served(server, slow)
    slow.join(CUT_OFF_WITHIN + 5)
    assert not slow.is_alive()
    assert not slow.sent_all
    assert slow.elapsed < CUT_OFF_WITHIN, slow.elapsed
    assert slow.closed_without_answer or (slow.answer is not None and slow.answer[0] < 500)
    assert served >= 2, "other clients were not served while the slow one was connected"
    assert stored(server, reference) == 0
    assert_no_5xx_logged(server)


def test_a_client_trickling_its_body_gets_400_body_incomplete(server: Gunicorn) -> None:
    reference = f"trickle-body-{uuid.uuid4().hex[:8]}"
    head, tail = _split(ingest_request(server, reference), b"{")
    slow = Trickler(server.port, head, tail)
    slow.start()
    time.sleep(0.5)
    served = others_are_served(server, slow)
    slow.join(CUT_OFF_WITHIN + 5)
    assert not slow.is_alive() and not slow.sent_all
    assert slow.elapsed < CUT_OFF_WITHIN, slow.elapsed
    assert slow.answer is not None, "no answer"
    status, _, body = slow.answer
    assert status == 400, body
    assert json.loads(body)["code"] == "body_incomplete"
    assert served >= 2, "other clients were not served while the slow one was connected"
    assert stored(server, reference) == 0
    assert_no_5xx_logged(server)


def test_a_client_that_stalls_half_way_through_its_headers_is_cut_off(server: Gunicorn) -> None:
    raw = ingest_request(server, "stall")
    with connect(server.port, timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(raw[: len(raw) // 3])
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except OSError:
            pass
        elapsed = time.monotonic() - started
    assert elapsed < CUT_OFF_WITHIN, elapsed
    assert not data or int(data.split(b" ", 2)[1]) < 500, data[:200]
    assert_no_5xx_logged(server)


def test_as_many_slow_clients_as_workers_do_not_stop_the_service_for_long(
    server: Gunicorn,
) -> None:
    # Four trickling clients: both sync workers, or 4 of the 8 threads. Once they are cut off,
    # the server is at full strength again.
    slow: list[Any] = [
        Trickler(server.port, b"", ingest_request(server, f"many-{i}")) for i in range(4)
    ]
    for client in slow:
        client.start()
    time.sleep(0.3)
    started = time.monotonic()
    status, _, body = request(server.port, ingest_request(server, "after-the-slow-ones"), 30)
    waited = time.monotonic() - started
    assert status == 202, body
    assert waited < CUT_OFF_WITHIN, waited
    for client in slow:
        client.join(2 * CUT_OFF_WITHIN)
        # A connection queued behind busy threads gets its deadline when a thread takes it
        # up: at worst one deadline of waiting, then its own.
        assert not client.is_alive() and client.elapsed < CUT_OFF_WITHIN + READ_TIMEOUT
        assert client.closed_without_answer or client.answer[0] < 500
    assert_no_5xx_logged(server)

"""Group commit under a real gunicorn (bigmind/gunicorn_conf.py): a SIGTERM lets the requests in
flight finish with their commits, and a 202 is given for exactly the events stored."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import OPEN_SIGNAL, Gunicorn


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Gunicorn]:
    gunicorn = Gunicorn(var_dir=tmp_path / "gunicorn", workers=1, threads=8)
    with gunicorn.serving() as running:
        yield running


def _stored_references(server: Gunicorn, prefix: str) -> list[str]:
    url = server.env["DATABASE_URL"]
    sql = "SELECT reference FROM events_app_event WHERE reference LIKE {}"
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return [row[0] for row in conn.execute(sql.format("?"), [prefix + "%"])]
    import psycopg

    with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as conn:
        return [row[0] for row in conn.execute(sql.format("%s"), [prefix + "%"])]


def _send(port: int, raw_key: str, reference: str) -> tuple[int | None, str]:
    body = json.dumps(
        {
            "signal": OPEN_SIGNAL,
            "identity": {"type": "account", "id": f"acct-{reference[-2:]}"},
            "data": {"n": 1},
            "reference": reference,
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/events",
            body,
            {
                "Authorization": f"Bearer {raw_key}",
                "Content-Type": "application/json",
                "Idempotency-Key": reference,
            },
        )
        response = conn.getresponse()
        response.read()
        return response.status, ""
    except Exception as exc:
        return None, type(exc).__name__
    finally:
        conn.close()


def test_sigterm_answers_every_request_in_flight_and_202_means_stored(server: Gunicorn) -> None:
    prefix = f"term-{uuid.uuid4().hex[:8]}-"
    results: list[tuple[str, int | None, str]] = []
    answered_at: dict[str, float] = {}
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(10**9))

    def client() -> None:
        while not stop.is_set():
            with lock:
                reference = f"{prefix}{next(counter):06d}"
            status, error = _send(server.port, server.raw_key, reference)
            with lock:
                results.append((reference, status, error))
                answered_at[reference] = time.monotonic()
            if status is None:
                return  # the server is going away: this client stops

    threads = [threading.Thread(target=client) for _ in range(16)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(results) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.proc is not None
    signalled = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0, server.log_tail()
    stop.set()
    for thread in threads:
        thread.join(30)

    accepted = {ref for ref, status, _ in results if status == 202}
    others = [(ref, status, error) for ref, status, error in results if status != 202]
    stored = _stored_references(server, prefix)
    assert len(accepted) >= 300
    # Some were in flight when the signal came, and still got their 202.
    assert any(answered_at[ref] > signalled for ref in accepted)
    # Every request the server took on was answered, after its commit: the events stored are
    # exactly the 202s, each once. Requests refused at the door (the listener closed) store
    # nothing.
    assert sorted(stored) == sorted(accepted)
    assert all(status is None for _, status, _ in others), others[:5]
    assert "Traceback" not in server.log_text(), server.log_tail()

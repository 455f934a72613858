"""Hand-written abuse cases against a real gunicorn over raw sockets.

Each test sends the exact bytes of one nasty request and checks the answer: the app's JSON
envelope with its `code` when the request reaches the app, and the same envelope when gunicorn
refuses it first (oversized request line or headers, malformed framing, an unknown transfer
coding): bigmind.gunicorn_worker answers gunicorn's refusals in it. After every test the server must still serve a normal event, no worker may have
died, and neither the access log nor the error log may show a 5xx or a traceback.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import (
    OPEN_SIGNAL,
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
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hand-cases")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    # The repository's gunicorn configuration as production runs it, with two workers.
    gunicorn = Gunicorn(var_dir=Path(tmp_path_factory.mktemp("abuse-gunicorn")), workers=2)
    with gunicorn.serving():
        yield gunicorn


def post(
    server: Gunicorn,
    body: bytes,
    *,
    path: str = "/v1/events",
    content_type: str | None = "application/json",
    extra: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {server.raw_key}", "Content-Length": str(len(body))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers.update(extra or {})
    return request(server.port, http_request("POST", path, body, headers=headers), timeout)


def post_head(server: Gunicorn, headers: dict[str, str], *, path: str = "/v1/events") -> bytes:
    """The head of a POST with the key and a JSON Content-Type, plus `headers`; no body."""
    auth = {"Authorization": f"Bearer {server.raw_key}", "Content-Type": "application/json"}
    return http_request("POST", path, headers={**auth, **headers})


def get(server: Gunicorn, path: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {server.raw_key}"}
    return request(server.port, http_request("GET", path, headers=headers))


def envelope(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict[str, Any]:
    got, headers, body = answer
    assert got == status, (got, body[:300])
    assert headers["content-type"].startswith("application/json"), headers
    data = json.loads(body)
    assert data["success"] is False and data["code"] == code, data
    assert data["error"]
    return data


_FIVE_XX = re.compile(rb'HTTP/1\.[01]" 5\d\d |"status": 5\d\d')


@pytest.fixture(autouse=True)
def still_healthy(server: Gunicorn) -> Iterator[None]:
    """After the case: a normal event is accepted, no worker died, no 5xx or traceback logged."""
    workers = sorted(server.worker_pids())
    log_start = len(server.log_path.read_bytes())
    yield
    reference = f"health-{uuid.uuid4().hex[:8]}"
    status, _, body = post(server, json_bytes(event_body(reference=reference)))
    assert status == 202, body
    log = server.log_path.read_bytes()[log_start:]
    assert not _FIVE_XX.search(log), log.decode(errors="replace")[-3000:]
    assert b"Traceback" not in log and b"WORKER TIMEOUT" not in log, log.decode(errors="replace")
    assert sorted(server.worker_pids()) == workers, "a worker died"


# --- NUL bytes and lone surrogates --------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "a\\u0000b"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"k\\u0000": 1}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"v": ["x", "\\u0000"]}}',
    ],
    ids=["in-a-value", "in-a-key", "deep-in-data"],
)
def test_an_escaped_nul_is_refused_as_invalid_json(server: Gunicorn, body: bytes) -> None:
    data = envelope(post(server, body), 400, "invalid_json")
    assert "NUL" in data["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "a\x00b"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, "data": {"k\x00": 1}}',
        b'{"signal": "abuse-open"\x00, "identity": {"type": "account", "id": "1"}}',
    ],
    ids=["in-a-value", "in-a-key", "between-tokens"],
)
def test_a_raw_nul_byte_is_refused_as_invalid_json(server: Gunicorn, body: bytes) -> None:
    envelope(post(server, body), 400, "invalid_json")


@pytest.mark.parametrize(
    "body",
    [
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "\\ud800"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"\\udfff": 1}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"v": "\\udc00\\ud800"}}',
    ],
    ids=["high-in-a-value", "low-in-a-key", "reversed-pair"],
)
def test_an_escaped_lone_surrogate_is_refused_as_invalid_json(
    server: Gunicorn, body: bytes
) -> None:
    data = envelope(post(server, body), 400, "invalid_json")
    assert "surrogate" in data["error"]


def test_an_escaped_surrogate_pair_is_one_character_and_accepted(server: Gunicorn) -> None:
    reference = f"pair-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference, data={"emoji": "😀"}))
    status, _, answer = post(server, body)
    assert status == 202, answer
    event_id = json.loads(answer)["data"]["id"]
    _, _, full = get(server, f"/v1/events/{event_id}")
    assert json.loads(full)["data"]["data"] == {"emoji": "😀"}


def test_raw_surrogate_bytes_are_refused_as_invalid_utf8(server: Gunicorn) -> None:
    raw = '{"signal": "abuse-open", "identity": {"type": "account", "id": "\ud800"}}'
    data = envelope(post(server, raw.encode("utf-8", "surrogatepass")), 400, "invalid_json")
    assert "UTF-8" in data["error"]


# --- Invalid UTF-8 -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe{}",
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "\xc0\xaf"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "\xe2\x82"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "\xf8\x88\x80\x80\x80"}}',
        '{"signal": "abuse-open", "identity": {"type": "account", "id": "é"}}'.encode("latin-1"),
    ],
    ids=["bom-utf16", "overlong", "truncated-sequence", "five-byte-form", "latin-1"],
)
def test_a_body_that_is_not_utf8_is_refused(server: Gunicorn, body: bytes) -> None:
    data = envelope(post(server, body), 400, "invalid_json")
    assert "not valid UTF-8" in data["error"]


# --- Deep nesting ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opening", "closing"),
    [(b"[", b"]"), (b'{"a":', b"}")],
    ids=["arrays", "objects"],
)
@pytest.mark.parametrize("where", ["top-level", "in-data"])
def test_10000_levels_of_nesting_are_refused(
    server: Gunicorn, opening: bytes, closing: bytes, where: str
) -> None:
    nested = opening * 10_000 + b"1" + closing * 10_000
    if where == "in-data":
        body = (
            b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, "data": {"x": '
        )
        body += nested + b"}}"
    else:
        body = nested
    data = envelope(post(server, body), 400, "invalid_json")
    assert "nested" in data["error"]


def test_nesting_at_the_documented_limit_is_accepted(server: Gunicorn) -> None:
    # The body is level 1 and `data` level 2: `data` holding 30 more objects reaches 32.
    reference = f"deep-{uuid.uuid4().hex[:8]}"
    inner: Any = 1
    for _ in range(31):
        inner = {"a": inner}
    status, _, answer = post(server, json_bytes(event_body(reference=reference, data=inner)))
    assert status == 202, answer
    too_deep = json_bytes(event_body(data={"a": inner}))
    envelope(post(server, too_deep), 400, "invalid_json")


# --- 50 MB -------------------------------------------------------------------------------------
FIFTY_MB = 50 * 1024 * 1024


@pytest.mark.parametrize(
    "path", ["/v1/events", "/v1/events/batch", "/v1/events/validate"], ids=lambda p: p
)
def test_a_50_mb_body_with_content_length_is_refused_before_it_is_read(
    server: Gunicorn, path: str
) -> None:
    head = post_head(server, {"Content-Length": str(FIFTY_MB)}, path=path)
    started = time.monotonic()
    with connect(server.port, timeout=10) as sock:
        # Only the headers and the first 64 KiB: the answer must not wait for the rest.
        sock.sendall(head + b'{"data": "' + b"x" * 65536)
        answer = read_response(sock)
    envelope(answer, 413, "body_too_large")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "path", ["/v1/events", "/v1/events/batch", "/v1/events/validate"], ids=lambda p: p
)
def test_a_50_mb_chunked_body_is_refused_after_the_limit_not_the_end(
    server: Gunicorn, path: str
) -> None:
    head = post_head(server, {"Transfer-Encoding": "chunked"}, path=path)
    chunk = b"x" * 65536
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    stop = threading.Event()

    def send_all(sock: socket.socket) -> None:
        nonlocal sent
        try:
            sock.sendall(head + b"10\r\n" + b'{"data": "xxxxx"' + b"\r\n")
            while sent < FIFTY_MB and not stop.is_set():
                sock.sendall(framed)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: the point of the test

    started = time.monotonic()
    with connect(server.port, timeout=30) as sock:
        sender = threading.Thread(target=send_all, args=(sock,), daemon=True)
        sender.start()
        answer = read_response(sock)
        elapsed = time.monotonic() - started
        stop.set()
    sender.join(10)
    envelope(answer, 413, "body_too_large")
    assert elapsed < 10
    assert sent < FIFTY_MB // 2, f"the server read {sent} bytes before answering"


# --- Numbers beyond float range ----------------------------------------------------------------
@pytest.mark.parametrize(
    "number",
    [b"1e400", b"-1e400", b"1E+309", b"1" * 5000, b"-" + b"9" * 5000, b"NaN", b"-Infinity"],
    ids=["1e400", "-1e400", "1E+309", "10**5000", "-10**5000", "NaN", "-Infinity"],
)
def test_a_number_no_double_can_hold_is_refused(server: Gunicorn, number: bytes) -> None:
    body = b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, "data": {"x": '
    envelope(post(server, body + number + b"}}"), 400, "invalid_json")


def test_a_large_but_finite_number_is_stored_exactly(server: Gunicorn) -> None:
    reference = f"num-{uuid.uuid4().hex[:8]}"
    data = {"big": 10**300, "max": 1.7976931348623157e308, "tiny": 5e-324}
    status, _, answer = post(server, json_bytes(event_body(reference=reference, data=data)))
    assert status == 202, answer
    _, _, full = get(server, f"/v1/events/{json.loads(answer)['data']['id']}")
    back = json.loads(full)["data"]["data"]
    assert back["big"] == 10**300
    # The same doubles; PostgreSQL's jsonb keeps numbers as decimals and may write one back
    # in another form (1.7976931348623157e308 as its 309 digits), the same JSON number.
    assert float(back["max"]) == data["max"] and float(back["tiny"]) == data["tiny"]


# --- Duplicate keys ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"signal": "abuse-open", "signal": "other", "identity": {"type": "account", "id": "1"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1", "id": "2"}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"a": {"b": 1, "b": 1}}}',
        b'{"signal": "abuse-open", "identity": {"type": "account", "id": "1"}, '
        b'"data": {"\\u0061": 1, "a": 2}}',
    ],
    ids=["top-level", "identity", "nested-in-data", "escaped-equal-key"],
)
def test_duplicate_keys_are_refused(server: Gunicorn, body: bytes) -> None:
    data = envelope(post(server, body), 400, "invalid_json")
    assert "duplicate key" in data["error"]


# --- Content types -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        None,
        "application/json; charset=latin-1",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=xyz",
        "application/xml",
    ],
    ids=["text-plain", "missing", "json-latin-1", "form", "multipart", "xml"],
)
def test_a_json_body_is_read_as_json_whatever_the_content_type(
    server: Gunicorn, content_type: str | None
) -> None:
    # Documented in docs/api.md: the body is parsed as UTF-8 JSON whatever Content-Type says.
    reference = f"ct-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference, data={"name": "Zoë"}))
    status, _, answer = post(server, body, content_type=content_type)
    assert status == 202, answer
    assert stored(server, reference) == 1


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-www-form-urlencoded", b"signal=abuse-open&identity.type=account"),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="signal"\r\n\r\nabuse-open\r\n--xyz--\r\n',
        ),
        ("text/plain", b"signal: abuse-open"),
        ("application/json; charset=latin-1", '{"é": 1}'.encode("latin-1")),
    ],
    ids=["form", "multipart", "text", "latin-1-bytes"],
)
def test_a_body_in_another_format_is_refused_as_invalid_json(
    server: Gunicorn, content_type: str, body: bytes
) -> None:
    envelope(post(server, body, content_type=content_type), 400, "invalid_json")


# --- Oversized request line and headers (gunicorn's own refusals, in the envelope) -------------
_GUNICORN_CODES = {
    400: "bad_request",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    501: "unsupported_transfer_coding",
}


def _gunicorn_refusal(answer: tuple[int, dict[str, str], bytes], status: int) -> None:
    """Refused by gunicorn before the app, answered by bigmind.gunicorn_worker in the
    envelope, with an X-Request-ID and a closed connection."""
    envelope(answer, status, _GUNICORN_CODES[status])
    _, headers, body = answer
    assert headers["content-length"] == str(len(body))
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers
    assert headers["connection"] == "close"


def test_a_url_over_8_kb_is_refused_by_gunicorn_with_414(server: Gunicorn) -> None:
    path = "/v1/events?reference=" + "a" * 9000
    _gunicorn_refusal(get(server, path), 414)


def test_an_unknown_transfer_coding_is_refused_by_gunicorn_with_501(server: Gunicorn) -> None:
    raw = post_head(server, {"Transfer-Encoding": "br, chunked"})
    _gunicorn_refusal(request(server.port, raw + b"0\r\n\r\n"), 501)


def test_a_100_kb_header_is_refused_by_gunicorn_with_431(server: Gunicorn) -> None:
    body = json_bytes(event_body())
    _gunicorn_refusal(post(server, body, extra={"X-Big": "a" * 100_000}), 431)


def test_200_headers_are_refused_by_gunicorn_with_431(server: Gunicorn) -> None:
    body = json_bytes(event_body())
    extra = {f"X-Header-{i}": "v" for i in range(200)}
    _gunicorn_refusal(post(server, body, extra=extra), 431)


def test_an_oversized_authorization_header_answers_401_in_the_envelope(server: Gunicorn) -> None:
    headers = {"Authorization": "Bearer " + "k" * 8000, "Content-Type": "application/json"}
    body = json_bytes(event_body())
    headers["Content-Length"] = str(len(body))
    answer = request(server.port, http_request("POST", "/v1/events", body, headers=headers))
    assert answer[0] == 401
    assert json.loads(answer[2])["success"] is False


# --- HTTP versions and Expect -------------------------------------------------------------------
def test_an_http_1_0_request_without_host_is_served(server: Gunicorn) -> None:
    reference = f"h10-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference))
    raw = (
        b"POST /v1/events HTTP/1.0\r\n"
        + f"Authorization: Bearer {server.raw_key}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _, answer = request(server.port, raw)
    assert status == 202, answer
    assert stored(server, reference) == 1


def test_expect_100_continue_gets_a_100_before_the_body(server: Gunicorn) -> None:
    reference = f"expect-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference))
    head = post_head(server, {"Content-Length": str(len(body)), "Expect": "100-continue"})
    with connect(server.port, timeout=10) as sock:
        sock.sendall(head)
        interim = sock.recv(1024)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        sock.sendall(body)
        status, _, answer = read_response(sock)
    assert status == 202, answer
    assert stored(server, reference) == 1


def test_expect_100_continue_on_a_50_mb_body_is_refused_without_sending_it(
    server: Gunicorn,
) -> None:
    head = post_head(server, {"Content-Length": str(FIFTY_MB), "Expect": "100-continue"})
    with connect(server.port, timeout=10) as sock:
        sock.sendall(head)
        # gunicorn sends "100 Continue" before calling the app; the app then refuses on the
        # length alone. The client never sends a byte of the body.
        answer = read_response(sock)
    envelope(answer, 413, "body_too_large")


def test_an_unknown_expectation_is_refused_by_gunicorn_with_417(server: Gunicorn) -> None:
    body = json_bytes(event_body())
    _gunicorn_refusal(post(server, body, extra={"Expect": "200-ok"}), 417)


# --- Content-Length that does not match the body -----------------------------------------------
def test_a_body_shorter_than_its_content_length_is_refused_when_the_client_stops(
    server: Gunicorn,
) -> None:
    reference = f"short-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference))
    head = post_head(server, {"Content-Length": str(len(body) + 100)})
    with connect(server.port, timeout=10) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)  # the client is done: 100 bytes will never come
        answer = read_response(sock)
    envelope(answer, 400, "body_incomplete")
    assert stored(server, reference) == 0


def test_a_body_longer_than_its_content_length_is_cut_at_the_length(server: Gunicorn) -> None:
    reference = f"long-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference))
    raw = post_head(server, {"Content-Length": str(len(body) - 2)})
    envelope(request(server.port, raw + body), 400, "invalid_json")
    assert stored(server, reference) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Length": "-1"},
        {"Content-Length": "abc"},
        {"Content-Length": "10, 20"},
        {"Content-Length": "10", "Transfer-Encoding": "chunked"},
        {"Transfer-Encoding": "chunked, identity"},
    ],
    ids=["negative", "not-a-number", "two-values", "length-and-chunked", "bad-coding-list"],
)
def test_malformed_framing_is_refused_by_gunicorn_with_400(
    server: Gunicorn, headers: dict[str, str]
) -> None:
    raw = http_request(
        "POST",
        "/v1/events",
        headers={"Authorization": f"Bearer {server.raw_key}", **headers},
    )
    _gunicorn_refusal(request(server.port, raw + b'{"signal": "x"}'), 400)


def test_a_chunked_body_within_the_limit_is_accepted(server: Gunicorn) -> None:
    reference = f"chunk-{uuid.uuid4().hex[:8]}"
    body = json_bytes(event_body(reference=reference))
    half = len(body) // 2
    framed = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:half], body[half:])
    )
    raw = post_head(server, {"Transfer-Encoding": "chunked"})
    status, _, answer = request(server.port, raw + framed + b"0\r\n\r\n")
    assert status == 202, answer
    assert stored(server, reference) == 1


@pytest.mark.parametrize(
    ("framed", "close"),
    [
        (b"zz\r\n{}\r\n0\r\n\r\n", False),
        (b'5\r\n{"a":1}\r\n0\r\n\r\n', False),
        (b'100\r\n{"signal": "abuse-open"', True),
    ],
    ids=["bad-chunk-size", "chunk-longer-than-its-size", "connection-ends-mid-chunk"],
)
def test_a_broken_chunked_body_is_refused_as_incomplete(
    server: Gunicorn, framed: bytes, close: bool
) -> None:
    raw = post_head(server, {"Transfer-Encoding": "chunked"})
    with connect(server.port, timeout=10) as sock:
        sock.sendall(raw + framed)
        if close:
            sock.shutdown(socket.SHUT_WR)
        answer = read_response(sock)
    envelope(answer, 400, "body_incomplete")


# --- Every /v1 answer in the envelope, through gunicorn (tests/events_app/test_api_envelope.py
# walks every route and method through Django's test client) -----------------------------------
@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/v1/events/", 404, "not_found"),
        ("POST", "/v1/event", 404, "not_found"),
        ("POST", "/v1/nope", 404, "not_found"),
        ("POST", "/v1/events/batch/", 404, "not_found"),
        ("DELETE", "/v1/events/validate/", 404, "not_found"),
        ("GET", "/v1", 404, "not_found"),
        ("PUT", "/v1/events", 405, "method_not_allowed"),
        ("POST", "/v1/openapi.yaml", 405, "method_not_allowed"),
    ],
)
def test_unknown_paths_and_methods_answer_in_the_envelope(
    server: Gunicorn, method: str, path: str, status: int, code: str
) -> None:
    body = json_bytes(event_body())
    headers = {
        "Authorization": f"Bearer {server.raw_key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    answer = request(server.port, http_request(method, path, body, headers=headers))
    envelope(answer, status, code)
    assert answer[1]["content-length"] == str(len(answer[2]))
    if status == 405:
        assert answer[1]["allow"]


def test_options_and_head_answer_json(server: Gunicorn) -> None:
    auth = {"Authorization": f"Bearer {server.raw_key}"}
    status, headers, body = request(
        server.port, http_request("OPTIONS", "/v1/events", headers=auth)
    )
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["data"]["methods"] == ["GET", "POST", "HEAD", "OPTIONS"]
    for path, expected in (("/v1/signals", 200), ("/v1/nope", 404), ("/v1/events/batch", 405)):
        status, headers, body = request(server.port, http_request("HEAD", path, headers=auth))
        assert (status, body) == (expected, b""), path
        assert headers["content-type"] == "application/json", path


def test_the_signal_used_by_these_cases_exists(server: Gunicorn) -> None:
    status, _, body = get(server, f"/v1/signals/{OPEN_SIGNAL}")
    assert status == 200, body

"""bigmind.gunicorn_worker answers gunicorn's own refusals in the API's envelope (issue #12).

Both worker classes, without a server: gunicorn's handle_error runs as in a worker, on one end
of a socket pair. tests/abuse/test_hand_cases.py checks the same through a real gunicorn.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import pytest
from gunicorn.http.errors import (
    InvalidRequestLine,
    LimitRequestHeaders,
    LimitRequestLine,
    UnsupportedTransferCoding,
)

from bigmind.gunicorn_worker import ReadDeadlineSyncWorker, ReadDeadlineThreadWorker


class _Log:
    def __init__(self) -> None:
        self.logger = logging.getLogger("test.gunicorn")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)


def _answer(worker_class: type, exc: BaseException) -> tuple[str, dict[str, str], bytes]:
    worker = worker_class.__new__(worker_class)  # handle_error needs nothing of __init__
    worker.log = _Log()
    server, client = socket.socketpair()
    with server, client:
        worker.handle_error(None, server, ("127.0.0.1", 5000), exc)
        server.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := client.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status_line, headers, body


@pytest.mark.parametrize("worker_class", [ReadDeadlineSyncWorker, ReadDeadlineThreadWorker])
@pytest.mark.parametrize(
    ("exc", "status_line", "code", "error"),
    [
        (
            LimitRequestLine(9022, 8190),
            "HTTP/1.1 414 URI Too Long",
            "uri_too_long",
            "URI Too Long: Request Line is too large (9022 > 8190)",
        ),
        (
            UnsupportedTransferCoding("br, chunked"),
            "HTTP/1.1 501 Not Implemented",
            "unsupported_transfer_coding",
            "Not Implemented: Unsupported transfer coding: 'br, chunked'",
        ),
        (
            LimitRequestHeaders("limit request headers fields"),
            "HTTP/1.1 431 Request Header Fields Too Large",
            "headers_too_large",
            None,
        ),
        (InvalidRequestLine("GET <html>"), "HTTP/1.1 400 Bad Request", "bad_request", None),
        (RuntimeError("a bug"), "HTTP/1.1 500 Internal Server Error", "internal_error", None),
    ],
)
def test_gunicorn_refusals_are_written_in_the_envelope(
    worker_class: type, exc: BaseException, status_line: str, code: str, error: str | None
) -> None:
    got_status, headers, body = _answer(worker_class, exc)
    assert got_status == status_line
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"] == "close"
    assert len(headers["x-request-id"]) == 32
    data = json.loads(body)
    assert data["success"] is False and data["code"] == code
    if error is not None:
        assert data["error"] == error
    if code == "internal_error":
        assert data["error"] == "Internal server error"  # never the exception's text

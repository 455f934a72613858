"""Calling the WSGI application in process (no server, no network), for the CPU benchmarks."""

from __future__ import annotations

import io
from typing import Any


def wsgi_post(path: str, body: bytes, **headers: str) -> dict[str, Any]:
    """The WSGI environ of a JSON POST to `path` from 127.0.0.1 (`headers` are extra CGI
    variables, e.g. HTTP_AUTHORIZATION)."""
    return {
        **headers,
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
    }


def wsgi_call(app: Any, environ: dict[str, Any]) -> str:
    """One request through `app`, its body read and closed as a server would; the status line."""
    status = [""]

    def start_response(line: str, headers: list[Any], exc_info: Any = None) -> None:
        status[0] = line

    result = app(environ, start_response)
    for _chunk in result:
        pass
    result.close()
    return status[0]

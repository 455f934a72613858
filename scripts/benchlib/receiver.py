"""A lean webhook receiver for benchmarks: its own process, asyncio, HTTP/1.1 keep-alive.

It stands for the customer's server, which would run on another machine: it answers every POST
`200 {}` as soon as the body is read, and writes one JSON line per request to a file (the
`Bigmind-Webhook-Id` and `Bigmind-Signature` headers and the raw body, latin-1 decoded so that
every byte survives), for the benchmark to check afterwards. It parses only what it needs
(request line, headers, Content-Length), so that it takes as little of the shared CPU as a
Python server can. The tests' receiver (tests/webhook_receiver.py) records more and can
misbehave on purpose; this one only measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

_ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Keep-Alive: timeout=60\r\n\r\n{}"
)


async def _serve(sock: socket.socket, out: IO[str]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers: dict[str, str] = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name:
                        headers[name.strip().lower().decode("latin-1")] = value.strip().decode(
                            "latin-1"
                        )
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                out.write(
                    json.dumps(
                        {
                            "id": headers.get("bigmind-webhook-id", ""),
                            "signature": headers.get("bigmind-signature", ""),
                            "body": body.decode("latin-1"),
                        }
                    )
                    + "\n"
                )
                writer.write(_ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    """`python -m benchlib.receiver <port> <records file>`; stops on SIGTERM."""
    port, path = int(sys.argv[1]), sys.argv[2]
    sock = socket.create_server(("127.0.0.1", port), backlog=256)
    with open(path, "w", buffering=1 << 16) as out:
        loop = asyncio.new_event_loop()
        loop.add_signal_handler(signal.SIGTERM, loop.stop)
        task = loop.create_task(_serve(sock, out))
        loop.run_forever()
        task.cancel()


class LeanReceiver:
    """The receiver process: `url`, `stop()`, then `records()`."""

    def __init__(self, workdir: Path, *, nice: int = 0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        self.path = workdir / "received.jsonl"
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchlib.receiver", str(self.port), str(self.path)],
            env=env,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the receiver did not start") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def records(self) -> list[dict[str, str]]:
        with open(self.path) as found:
            return [json.loads(line) for line in found if line.strip()]


if __name__ == "__main__":
    main()

"""A small TCP load balancer for the cluster rehearsal (scripts/rehearse.py): round-robin over
the web nodes, one backend per client connection, bytes copied both ways.

A backend whose connect fails (refused: its node was killed) is skipped for the connection and
left out for `--down-for` seconds; the client then reaches the next one, as a real load
balancer's health check would arrange. A backend that dies with a request in flight closes the
client's connection without an answer, which the client retries with its Idempotency-Key.

    python scripts/benchlib/lb.py --listen 57450 --backend web-1=127.0.0.1:57441 \
        --backend web-2=127.0.0.1:57442 --stats var/rehearse/lb.json

Every second (and on SIGTERM) it writes `--stats`: per backend, the connections it was given
and the connect failures. Only the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Backend:
    name: str
    host: str
    port: int
    connections: int = 0
    connect_failures: int = 0
    down_until: float = 0.0


class Balancer:
    def __init__(self, backends: list[Backend], down_for: float, stats: Path | None) -> None:
        self.backends = backends
        self.down_for = down_for
        self.stats = stats
        self.next = 0
        self.no_backend = 0  # client connections closed because every backend was down

    def order(self) -> list[Backend]:
        """The backends to try for one connection: round-robin, those marked down last."""
        start = self.next
        self.next = (self.next + 1) % len(self.backends)
        turn = self.backends[start:] + self.backends[:start]
        now = time.monotonic()
        return [b for b in turn if b.down_until <= now] + [b for b in turn if b.down_until > now]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for backend in self.order():
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(backend.host, backend.port), timeout=2
                )
            except (OSError, TimeoutError):
                backend.connect_failures += 1
                backend.down_until = time.monotonic() + self.down_for
                continue
            backend.connections += 1
            backend.down_until = 0.0
            break
        if upstream is None:
            self.no_backend += 1
            writer.close()
            return
        up_reader, up_writer = upstream
        await asyncio.gather(
            self.pipe(reader, up_writer), self.pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # A half-close would be enough for HTTP/1.1 with Connection: close, but a backend
            # killed mid-request must end the client's connection too: close both ways.
            with contextlib.suppress(OSError):
                sink.close()

    def write_stats(self) -> None:
        if self.stats is None:
            return
        data = {
            "backends": {
                b.name: {"connections": b.connections, "connect_failures": b.connect_failures}
                for b in self.backends
            },
            "no_backend": self.no_backend,
        }
        partial = self.stats.with_suffix(".tmp")
        partial.write_text(json.dumps(data))
        os.replace(partial, self.stats)

    async def stats_loop(self) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(1)


async def serve(args: argparse.Namespace) -> None:
    backends = []
    for spec in args.backend:
        name, _, address = spec.rpartition("=")
        host, _, port = address.rpartition(":")
        backends.append(Backend(name or address, host, int(port)))
    balancer = Balancer(backends, args.down_for, Path(args.stats) if args.stats else None)
    server = await asyncio.start_server(
        balancer.handle, "127.0.0.1", args.listen, backlog=2048, reuse_address=True
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stats = asyncio.create_task(balancer.stats_loop())
    print(f"lb: listening on 127.0.0.1:{args.listen}", flush=True)
    async with server:
        await stop.wait()
    stats.cancel()
    balancer.write_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--backend", action="append", required=True, help="name=host:port")
    parser.add_argument("--down-for", type=float, default=1.0)
    parser.add_argument("--stats", default="")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()

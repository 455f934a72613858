#!/usr/bin/env python3
"""CPU per request of the bare views and of POST /v1/events, in process: no server, no network.

    .venv/bin/python scripts/bench_inprocess.py [--requests N] [--rounds R]

Needs the database `make bench` prepares (`bench`, with the demo data; run `make bench` once
first) and Redis. The WSGI application is called directly on one thread, as gunicorn's threads
would call it, for `/bench/bare`, `/bench/bare-insert` and `POST /v1/events` with group commit
on (the process's writer thread stores each row: groups of one) and off (the request thread
stores it). The figure is the CPU time of the whole process (the writer thread included) per
request, the minimum of the rounds (other jobs on the machine only ever add time); wall time
beside it includes the waits for PostgreSQL and Redis. What ingest costs beyond the bare view is
what decides `make bench`'s ratios (docs/benchmarks.md, "Why the ratio targets are out of reach
here").
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from benchlib.events import ENDPOINTS_BY_NAME, Endpoint, body_for
from benchlib.stack import DEMO_API_KEY, ROOT, bench_env
from benchlib.wsgi import wsgi_call, wsgi_post


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])  # type: ignore[union-attr]
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--requests", type=int, default=1500, help="per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--governance",
        action="store_true",
        help="also ingest-plain, ingest-governed and ingest-flagged (make bench-governance's "
        "endpoints; their signals are made by make bench's set-up)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.update(bench_env(args))
    os.environ["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1"

    from django.conf import settings
    from django.core.wsgi import get_wsgi_application

    app = get_wsgi_application()
    ingest = ENDPOINTS_BY_NAME["ingest"]
    counter = [0]

    def call(path: str, auth: bool, endpoint: Endpoint = ingest) -> None:
        counter[0] += 1
        n = counter[0]
        # The body `make bench` sends for the endpoint (the bare views read ingest's alike).
        body = body_for(endpoint, "inprocess", offset=0, first=n, identities=10_000)
        headers = {"HTTP_AUTHORIZATION": f"Bearer {DEMO_API_KEY}"} if auth else {}
        status = wsgi_call(app, wsgi_post(path, body, **headers))
        if not status.startswith("20"):
            raise RuntimeError(f"{path} answered {status}")

    def measure(
        path: str, auth: bool, count: int, endpoint: Endpoint = ingest
    ) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            call(path, auth, endpoint)
        return (
            (time.process_time() - cpu) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6,
        )

    variants = [
        ("bare", "/bench/bare", False, True, ingest),
        ("bare-insert", "/bench/bare-insert", False, True, ingest),
        ("ingest, group commit on", "/v1/events", True, True, ingest),
        ("ingest, group commit off", "/v1/events", True, False, ingest),
    ]
    if args.governance:
        variants += [
            (name, "/v1/events", True, True, ENDPOINTS_BY_NAME[name])
            for name in ("ingest-plain", "ingest-governed", "ingest-flagged")
        ]
    best: dict[str, tuple[float, float]] = {}
    for _name, path, auth, group, endpoint in variants:  # warm-up: caches, prepared statements
        settings.BIGMIND_GROUP_COMMIT = group
        measure(path, auth, 300, endpoint)
    for _ in range(args.rounds):  # the rounds interleave the variants
        for name, path, auth, group, endpoint in variants:
            settings.BIGMIND_GROUP_COMMIT = group
            cpu, wall = measure(path, auth, args.requests, endpoint)
            if name not in best or cpu < best[name][0]:
                best[name] = (cpu, wall)
    bare = best["bare"][0]
    print("| request | CPU µs per request | extra over bare | wall µs per request |")
    print("|---|---:|---:|---:|")
    for name, (cpu, wall) in best.items():
        extra = "-" if name == "bare" else f"{cpu - bare:.0f}"
        print(f"| {name} | {cpu:.0f} | {extra} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

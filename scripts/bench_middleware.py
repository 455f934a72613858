#!/usr/bin/env python3
"""What each middleware costs per API request: CPU microseconds, measured in process.

    .venv/bin/python scripts/bench_middleware.py [--requests N] [--rounds R] [--path /v1/...]

The WSGI application is called directly (no server, no network) on one thread with an
unauthenticated POST to `--path` (default: /v1/events, answered 401 by the ingest view
before any database or cache call, so only Django, the middleware and the view's
authentication step are measured), with the first k entries of settings.MIDDLEWARE for every
k from none to all (a middleware may need the ones before it: auth needs sessions). A
middleware's cost is the CPU time per request with it minus without it, in that order; each
variant keeps the minimum of its rounds (other jobs on the machine only ever add time), and the
rounds interleave the variants. Needs no database, cache or broker: the settings are the
embedded defaults.

docs/benchmarks.md ("What each middleware costs") has the last run and what was done with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

from benchlib.stack import ROOT
from benchlib.wsgi import wsgi_call, wsgi_post

UNAUTHENTICATED_BODY = (
    b'{"signal":"visited-documentation-page","identity":{"type":"account","id":"a"}}'
)


def _cpu_per_request(app: Any, path: str, requests: int) -> float:
    started = time.process_time()
    for _ in range(requests):
        wsgi_call(app, wsgi_post(path, UNAUTHENTICATED_BODY))
    return (time.process_time() - started) / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="/v1/events")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")
    os.environ.setdefault("DJANGO_SECRET_KEY", "middleware-bench-only-0123456789abcdefghijklmnop")
    os.environ["LOG_LEVEL"] = "WARNING"  # the request line is measured, not written
    for name in ("DATABASE_URL", "REDIS_URL", "CACHE_URL", "CELERY_BROKER_URL"):
        os.environ.pop(name, None)
    os.environ.setdefault("BIGMIND_VAR_DIR", str(ROOT / "var" / "bench-middleware"))

    import django
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler

    django.setup()
    full = list(settings.MIDDLEWARE)

    def app_with_first(count: int) -> WSGIHandler:
        settings.MIDDLEWARE = full[:count]
        return WSGIHandler()

    apps = [app_with_first(count) for count in range(len(full) + 1)]
    settings.MIDDLEWARE = full
    samples: list[list[float]] = [[] for _ in apps]
    for app in apps:
        _cpu_per_request(app, args.path, 200)  # warm up: imports, caches, the URL resolver
    for _ in range(args.rounds):
        for count, app in enumerate(apps):
            samples[count].append(_cpu_per_request(app, args.path, args.requests))
    best = [min(runs) for runs in samples]

    print(
        f"## Middleware cost: POST {args.path} (unauthenticated: 401 in the ingest view), "
        f"{args.requests} requests x {args.rounds} rounds, CPU per request, minimum of rounds"
    )
    print()
    print(
        f"No middleware: {best[0]:.1f} µs per request; all: {best[-1]:.1f} "
        f"(median of rounds {statistics.median(samples[-1]):.1f})"
    )
    print()
    print("| middleware (added in settings order) | µs per request | share of all |")
    print("|---|---:|---:|")
    for count, name in enumerate(full, start=1):
        cost = best[count] - best[count - 1]
        print(f"| `{name}` | {cost:.1f} | {cost / best[-1] * 100:.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

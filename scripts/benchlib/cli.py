"""The command-line options the benchmark scripts have in common."""

from __future__ import annotations

import argparse
import os
import shutil
from urllib.parse import urlsplit


def parser_for(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the script's docstring."""
    return argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )


def add_service_arguments(
    parser: argparse.ArgumentParser, *, database: str, cache_db: int, broker_db: int, broker: str
) -> None:
    """--database-url (a database of its own, `database`), --redis-url, --broker-url."""
    parser.add_argument("--database-url", default=f"postgres://postgres@127.0.0.1:5432/{database}")
    parser.add_argument(
        "--redis-url", default=f"redis://127.0.0.1:6379/{cache_db}", help="the cache"
    )
    parser.add_argument("--broker-url", default=f"redis://127.0.0.1:6379/{broker_db}", help=broker)


def add_server_arguments(
    parser: argparse.ArgumentParser,
    *,
    connections: str = "wrk connections",
    threads: str = "wrk threads",
) -> None:
    """gunicorn's processes and threads; the load generator's connections and threads."""
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="gunicorn worker processes (0: bigmind/gunicorn_conf.py's default)",
    )
    parser.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="threads per gunicorn worker (0: bigmind/gunicorn_conf.py's default)",
    )
    parser.add_argument("--concurrency", "-c", type=int, default=16, help=connections)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help=threads)


def finish_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """For the scripts that load with wrk and run Celery workers: wrk, the WSGI application,
    the broker's database number (its workers are counted there)."""
    args.wrk = shutil.which("wrk")
    if not args.wrk:
        parser.error("wrk is not installed (apt-get install -y wrk)")
    args.loadgen = "wrk"
    args.app = "bigmind.wsgi:application"
    args.broker_db = int(urlsplit(args.broker_url).path.lstrip("/") or 0)
    if args.broker_url == args.redis_url:
        parser.error("the broker and the cache must be different Redis databases")

#!/usr/bin/env python3
"""Where a drain's CPU goes, in one process: the worker's side of processing without Celery.

A diagnostic, not a benchmark (`make bench-compare` is the comparison that counts): it resets
the oldest `--events` events of a database to `pending` and drains them in this process, as a
single-event message's task does (`events_process(..., drain=True)`: chunks of
BIGMIND_DRAIN_CHUNK_SIZE), `--repeat` times, and prints this process's CPU and wall time per
event for each pass; with `--profile`, `cProfile`'s heaviest functions of the last pass.

Run it from the root of the tree whose code you measure (a `git worktree` of another commit
works: its `events_process` is used, with or without `received_at`), against a database that
tree migrated and that holds events, such as one `make bench-compare` left behind:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench_compare_head_process \\
    DJANGO_SECRET_KEY=profile-only REDIS_URL=redis://127.0.0.1:6379/10 \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/11 \\
    .venv/bin/python scripts/profile_drain.py --events 3000 --profile

It rewrites the events' status and forgets their results and rollups, so each pass does all of
processing's work (the rollups are applied again: aggregates grow). Use a benchmark's
database, never one whose data matters.
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import os
import pstats
import sys
import time

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", "-n", type=int, default=3000, help="events per pass")
    parser.add_argument("--repeat", "-r", type=int, default=3, help="passes")
    parser.add_argument("--profile", action="store_true", help="cProfile the last pass")
    parser.add_argument("--top", type=int, default=30, help="functions printed by --profile")
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection

    from events_app.pipeline.processing import events_process

    with_times = "received_at" in inspect.signature(events_process).parameters
    profile: cProfile.Profile | None = None
    for index in range(args.repeat):
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE events_app_event SET status = 'pending', attempts = 0, claimed_at = NULL,"
                " due_at = NULL, processed_at = NULL, result = NULL, rollup = NULL WHERE id IN"
                " (SELECT id FROM events_app_event ORDER BY received_at LIMIT %s)",
                [args.events],
            )
            cursor.execute(
                "SELECT id, received_at FROM events_app_event WHERE status = 'pending'"
                " ORDER BY received_at LIMIT 1"
            )
            first = cursor.fetchone()
        if first is None:
            print("no events in this database", file=sys.stderr)
            return 1
        message = {"event_ids": [str(first[0])]}
        if with_times:
            message["received_at"] = [first[1].isoformat()]
        last = index == args.repeat - 1
        profile = cProfile.Profile() if args.profile and last else None
        cpu, wall = time.process_time(), time.monotonic()
        if profile is not None:
            profile.enable()
        events_process(**message, drain=True)  # type: ignore[arg-type]
        if profile is not None:
            profile.disable()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        print(
            f"pass {index + 1}: {args.events} events, CPU {cpu / args.events * 1e3:.4f} ms"
            f" and wall {wall / args.events * 1e3:.4f} ms per event"
        )
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

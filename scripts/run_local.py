"""Start the web server, a Celery worker and Celery beat together; Ctrl-C (or any of them
dying) stops all three.

The web server is gunicorn with the production configuration (bigmind/gunicorn_conf.py:
threaded workers, so ingest's group commit works as it does in production), on --host:--port.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    args = parser.parse_args()
    # The local .env (`make run` writes it; bigmind/local_env.py), under the real environment:
    # the three processes then use the secret key and settings that manage.py uses.
    sys.path.insert(0, str(ROOT))
    from bigmind.local_env import env_file_load

    env_file_load()
    python = sys.executable
    commands = {
        "web": [
            python,
            "-m",
            "gunicorn",
            "-c",
            "bigmind/gunicorn_conf.py",
            "--bind",
            f"{args.host}:{args.port}",
            "bigmind.wsgi:application",
        ],
        "worker": [
            python,
            "-m",
            "celery",
            "-A",
            "bigmind",
            "worker",
            "-Q",
            "events.process,default",
            "--loglevel",
            "INFO",
            "--concurrency",
            "2",
            # mingle/gossip broadcast between workers; the filesystem broker has one worker.
            "--without-mingle",
            "--without-gossip",
        ],
        # Webhook sending (queue `webhooks`): its own worker, with more processes than the
        # per-endpoint in-flight cap, so one slow receiver cannot hold them all (prefork: its
        # time limits apply; docs/webhooks.md, "Sending").
        "webhooks": [
            python,
            "-m",
            "celery",
            "-A",
            "bigmind",
            "worker",
            "-Q",
            "webhooks",
            "--pool",
            "prefork",
            "--concurrency",
            "6",
            "--hostname",
            "webhooks@%h",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        # The periodic sweep (events.sweep) that re-queues events whose publish was lost.
        "beat": [python, "-m", "celery", "-A", "bigmind", "beat", "--loglevel", "INFO"],
    }
    procs = {name: subprocess.Popen(cmd, start_new_session=True) for name, cmd in commands.items()}
    print(
        f"web on http://{args.host}:{args.port}/, a Celery worker and Celery beat are running; "
        "Ctrl-C stops them."
    )

    def stop(*_: object) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        while all(proc.poll() is None for proc in procs.values()):
            time.sleep(0.5)
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        print(f"{', '.join(dead)} exited; stopping the rest", file=sys.stderr)
        stop()
        return 1
    except KeyboardInterrupt:
        stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())

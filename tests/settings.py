"""The test session's Django settings: bigmind.settings, after this pytest-xdist worker has been
given what it must not share with the other workers (nothing changes outside xdist).

pyproject.toml names this module for pytest-django, which imports it before any conftest: the
environment must change before bigmind.settings reads it. The subprocesses the tests start
(gunicorn, Celery workers, manage.py) inherit the changed environment and load bigmind.settings
itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Redis ships with 16 databases (0-15).
REDIS_DATABASES = 16


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _with_redis_db(url: str, db: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def isolate_xdist_worker(environ: MutableMapping[str, str]) -> None:
    """Give this xdist worker what it must not share with the others.

    Each worker has its own test database already (pytest-django names them test_<name>_gw0...).
    The rest is done here, in `environ`, so that the subprocesses inherit it:
    - BIGMIND_VAR_DIR gets the worker id appended: the SQLite cache, the filesystem broker's
      folders and the server harnesses' files are the worker's own;
    - every Redis URL (REDIS_URL, CELERY_BROKER_URL, CACHE_URL) moves to databases of the
      worker's own, worker N taking the block N places after the given one (CI's cache 0 and
      broker 1: gw1 gets 2 and 3), because the cache's `clear()` flushes a whole database and a
      real Celery worker would take another xdist worker's messages off a shared queue.
    RabbitMQ (amqp://) is not split (that takes a virtual host per worker): the real-worker tests
    all run on one xdist worker (tests/harness.py groups them), and CI runs them with RabbitMQ
    serially.
    """
    worker = environ.get("PYTEST_XDIST_WORKER", "")
    if not worker or environ.get("BIGMIND_XDIST_ISOLATED") == worker:
        return  # outside xdist, or done already
    index = int(re.sub(r"\D", "", worker) or 0)
    environ["BIGMIND_VAR_DIR"] = str(Path(environ.get("BIGMIND_VAR_DIR") or "var/test") / worker)
    names = [
        name
        for name in ("REDIS_URL", "CELERY_BROKER_URL", "CACHE_URL")
        if environ.get(name, "").startswith(("redis://", "rediss://"))
    ]
    if names:
        databases = [_redis_db(environ[name]) for name in names]
        span = max(databases) - min(databases) + 1
        for name, db in zip(names, databases, strict=True):
            moved = db + index * span
            if moved >= REDIS_DATABASES:
                raise RuntimeError(
                    f"xdist worker {worker} would need Redis database {moved} for {name}: "
                    "run fewer workers (-n) or start from lower database numbers"
                )
            environ[name] = _with_redis_db(environ[name], moved)
    environ["BIGMIND_XDIST_ISOLATED"] = worker


isolate_xdist_worker(os.environ)
# No read replica unless a test starts one (tests/bigmind/test_replicas_live.py sets its own for
# the servers it starts): one inherited from the shell would send the suite's reads elsewhere.
os.environ.pop("DATABASE_REPLICA_URLS", None)
os.environ["DJANGO_SETTINGS_MODULE"] = "bigmind.settings"

from bigmind.settings import *  # noqa: E402, F403

# WhiteNoise looks a static file up when it is asked for (its autorefresh mode) instead of
# listing every app's static files when its middleware is built. Django's test Client builds the
# middleware chain afresh for each new client, and that listing (about 170 files, stat'ed and
# typed) cost 50 ms a client: a minute of `make test`. The served bytes and headers are the same;
# the listing itself is what the servers the tests start (gunicorn, `make run`) still do.
WHITENOISE_AUTOREFRESH = True

# Django's default password hasher is PBKDF2 with a million iterations: about half a second of CPU
# for each user a test creates and each admin log-in. Django's testing guide suggests a fast
# hasher for tests; the hashing itself is Django's, not this project's, so nothing is lost.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

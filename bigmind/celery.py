from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bigmind.settings")

app = Celery("bigmind")
# The CELERY_* Django settings under Celery's own names (bigmind/celery_config.py: why).
app.config_from_object("bigmind.celery_config")
# The queues (classic, or RabbitMQ quorum queues) are declared there too (bigmind/queues.py).
app.autodiscover_tasks()


@task_prerun.connect
@task_postrun.connect
def _database_connections_refresh(sender: object = None, **_: object) -> None:
    """Apply CONN_MAX_AGE and CONN_HEALTH_CHECKS around each task, as Django does per request.

    With CELERY_DB_REUSE_MAX set, Celery keeps the worker's connection across tasks; without
    this, a connection broken by a database restart would fail the next task instead of being
    replaced.
    """
    from django.db import close_old_connections

    # An eager call runs inside the caller's transaction (a test, a shell): leave it alone, as
    # Celery's own fixup does.
    if getattr(getattr(sender, "request", None), "is_eager", False):
        return
    close_old_connections()


@worker_init.connect
def worker_database_sessions(**_: object) -> None:
    """In worker processes only, PostgreSQL sessions commit without waiting for the WAL flush.

    Everything a worker writes (claims, results, rollups, history) can be worked out again from
    the stored event, and every write is fenced and counted once: if PostgreSQL crashes, the
    last few hundred milliseconds of worker commits are lost together, the events fall back to
    `pending` or `processing`, and the sweep processes them again. Ingest keeps synchronous
    commits: its 202 promises the event is stored. One fsync per commit was most of a drained
    event's wall time (docs/benchmarks.md). BIGMIND_WORKER_SYNCHRONOUS_COMMIT=on turns it off.
    Connected at worker start, before the pool forks, so every pool process inherits it.
    Public so that a test can call it: sending `worker_init` in a test process would also
    install Celery's Django worker fixup, which closes connections around every task.
    """
    from django.conf import settings
    from django.db.backends.signals import connection_created

    if settings.BIGMIND_WORKER_SYNCHRONOUS_COMMIT:
        return
    if settings.DATABASE_PGBOUNCER:
        # A SET outlives the transaction on PgBouncer's server connection, which then serves
        # other clients of the pool: ingest's commits would stop waiting for the WAL flush, and
        # this worker's next transaction may run elsewhere without it. Behind PgBouncer the
        # workers get a pool of their own whose `connect_query` sets it (docs/pgbouncer.md).
        return
    connection_created.connect(_asynchronous_commit, dispatch_uid="bigmind-worker-async-commit")


def _asynchronous_commit(sender: object, connection: Any, **_: object) -> None:
    # A vendor check of its own, not events_app/dialect.py's: the kernel imports no app.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO OFF")


# Worker and beat log through settings.LOGGING (JSON by default); one log line and metrics per
# task; the worker's metrics port. The receivers connect on import (bigmind/worker_signals.py).
import bigmind.worker_signals  # noqa: E402, F401

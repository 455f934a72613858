"""What the database settings become behind PgBouncer in transaction pooling (docs/pgbouncer.md).

In transaction pooling PgBouncer hands a client a server connection for one transaction only
(one statement in autocommit); the next may run on another server connection, and another
client's transactions run on this one meanwhile. Nothing a session keeps between transactions
can be relied upon, which rules out:
- server-side cursors: Django declares `.iterator()`'s cursor WITH HOLD in autocommit and
  fetches each chunk in its own transaction, so a later chunk may go to a server that never
  declared the cursor ("cursor ... does not exist"). DISABLE_SERVER_SIDE_CURSORS makes
  `.iterator()` read through a client-side cursor instead.
- prepared statements: psycopg 3 prepares a statement on its connection after
  `prepare_threshold` runs and then sends only its name, which another client's server
  connection does not know ("prepared statement "_pg3_0" does not exist"), or already knows
  from another client ("... already exists"). PgBouncer handles protocol-level prepared
  statements only from 1.21 on, with `max_prepared_statements` set; Debian's 1.18 does not.
- session state (SET, advisory locks, LISTEN, temporary tables): it would reach other clients'
  transactions, or be missing from one's own next transaction. The app sets none behind
  PgBouncer: the worker's asynchronous commit (bigmind/celery.py) moves to PgBouncer's
  `connect_query` of a pool of the workers' own.
- the `options` startup parameter (`-c statement_timeout=...`): PgBouncer refuses a client
  that sends it, unless listed in `ignore_startup_parameters` (then it is dropped). Set such
  parameters per role or database (ALTER ROLE ... SET) instead.
"""

from __future__ import annotations

from typing import Any

import environ
from django.core.exceptions import ImproperlyConfigured

# psycopg's default: a statement run this many times on a connection is prepared.
PREPARE_THRESHOLD = 5


def database_pooling_apply(database: dict[str, Any], env: environ.Env) -> bool:
    """Apply DATABASE_PGBOUNCER and DATABASE_PREPARED_STATEMENTS to `database` (the default
    database's settings); whether the database is reached through PgBouncer."""
    pgbouncer = bool(env.bool("DATABASE_PGBOUNCER", default=False))
    if database["ENGINE"] != "django.db.backends.postgresql":
        if pgbouncer:
            raise ImproperlyConfigured("DATABASE_PGBOUNCER=true needs a postgres:// DATABASE_URL")
        return False
    # Server-side prepared statements: a statement run a few times on a connection is planned
    # once. Django turns them off by default for connection poolers; planning ingest's group
    # insert anew cost PostgreSQL about 0.5 ms of CPU per statement, more than running it for a
    # small group (docs/benchmarks.md). Only psycopg's own cursors (events_app/ingest/store.py)
    # prepare: Django's client-side binding cursors never do. Behind PgBouncer they are off
    # unless asked for, which only PgBouncer 1.21+ with `max_prepared_statements` can serve.
    if env.bool("DATABASE_PREPARED_STATEMENTS", default=not pgbouncer):
        database.setdefault("OPTIONS", {}).setdefault("prepare_threshold", PREPARE_THRESHOLD)
    else:
        database.setdefault("OPTIONS", {})["prepare_threshold"] = None
    if pgbouncer:
        database["DISABLE_SERVER_SIDE_CURSORS"] = True
    return pgbouncer

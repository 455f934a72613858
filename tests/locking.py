"""Helpers for tests that decide the order of two transactions' locks (PostgreSQL): this
thread holds locks in a transaction it then rolls back, another waits for them."""

from __future__ import annotations

import time

from django.db import connection


class RolledBack(Exception):
    """Raised to leave a `transaction.atomic()` block by rolling it back."""


def wait_for_a_lock_wait(what: str, timeout: float = 10.0) -> None:
    """Until another backend of this database waits on a lock (`what`: who, for the failure)."""
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            # Inside a transaction the statistics views are one snapshot unless cleared.
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.02)
    raise AssertionError(f"{what} never waited on a lock")

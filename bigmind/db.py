"""Database helpers shared by the apps."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")


def read_on_live_connection(read: Callable[[], T]) -> T:
    """Run `read` (a lookup that writes nothing, or a write that is safe to repeat) and, if this
    thread's connection turns out broken, once more on a new one.

    Persistent connections are not health-checked per request (`DATABASE_CONN_HEALTH_CHECKS` is
    off: a `SELECT 1` per request was 7% of an ingest worker). After a PostgreSQL restart every
    request thread still holds its dead connection, and its next lookup (a signal or key not in
    the local cache yet) failed that request with a 503 before Django replaced the connection
    at the request's end. Retrying here costs nothing until a connection breaks. Inside a
    transaction nothing is retried: the transaction is lost with its connection.
    """
    try:
        return read()
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        logger.info("database connection broken; one more try on a new one", exc_info=True)
        try:
            connection.close()
        except Exception:
            logger.debug("closing a broken connection failed", exc_info=True)
    return read()

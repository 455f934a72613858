"""Database helpers shared by the apps."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The read replica this context's reads go to (bigmind/replicas.py); None, the default and
# outside every replica scope: the primary. Here, below the router, so that this module's
# lookups can pin themselves to the primary.
replica_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "bigmind_replica", default=None
)


@contextlib.contextmanager
def primary_reads() -> Iterator[None]:
    """Inside: reads go to the primary, even within a replica scope."""
    token = replica_var.set(None)
    try:
        yield
    finally:
        replica_var.reset(token)


def read_on_live_connection(read: Callable[[], T]) -> T:
    """Run `read` (a lookup that writes nothing, or a write that is safe to repeat) and, if this
    thread's connection turns out broken, once more on a new one.

    Persistent connections are not health-checked per request (`DATABASE_CONN_HEALTH_CHECKS` is
    off: a `SELECT 1` per request was 7% of an ingest worker). After a PostgreSQL restart every
    request thread still holds its dead connection, and its next lookup (a signal or key not in
    the local cache yet) failed that request with a 503 before Django replaced the connection
    at the request's end. Retrying here costs nothing until a connection breaks. Inside a
    transaction nothing is retried: the transaction is lost with its connection.

    Always on the primary, even inside a replica scope (bigmind/replicas.py): these lookups
    fill caches the ingest path trusts, and a signal a replica has not replayed yet must not be
    cached as missing.
    """
    if replica_var.get() is not None:  # inside a replica scope: back to the primary
        with primary_reads():
            return _read_retrying(read)
    # Outside (ingest, every write path): nothing to switch, so no context to enter per lookup.
    return _read_retrying(read)


def _read_retrying(read: Callable[[], T]) -> T:
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

"""bigmind.db.read_on_live_connection: lookups survive a connection the server dropped."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import OperationalError, connection, transaction

from bigmind.db import read_on_live_connection
from signals_app import selectors
from signals_app.selectors import (
    api_key_cache_invalidate,
    api_key_get_ref,
    schema_version_validator,
    signal_cache_invalidate,
    signal_get_active_ref,
)
from signals_app.services import api_key_hash
from tests.conftest import Tenant


def _drop_this_threads_connection() -> int:
    """Terminate this thread's PostgreSQL session from another connection, as a server restart
    does, and wait until it is gone; its backend pid."""
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    params = connection.get_connection_params()
    keep = ("dbname", "user", "password", "host", "port")
    with psycopg.connect(**{k: params[k] for k in keep if params.get(k)}, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])
        deadline = time.monotonic() + 5
        while other.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, "the session did not end"
            time.sleep(0.01)
    return pid


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_lookups_on_a_connection_the_server_dropped_are_tried_again_on_a_new_one(
    tenant: Tenant,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("terminates a PostgreSQL session")
    signal = tenant.signal("visit", schema={"type": "object"})
    ref = signal_get_active_ref(organization_id=tenant.organization.pk, slug="visit")
    assert ref is not None
    key_hash = api_key_hash(tenant.raw_key)

    for lookup, forget in (
        (
            lambda: api_key_get_ref(key_hash=key_hash),
            lambda: api_key_cache_invalidate(key_hash=key_hash),
        ),
        (
            lambda: signal_get_active_ref(organization_id=tenant.organization.pk, slug="visit"),
            lambda: signal_cache_invalidate(organization_id=tenant.organization.pk, slug="visit"),
        ),
    ):
        forget()  # a cache miss: the lookup goes to the database
        dropped = _drop_this_threads_connection()
        found = lookup()
        assert found is not None and found.organization_id == tenant.organization.pk
        assert connection.connection.info.backend_pid != dropped
    # The compiled schema of a version, looked up once per process.
    selectors.schema_validators_clear()
    dropped = _drop_this_threads_connection()
    assert schema_version_validator(ref, 1) is not None
    assert connection.connection.info.backend_pid != dropped
    assert (
        signal.pk == signal_get_active_ref(organization_id=tenant.organization.pk, slug="visit").id
    )  # type: ignore[union-attr]


def test_a_read_is_tried_once_more_after_a_connection_error_and_no_more() -> None:
    calls: list[int] = []

    def read() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("server closed the connection unexpectedly")
        return "row"

    with pytest.raises(OperationalError):
        read_on_live_connection(read)  # fails twice: the second error is the caller's
    assert len(calls) == 2
    assert read_on_live_connection(read) == "row"  # the third call succeeds first time


@pytest.mark.django_db
def test_inside_a_transaction_nothing_is_tried_again() -> None:
    calls: list[int] = []

    def read() -> None:
        calls.append(1)
        raise OperationalError("server closed the connection unexpectedly")

    with transaction.atomic(), pytest.raises(OperationalError):
        read_on_live_connection(read)
    assert calls == [1]

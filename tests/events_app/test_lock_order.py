"""Ingest and the workers lock the CRM records they share in one order (PostgreSQL).

Ingest's upserts (the group statement's, a batch's) lock records by (organization, type,
external id); a worker adding engagement locks them before its UPDATE. Were the worker to lock
them by id, a record with the smaller id but the larger key would be held by the worker while
it waits for one ingest holds, and ingest would then wait for the worker: a deadlock, which
PostgreSQL ends by failing one of them (a 503 for a request that did nothing wrong, or a chunk
retried). Each test plays ingest in this thread, between two of its upserts, so the order is
decided, not left to chance.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from events_app.models import CrmRecord
from events_app.pipeline.rollups import engagement_masses_add
from tests.conftest import Tenant, on_postgres
from tests.locking import RolledBack, wait_for_a_lock_wait

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _upsert(organization_id: int, external_id: str) -> None:
    """One record as ingest's upsert writes it (ON CONFLICT DO UPDATE: the row's lock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"""INSERT INTO "{CrmRecord._meta.db_table}"
                ("organization_id", "type", "external_id", "first_seen_at", "last_seen_at")
                VALUES (%s, 'account', %s, now(), now())
                ON CONFLICT ("organization_id", "type", "external_id")
                DO UPDATE SET "last_seen_at" = EXCLUDED."last_seen_at" """,  # noqa: S608
            [organization_id, external_id],
        )


def test_a_worker_adding_engagement_locks_records_in_ingests_order(tenant: Tenant) -> None:
    if not on_postgres():
        pytest.skip("needs real concurrent transactions: run with DATABASE_URL=postgres://...")
    organization_id = tenant.organization.pk
    now = timezone.now()
    # By id: "b" first (made first). By ingest's key: "a" first.
    first_by_id, first_by_key = (
        CrmRecord.objects.create(
            organization_id=organization_id,
            type="account",
            external_id=external_id,
            first_seen_at=now,
            last_seen_at=now,
        )
        for external_id in ("b", "a")
    )
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with transaction.atomic():
                engagement_masses_add(masses={first_by_id.pk: 1.0, first_by_key.pk: 2.0})
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    ingest_error: list[Any] = []
    with pytest.raises(RolledBack), transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '10s'")
        _upsert(organization_id, "a")  # ingest's first record in its order
        thread.start()
        wait_for_a_lock_wait(
            "the worker"
        )  # the worker waits for "a" (and, locking by id, holds "b")
        try:
            _upsert(organization_id, "b")
        except Exception as exc:
            ingest_error.append(exc)
        raise RolledBack
    thread.join(timeout=30)

    assert not ingest_error, ingest_error
    assert not errors, errors
    masses = dict(
        CrmRecord.objects.filter(organization_id=organization_id).values_list(
            "external_id", "engagement_mass"
        )
    )
    assert masses == {"a": 2.0, "b": 1.0}

"""Concurrent requests with one idempotency key, on real connections (PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from events_app.models import Event
from tests.conftest import SEED_REQUEST, ApiClient, on_postgres

URL = "/v1/events"
THREADS = 8


def _race(raw_key: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    barrier = threading.Barrier(len(bodies))
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def send(body: dict) -> None:
        client = ApiClient(raw_key)
        try:
            barrier.wait()
            response = client.post(URL, body, **{"Idempotency-Key": "same-key"})
            with lock:
                results.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.fixture
def pg_only() -> None:
    if not on_postgres():
        pytest.skip("needs real concurrent transactions: run with DATABASE_URL=postgres://...")


@pytest.mark.django_db(transaction=True)
def test_concurrent_identical_requests_create_exactly_one_event(pg_only, make_tenant) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=1000)

    results = _race(tenant.raw_key, [SEED_REQUEST] * THREADS)

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] * (THREADS - 1) + [202]
    assert len({body["data"]["id"] for _, body in results}) == 1
    assert Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_different_requests_with_one_key_store_one_and_refuse_the_rest(
    pg_only, make_tenant
) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=1000)
    bodies = [{**SEED_REQUEST, "reference": f"r{i}"} for i in range(THREADS)]

    results = _race(tenant.raw_key, bodies)

    statuses = sorted(status for status, _ in results)
    assert statuses == [202] + [409] * (THREADS - 1)
    assert Event.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_sharing_keys_store_each_key_once(pg_only, make_tenant) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page", rate_limit_per_minute=1000)
    batch = {"events": [{**SEED_REQUEST, "idempotency_key": f"k{i}"} for i in range(20)]}
    barrier = threading.Barrier(4)
    results: list[int] = []

    def send() -> None:
        client = ApiClient(tenant.raw_key)
        try:
            barrier.wait()
            results.append(client.post("/v1/events/batch", batch).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert results == [202] * 4
    assert Event.objects.count() == 20

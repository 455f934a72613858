from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client

from bigmind.cache import counter_leases_clear
from bigmind.redis import cache_breakers_reset
from events_app.ingest.auth import api_key_last_used_reset
from events_app.ingest.services import ingest_writer_stop
from events_app.pipeline.processors import processor_get
from signals_app.models import ApiKey, ApiScope, Organization, Signal
from signals_app.selectors import lookups, organization_slugs_forget
from signals_app.services import (
    api_key_create,
    organization_get_or_create,
    schema_version_create,
    signal_create,
)

# The server harnesses (gunicorn, Celery workers, private PostgreSQL and Redis) and the xdist
# grouping of the tests that use them.
pytest_plugins = ["tests.harness"]


def on_postgres() -> bool:
    return connection.vendor == "postgresql"


@pytest.fixture(autouse=True)
def _clear_cache() -> Iterator[None]:
    # SQLite reuses row ids after a rolled-back test, so cached lookups must not leak across.
    # Nor may an open cache circuit breaker (process-wide): a Redis reply slower than
    # CACHE_SOCKET_TIMEOUT (0.25 s) on a loaded machine opened it in one test and failed the
    # next one's first cache call.
    _cache_clear()
    counter_leases_clear()
    lookups.clear_local()
    organization_slugs_forget()
    api_key_last_used_reset()
    yield
    # The ingest writer (group commit) holds its own database connection: end it with the
    # test, so that settings a test changed do not outlive it and the test database can be
    # dropped.
    ingest_writer_stop()
    _cache_clear()
    counter_leases_clear()
    lookups.clear_local()
    organization_slugs_forget()


def _cache_clear() -> None:
    """Empty the shared cache, with the breaker closed. FLUSHDB on a loaded machine can take
    longer than CACHE_SOCKET_TIMEOUT (0.25 s, seen in CI): a clear that timed out is tried
    again, since a test must not start with the previous test's cache."""
    for attempt in range(3):
        cache_breakers_reset()
        try:
            cache.clear()
            break
        except Exception:
            if attempt == 2:
                raise
    cache_breakers_reset()


@dataclass
class Tenant:
    organization: Organization
    api_key: ApiKey
    raw_key: str

    def signal(
        self, slug: str, type: str = "event", schema: dict | None = None, **settings: Any
    ) -> Signal:
        if type == "metric":
            settings.setdefault("aggregation", "sum")
            settings.setdefault("period", "day")
        signal = signal_create(
            organization=self.organization,
            name=slug.replace("-", " ").title(),
            slug=slug,
            type=type,
            **settings,
        )
        if schema is not None:
            schema_version_create(signal=signal, schema=schema)
        return signal


@pytest.fixture
def make_tenant(db: None) -> Callable[[str], Tenant]:
    def make(slug: str = "acme") -> Tenant:
        organization, _ = organization_get_or_create(slug=slug)
        api_key, raw = api_key_create(organization=organization, name=f"{slug} key")
        return Tenant(organization=organization, api_key=api_key, raw_key=raw)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[[str], Tenant]) -> Tenant:
    return make_tenant("acme")


class ApiClient:
    """Django's test client through the whole stack (middleware, URLconf, DRF), with a key."""

    def __init__(self, raw_key: str | None) -> None:
        self.client = Client()
        self.raw_key = raw_key

    def post_raw(
        self, path: str, body: bytes | str, content_type: str = "application/json", **headers: str
    ) -> Any:
        if self.raw_key is not None:
            headers.setdefault("Authorization", f"Bearer {self.raw_key}")
        return self.client.generic("POST", path, body, content_type=content_type, headers=headers)

    def post(self, path: str, payload: Any, **headers: str) -> Any:
        return self.post_raw(path, json.dumps(payload), **headers)


@pytest.fixture
def api(tenant: Tenant) -> ApiClient:
    return ApiClient(tenant.raw_key)


@pytest.fixture
def anon() -> ApiClient:
    return ApiClient(None)


# What the API key add form posts besides the organization and name: every scope box ticked, as
# the form shows them at first.
KEY_FORM = {"scope_choices": list(ApiScope.values)}

SEED_REQUEST = {
    "signal": "visited-documentation-page",
    "version": "latest",
    "identity": {"type": "account", "id": "001ABC000000123"},
    "data": {
        "page": "/docs/quickstart",
        "duration_seconds": 120,
        "referrer": "https://google.com",
    },
    "reference": "evt-001",
}


@pytest.fixture
def staff(db: None) -> Client:
    """A logged-in superuser for the admin."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_superuser("staff", "staff@example.com", "pw-123456")
    client = Client()
    client.force_login(user)
    return client


def signal_form(organization: Organization, **overrides: object) -> dict:
    """The admin's signal form as a browser posts it (no schema versions shown)."""
    form = {
        "organization": organization.pk,
        "name": "Visited documentation page",
        "slug": "",
        "type": "event",
        "description": "",
        "ai_instructions": "",
        "active": "on",
        "rate_limit_per_minute": "",
        "compatibility": "none",
        "aggregation": "",
        "period": "",
        "value_field": "",
        "new_schema": "",
        "schema_versions-TOTAL_FORMS": "0",
        "schema_versions-INITIAL_FORMS": "0",
    }
    form.update(overrides)
    return form


def bulk_insert_events(
    *,
    record_id: int,
    signals: list[Signal],
    count: int,
    now: Any,
    every: str = "25 seconds",
    data: str = "{}",
    status: str = "'completed'",
    processed_at: str = "t",
) -> int:
    """`count` events of the CRM record `record_id` (its organization and identity) in one
    INSERT ... SELECT over generate_series, then ANALYZE; PostgreSQL only. Event i (1..count)
    was received `i * every` before the datetime `now`, for signal i mod len(signals).
    `status` and `processed_at` are SQL over `i` and `t` (the event's received_at); `data` is
    the JSON every event carries. Returns the number of rows inserted."""
    sql = f"""
        INSERT INTO events_app_event (
            id, organization_id, signal_id, schema_version, crm_record_id, identity_type,
            identity_id, data, timestamp, received_at, reference, idempotency_key, request_hash,
            status, attempts, last_error, result, processed_at, claimed_at, due_at, rollup
        )
        SELECT
            gen_random_uuid(), r.organization_id, (%(signals)s::bigint[])[1 + mod(i, %(n)s)],
            NULL, r.id, r.type, r.external_id, %(data)s::jsonb, t, t, NULL, NULL,
            repeat('0', 64), {status}, 1, '', NULL, {processed_at}, NULL, NULL, NULL
        FROM events_app_crmrecord AS r, (
            SELECT i, %(now)s::timestamptz - i * %(every)s::interval AS t
            FROM generate_series(1, %(count)s) AS i
        ) AS series
        WHERE r.id = %(record)s
    """  # noqa: S608 (the SQL fragments are the tests' own)
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {
                "record": record_id,
                "signals": [signal.pk for signal in signals],
                "n": len(signals),
                "data": data,
                "now": now,
                "every": every,
                "count": count,
            },
        )
        inserted = cursor.rowcount
        cursor.execute("ANALYZE events_app_event")
    return inserted


@pytest.fixture
def fresh_processor() -> Iterator[None]:
    """The processor is loaded afresh from each test's settings."""
    processor_get.cache_clear()
    yield
    processor_get.cache_clear()


@pytest.fixture
def pipeline_in_process(fresh_processor: None) -> Iterator[mock.MagicMock]:
    """Nothing is published to a broker (the tests run the pipeline here, in-process): what
    would have been is recorded on `.single` (process_event_task.delay), `.later` (its
    apply_async) and `.many` (process_events_task.delay), webhook wake-ups on `.webhooks`
    (deliver_webhooks_task.delay) and `.webhooks_later` (its apply_async). The processor is
    loaded afresh."""
    with (
        mock.patch("events_app.tasks.process_event_task.delay") as single,
        mock.patch("events_app.tasks.process_event_task.apply_async") as later,
        mock.patch("events_app.tasks.process_events_task.delay") as many,
        mock.patch("events_app.tasks.deliver_webhooks_task.delay") as webhooks,
        mock.patch("events_app.tasks.deliver_webhooks_task.apply_async") as webhooks_later,
    ):
        yield mock.MagicMock(
            single=single, later=later, many=many, webhooks=webhooks, webhooks_later=webhooks_later
        )


def event_list_plans(organization_id: int, filters: Any) -> list[str]:
    """PostgreSQL's plans of the event list's first two pages (`events_app.selectors.event_list`
    with `filters`), sequential scans forbidden: a tiny test table is cheapest to scan whole,
    and the question is which index serves the list."""
    from django.test.utils import CaptureQueriesContext

    from events_app.selectors import event_list

    with CaptureQueriesContext(connection) as queries:
        first = event_list(organization_id=organization_id, filters=filters, limit=1)
        event_list(
            organization_id=organization_id, filters=filters, limit=1, cursor=first.next_cursor
        )
    assert len(queries) == 2
    plans = []
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in queries:
            cursor.execute("EXPLAIN " + query["sql"])
            plans.append("\n".join(row[0] for row in cursor.fetchall()))
    return plans

"""Backpressure: ingest answers 503 `overloaded` while too many events are pending, through the
whole HTTP stack, and the backlog count stays off the hot path."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events_app.ids import uuid7
from events_app.ingest import backpressure
from events_app.ingest.backpressure import backlog_pending_count, backpressure_reset
from events_app.models import CrmRecord, Event, EventStatus
from signals_app.models import Signal
from tests.conftest import SEED_REQUEST, ApiClient, Tenant, on_postgres

URL = "/v1/events"
BATCH_URL = "/v1/events/batch"
LIMIT = 3


@pytest.fixture(autouse=True)
def _fresh_readings() -> Iterator[None]:
    backpressure_reset()
    yield
    backpressure_reset()


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page")


def store_events(tenant: Tenant, signal: Signal, count: int, status: str = "pending") -> None:
    """Events written straight to the database (the backlog the workers have not reached)."""
    now = timezone.now()
    record, _ = CrmRecord.objects.get_or_create(
        organization=tenant.organization,
        type="account",
        external_id="backlog",
        defaults={"first_seen_at": now, "last_seen_at": now},
    )
    Event.objects.bulk_create(
        Event(
            id=uuid7(),
            organization=tenant.organization,
            signal=signal,
            crm_record=record,
            identity_type="account",
            identity_id="backlog",
            timestamp=now,
            received_at=now - timedelta(seconds=n),
            request_hash="0" * 64,
            status=status,
        )
        for n in range(count)
    )


def event(**overrides: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(SEED_REQUEST))
    body.update(overrides)
    return body


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The limits of the backlog counts that reached the database, one entry per count."""
    ran: list[int] = []

    def counting(*, limit: int) -> int:
        ran.append(limit)
        return backlog_pending_count(limit=limit)

    monkeypatch.setattr(backpressure, "backlog_pending_count", counting)
    return ran


def assert_overloaded(response: Any) -> None:
    assert response.status_code == 503, response.content
    assert response.json() == {
        "success": False,
        "error": "Service overloaded: too many events are waiting to be processed; retry later",
        "code": "overloaded",
    }
    assert response["Retry-After"] == "30"
    assert response["Content-Type"] == "application/json"


@pytest.fixture
def overloaded(tenant: Tenant, docs_signal: Signal, settings: Any) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT
    store_events(tenant, docs_signal, LIMIT + 1)


# --- Refusing ---------------------------------------------------------------------------------
def test_an_event_over_the_backlog_limit_gets_503_with_retry_after_and_nothing_is_stored(
    api: ApiClient, overloaded: None
) -> None:
    events, records = Event.objects.count(), CrmRecord.objects.count()

    response = api.post(URL, event(identity={"type": "account", "id": "new-record"}))

    assert_overloaded(response)
    assert Event.objects.count() == events
    assert CrmRecord.objects.count() == records
    assert "X-Request-ID" in response


def test_a_batch_over_the_backlog_limit_is_refused_whole(api: ApiClient, overloaded: None) -> None:
    events, records = Event.objects.count(), CrmRecord.objects.count()
    items = [
        event(reference=f"b-{n}", identity={"type": "account", "id": f"r{n}"}) for n in range(5)
    ]

    response = api.post(BATCH_URL, {"events": items})

    assert_overloaded(response)
    assert Event.objects.count() == events
    assert CrmRecord.objects.count() == records


def test_the_retry_after_comes_from_the_setting(
    api: ApiClient, overloaded: None, settings: Any
) -> None:
    settings.BIGMIND_BACKPRESSURE_RETRY_AFTER_SECONDS = 7

    assert api.post(URL, event())["Retry-After"] == "7"


def test_it_is_checked_before_the_body_is_parsed_or_budget_spent(
    api: ApiClient, overloaded: None
) -> None:
    # Refused work costs nothing: not even a malformed body is looked at.
    response = api.post_raw(URL, b"{not json")

    assert_overloaded(response)
    assert "X-RateLimit-Limit" not in response


def test_an_idempotent_replay_is_refused_too_and_answered_once_the_backlog_drains(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, settings: Any
) -> None:
    first = api.post(URL, event(), **{"Idempotency-Key": "order-1"})
    assert first.status_code == 202
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT
    store_events(tenant, docs_signal, LIMIT)  # with the first event: LIMIT + 1 pending

    assert_overloaded(api.post(URL, event(), **{"Idempotency-Key": "order-1"}))

    Event.objects.filter(identity_id="backlog").update(status=EventStatus.COMPLETED)
    backpressure_reset()
    cache.clear()  # the next count sees the drained backlog
    replay = api.post(URL, event(), **{"Idempotency-Key": "order-1"})
    assert replay.status_code == 200
    assert replay.json()["data"]["id"] == first.json()["data"]["id"]
    assert Event.objects.filter(idempotency_key="order-1").count() == 1


def test_validate_is_exempt_since_it_stores_nothing(api: ApiClient, overloaded: None) -> None:
    response = api.post("/v1/events/validate", event())

    assert response.status_code == 200, response.content
    assert response.json()["data"]["valid"] is True


def test_authentication_still_comes_first(anon: ApiClient, overloaded: None) -> None:
    assert anon.post(URL, event()).status_code == 401


# --- Accepting --------------------------------------------------------------------------------
def test_at_the_limit_events_are_still_accepted(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, settings: Any
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT
    store_events(tenant, docs_signal, LIMIT)

    assert api.post(URL, event()).status_code == 202
    assert api.post(BATCH_URL, {"events": [event(reference="b")]}).status_code == 202


def test_processing_completed_and_failed_events_do_not_count(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, settings: Any
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT
    for status in ("processing", "completed", "failed"):
        store_events(tenant, docs_signal, LIMIT + 1, status=status)

    assert api.post(URL, event()).status_code == 202


def test_when_off_the_backlog_is_never_counted(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, settings: Any, monkeypatch: Any
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = 0
    store_events(tenant, docs_signal, 10)

    def must_not_count(**kwargs: Any) -> int:
        raise AssertionError("counted the backlog while backpressure is off")

    monkeypatch.setattr(backpressure, "backlog_pending_count", must_not_count)
    assert api.post(URL, event()).status_code == 202
    assert api.post(BATCH_URL, {"events": [event(reference="b")]}).status_code == 202


# --- Cost -------------------------------------------------------------------------------------
def test_the_backlog_is_counted_once_per_interval_not_per_request(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, settings: Any, counts: list[int]
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = 1000

    for n in range(5):
        assert api.post(URL, event(reference=f"e{n}")).status_code == 202
    assert api.post(BATCH_URL, {"events": [event(reference="b")]}).status_code == 202

    assert counts == [1000]


def test_another_process_reads_the_shared_count_instead_of_counting(
    api: ApiClient, docs_signal: Signal, settings: Any, counts: list[int]
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = 1000
    assert api.post(URL, event(reference="first")).status_code == 202
    assert counts == [1000]

    backpressure_reset()  # a fresh process: nothing of its own, the shared cache still has it
    assert api.post(URL, event(reference="second")).status_code == 202

    assert counts == [1000]


def test_the_count_is_bounded_by_the_limit(tenant: Tenant, docs_signal: Signal) -> None:
    store_events(tenant, docs_signal, 12)

    assert backlog_pending_count(limit=5) == 6
    assert backlog_pending_count(limit=100) == 12


def test_only_one_process_counts_while_another_holds_the_refresh_lock(
    api: ApiClient, docs_signal: Signal, settings: Any, counts: list[int]
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = 1000
    assert cache.add("backpressure:pending:1000:lock", 1, 10)  # someone else is counting

    assert api.post(URL, event()).status_code == 202  # nothing known yet: let it through

    assert counts == []


# --- Failing open -----------------------------------------------------------------------------
class _DownCache:
    def __getattr__(self, name: str) -> Any:
        def down(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("cache is down")

        return down


def test_with_the_cache_down_each_process_counts_for_itself_once_per_interval(
    api: ApiClient,
    tenant: Tenant,
    docs_signal: Signal,
    settings: Any,
    monkeypatch: Any,
    counts: list[int],
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT
    store_events(tenant, docs_signal, LIMIT + 1)
    monkeypatch.setattr(backpressure, "cache", _DownCache())

    for _ in range(3):
        assert_overloaded(api.post(URL, event()))

    assert counts == [LIMIT]


def test_if_the_count_fails_requests_are_accepted_and_it_is_logged(
    api: ApiClient, docs_signal: Signal, settings: Any, monkeypatch: Any, caplog: Any
) -> None:
    settings.BIGMIND_BACKPRESSURE_MAX_PENDING = LIMIT

    def broken(**kwargs: Any) -> int:
        raise DatabaseError("statement timeout")

    monkeypatch.setattr(backpressure, "backlog_pending_count", broken)
    with caplog.at_level(logging.WARNING, logger="events_app.ingest.backpressure"):
        assert api.post(URL, event()).status_code == 202

    assert "could not count the backlog" in caplog.text


# --- The index --------------------------------------------------------------------------------
@pytest.mark.postgres
def test_on_postgres_the_bounded_count_reads_the_status_index(db: None) -> None:
    """Pins the count's plan on purpose: it runs on the ingest path once per interval, and on a
    large backlog only the index keeps it short; no result tells an index scan from a scan of
    the table. The statement is the one the count runs, captured, not a copy."""
    if not on_postgres():
        pytest.skip("a PostgreSQL plan: run with DATABASE_URL=postgres://...")
    with CaptureQueriesContext(connection) as captured:
        backlog_pending_count(limit=1000)
    (count,) = captured.captured_queries
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + count["sql"])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "event_status_received" in plan, plan


# --- Documented -------------------------------------------------------------------------------
def test_the_openapi_description_names_the_overloaded_503(client: Any) -> None:
    document = client.get("/v1/openapi.json").json()
    for path in ("/v1/events", "/v1/events/batch"):
        answer = document["paths"][path]["post"]["responses"]["503"]
        assert "`overloaded`" in answer["description"]
        assert "Retry-After" in answer["headers"]

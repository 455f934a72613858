"""GET /v1/events/<id>, GET /v1/events and GET /v1/records/<type>/<id> through the whole HTTP
stack with real keys."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from django.utils import timezone

from events_app.ids import uuid7
from events_app.models import CrmRecord, Event
from events_app.selectors import EventFilters
from signals_app.models import Signal
from tests.conftest import SEED_REQUEST, ApiClient, Tenant, event_list_plans, on_postgres

EVENT_KEYS = {
    "id",
    "signal_id",
    "signal",
    "schema_version",
    "schema_valid",
    "violations",
    "identity",
    "data",
    "timestamp",
    "received_at",
    "reference",
    "idempotency_key",
    "status",
    "attempts",
    "last_error",
    "result",
    "processed_at",
}
T0 = datetime(2026, 3, 16, 12, 0, tzinfo=UTC)


def get(client: ApiClient, path: str, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {client.raw_key}"} if client.raw_key else {}
    return client.client.get(path, params, headers=headers)


def error_of(response: Any, status: int) -> tuple[str, str | None]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    return body["error"], body.get("code")


def ingest(client: ApiClient, **overrides: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(SEED_REQUEST)) | overrides
    response = client.post("/v1/events", body)
    assert response.status_code == 202, response.content
    return response.json()["data"]


def store_event(
    tenant: Tenant,
    signal: Signal,
    *,
    received_at: datetime,
    identity: tuple[str, str] = ("account", "A1"),
    **fields: Any,
) -> Event:
    """An event written straight to the database, for control over received_at and status."""
    record, _ = CrmRecord.objects.get_or_create(
        organization=tenant.organization,
        type=identity[0],
        external_id=identity[1],
        defaults={"first_seen_at": received_at, "last_seen_at": received_at},
    )
    fields.setdefault("timestamp", received_at)
    return Event.objects.create(
        id=fields.pop("id", None) or uuid7(),
        organization=tenant.organization,
        signal=signal,
        crm_record=record,
        identity_type=identity[0],
        identity_id=identity[1],
        received_at=received_at,
        request_hash="0" * 64,
        **fields,
    )


def ids_of(response: Any) -> list[str]:
    assert response.status_code == 200, response.content
    return [item["id"] for item in response.json()["data"]]


def read_all(client: ApiClient, **params: Any) -> tuple[list[str], int]:
    """Every id, following the cursor to the end; and how many pages it took."""
    seen: list[str] = []
    pages = 0
    cursor = None
    while True:
        response = get(client, "/v1/events", **params, **({"cursor": cursor} if cursor else {}))
        seen += ids_of(response)
        pages += 1
        cursor = response.json()["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 100


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page", rate_limit_per_minute=1000)


@pytest.fixture
def other(make_tenant: Callable[[str], Tenant]) -> Tenant:
    return make_tenant("globex")


@pytest.fixture
def other_api(other: Tenant) -> ApiClient:
    return ApiClient(other.raw_key)


# --- GET /v1/events/<id> ----------------------------------------------------------------------
def test_an_ingested_event_reads_back_in_full_at_its_location(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(
        "/v1/events",
        {**SEED_REQUEST, "timestamp": "2026-03-16T10:00:00+02:00"},
        **{"Idempotency-Key": "visit-1"},
    )

    read = get(api, response["Location"])

    assert read.status_code == 200
    body = read.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == EVENT_KEYS
    stored = Event.objects.get(pk=response.json()["data"]["id"])
    assert data == {
        "id": str(stored.id),
        "signal_id": docs_signal.public_id,
        "signal": "visited-documentation-page",
        "schema_version": None,
        "schema_valid": True,
        "violations": None,
        "identity": {"type": "account", "id": "001ABC000000123"},
        "data": SEED_REQUEST["data"],
        "timestamp": "2026-03-16T08:00:00Z",
        "received_at": stored.received_at.isoformat().replace("+00:00", "Z"),
        "reference": "evt-001",
        "idempotency_key": "visit-1",
        "status": "pending",
        "attempts": 0,
        "last_error": None,
        "result": None,
        "processed_at": None,
    }


def test_it_shows_the_schema_version_the_data_was_checked_against(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page", schema={"type": "object"})
    created = ingest(api)
    assert get(api, f"/v1/events/{created['id']}").json()["data"]["schema_version"] == 1


def test_a_processed_event_shows_its_attempts_result_and_processing_time(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    done = store_event(
        tenant,
        docs_signal,
        received_at=T0,
        status="completed",
        attempts=2,
        result={"summary": "Read the quickstart", "score": 70},
        processed_at=T0 + timedelta(seconds=3, microseconds=250),
    )
    failed = store_event(
        tenant, docs_signal, received_at=T0, status="failed", attempts=5, last_error="boom"
    )

    data = get(api, f"/v1/events/{done.id}").json()["data"]
    assert data["status"] == "completed"
    assert data["attempts"] == 2
    assert data["result"] == {"summary": "Read the quickstart", "score": 70}
    assert data["processed_at"] == "2026-03-16T12:00:03.000250Z"
    assert data["last_error"] is None

    data = get(api, f"/v1/events/{failed.id}").json()["data"]
    assert (data["status"], data["attempts"], data["last_error"]) == ("failed", 5, "boom")


def test_an_upper_case_or_undashed_id_finds_the_event_too(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    event = store_event(tenant, docs_signal, received_at=T0)
    assert get(api, f"/v1/events/{str(event.id).upper()}").json()["data"]["id"] == str(event.id)
    assert get(api, f"/v1/events/{event.id.hex}").json()["data"]["id"] == str(event.id)


def test_another_organizations_event_is_not_found(
    api: ApiClient, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("visited-documentation-page")
    foreign = ingest(other_api)

    response = get(api, f"/v1/events/{foreign['id']}")

    assert error_of(response, 404) == (f"Event not found: {foreign['id']}", "event_not_found")
    assert get(other_api, f"/v1/events/{foreign['id']}").status_code == 200


def test_an_unknown_id_is_not_found(api: ApiClient) -> None:
    missing = str(uuid.uuid4())
    assert error_of(get(api, f"/v1/events/{missing}"), 404) == (
        f"Event not found: {missing}",
        "event_not_found",
    )


@pytest.mark.parametrize(
    ("path_id", "shown"),
    [
        ("abc", "abc"),
        ("../x", "../x"),
        ("a/b/c", "a/b/c"),
        ("%2e%2e%2fx", "../x"),
        ("%00", "\x00"),
        ("12345678-1234-1234-1234-1234567890ab-extra", None),
        ("{12345678-1234-1234-1234-1234567890ab}", None),
        ("urn:uuid:12345678-1234-1234-1234-1234567890ab", None),
        ("1234_678-1234-1234-1234-1234567890ab", None),
        ("%D9%A1" * 32, "\u0661" * 32),  # Arabic-Indic digits: int() would take them
        ("9" * 5000, None),
        ("%F0%9F%92%A5", "\U0001f4a5"),
        ("'; DROP TABLE events_app_event; --", None),
    ],
)
def test_a_malformed_id_is_not_found_not_a_server_error(
    api: ApiClient, path_id: str, shown: str | None
) -> None:
    response = get(api, f"/v1/events/{path_id}")
    assert error_of(response, 404) == (f"Event not found: {shown or path_id}", "event_not_found")


def test_reading_an_event_needs_a_key(anon: ApiClient, api: ApiClient, docs_signal: Signal) -> None:
    created = ingest(api)
    response = get(anon, f"/v1/events/{created['id']}")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


# --- GET /v1/events: order, shape, pagination -------------------------------------------------
def test_the_list_is_newest_first_with_the_same_items_as_the_detail(
    api: ApiClient, docs_signal: Signal
) -> None:
    created = [ingest(api, reference=f"r{i}") for i in range(3)]

    response = get(api, "/v1/events")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "data", "next_cursor"}
    assert body["success"] is True
    assert body["next_cursor"] is None
    assert [item["id"] for item in body["data"]] == [c["id"] for c in reversed(created)]
    for item in body["data"]:
        assert item == get(api, f"/v1/events/{item['id']}").json()["data"]


def test_an_organization_without_events_gets_an_empty_list(api: ApiClient) -> None:
    assert get(api, "/v1/events").json() == {"success": True, "data": [], "next_cursor": None}


def test_the_cursor_walks_every_event_once_in_order(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    events = [
        store_event(tenant, docs_signal, received_at=T0 + timedelta(seconds=i)) for i in range(7)
    ]

    first = get(api, "/v1/events", limit=3)
    assert len(first.json()["data"]) == 3
    assert first.json()["next_cursor"]

    seen, pages = read_all(api, limit=3)
    assert seen == [str(e.id) for e in reversed(events)]
    assert pages == 3


def test_the_last_page_has_no_cursor_even_when_it_is_full(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    for i in range(6):
        store_event(tenant, docs_signal, received_at=T0 + timedelta(seconds=i))
    seen, pages = read_all(api, limit=3)
    assert (len(seen), pages) == (6, 2)


def test_events_received_in_the_same_microsecond_are_ordered_by_id_and_never_lost(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    # Many web processes can stamp the same received_at; the id breaks the tie.
    same = [store_event(tenant, docs_signal, received_at=T0) for _ in range(5)]
    older = store_event(tenant, docs_signal, received_at=T0 - timedelta(microseconds=1))
    newer = store_event(tenant, docs_signal, received_at=T0 + timedelta(microseconds=1))

    seen, _ = read_all(api, limit=2)

    tied = sorted((e.id for e in same), reverse=True)
    assert seen == [str(newer.id), *map(str, tied), str(older.id)]


def test_pages_neither_repeat_nor_skip_when_newer_events_arrive_between_requests(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    existing = [ingest(api, reference=f"old-{i}")["id"] for i in range(8)]

    seen: list[str] = []
    response = get(api, "/v1/events", limit=3)
    while True:
        seen += ids_of(response)
        # Someone keeps sending while we page, including events with the same received_at
        # as rows already shown would have (stored directly, newest possible position).
        ingest(api, reference="while-paging")
        store_event(tenant, docs_signal, received_at=timezone.now())
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
        response = get(api, "/v1/events", limit=3, cursor=cursor)

    assert seen == list(reversed(existing))
    # The new ones are all there for the next reader, on top.
    assert len(read_all(api, limit=100)[0]) == 8 + 2 * 3


def test_limit_defaults_to_50_and_goes_up_to_100(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    for i in range(101):
        store_event(tenant, docs_signal, received_at=T0 + timedelta(milliseconds=i))
    assert len(get(api, "/v1/events").json()["data"]) == 50
    assert len(get(api, "/v1/events", limit="").json()["data"]) == 50
    page = get(api, "/v1/events", limit=100).json()
    assert len(page["data"]) == 100
    assert page["next_cursor"] is not None
    assert len(get(api, "/v1/events", limit=1).json()["data"]) == 1


# --- GET /v1/events: filters ------------------------------------------------------------------
@pytest.fixture
def mixed(tenant: Tenant, docs_signal: Signal) -> dict[str, Event]:
    calls = tenant.signal("api-calls", type="metric")
    return {
        "a": store_event(tenant, docs_signal, received_at=T0, reference="ref-a"),
        "b": store_event(
            tenant,
            docs_signal,
            received_at=T0 + timedelta(hours=1),
            identity=("contact", "C1"),
            status="completed",
        ),
        "c": store_event(
            tenant,
            calls,
            received_at=T0 + timedelta(hours=2),
            identity=("account", "A2"),
            status="failed",
            reference="ref-c",
        ),
        "d": store_event(
            tenant, calls, received_at=T0 + timedelta(hours=3), identity=("lead", "A1")
        ),
    }


def names(response: Any, mixed: dict[str, Event]) -> str:
    by_id = {str(e.id): name for name, e in mixed.items()}
    return "".join(by_id[i] for i in ids_of(response))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "dcba"),
        ({"signal": "api-calls"}, "dc"),
        ({"signal": "visited-documentation-page"}, "ba"),
        ({"signal": "no-such-signal"}, ""),
        ({"identity_type": "account"}, "ca"),
        ({"identity_id": "A1"}, "da"),
        ({"identity_type": "account", "identity_id": "A1"}, "a"),
        ({"status": "pending"}, "da"),
        ({"status": "failed"}, "c"),
        ({"status": "processing"}, ""),
        ({"reference": "ref-c"}, "c"),
        ({"reference": "ref-x"}, ""),
        ({"since": "2026-03-16T13:00:00Z"}, "dcb"),  # since is inclusive
        ({"until": "2026-03-16T13:00:00Z"}, "a"),  # until is exclusive
        ({"since": "2026-03-16T13:00:00Z", "until": "2026-03-16T15:00:00Z"}, "cb"),
        ({"since": "2026-03-16T15:00:00+02:00"}, "dcb"),
        ({"since": "2026-03-16T13:30:00"}, "dc"),  # no offset: UTC
        ({"since": "2026-03-16 13:30:00.000001Z"}, "dc"),
        ({"until": "2026-03-17"}, "dcba"),  # a date: midnight UTC
        ({"status": "pending", "signal": "api-calls"}, "d"),
        ({"signal": "", "reference": ""}, "dcba"),  # empty means no filter
    ],
)
def test_filters_narrow_the_list(
    api: ApiClient, mixed: dict[str, Event], params: dict[str, str], expected: str
) -> None:
    assert names(get(api, "/v1/events", **params), mixed) == expected


def test_filters_hold_across_pages(api: ApiClient, tenant: Tenant, docs_signal: Signal) -> None:
    wanted = []
    for i in range(9):
        event = store_event(
            tenant, docs_signal, received_at=T0 + timedelta(seconds=i), reference=f"r{i % 3}"
        )
        if i % 3 == 0:
            wanted.append(str(event.id))
    seen, pages = read_all(api, reference="r0", limit=2)
    assert seen == list(reversed(wanted))
    assert pages == 2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit must be an integer from 1 to 100"),
        ({"limit": "101"}, "limit must be an integer from 1 to 100"),
        ({"limit": "-1"}, "limit must be an integer from 1 to 100"),
        ({"limit": "1.5"}, "limit must be an integer from 1 to 100"),
        ({"limit": "ten"}, "limit must be an integer from 1 to 100"),
        ({"limit": "9" * 400}, "limit must be an integer from 1 to 100"),
        ({"limit": "\u0661"}, "limit must be an integer from 1 to 100"),
        ({"status": "done"}, "status must be one of pending, processing, completed, failed"),
        ({"reference": "x\x00y"}, "reference must not contain a NUL character"),
        ({"identity_id": "x" * 256}, "identity_id must be at most 255 characters"),
        ({"signal": "s" * 101}, "signal must be at most 100 characters"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(
    api: ApiClient, params: dict[str, str], message: str
) -> None:
    assert error_of(get(api, "/v1/events", **params), 400) == (message, "invalid_parameter")


@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2026-13-01T00:00:00Z",
        "2026-03-16T12:00:00 02:00",  # an unencoded '+' arrives as a space
        "0001-01-01T00:00:00+01:00",  # overflows when moved to UTC
        "2026-03-16T12:00:00Z" + "0" * 60,
        "\x00",
    ],
)
def test_a_bad_time_bound_is_a_400_naming_the_parameter(
    api: ApiClient, name: str, value: str
) -> None:
    message, code = error_of(get(api, "/v1/events", **{name: value}), 400)
    assert message.startswith(f"{name} must ")
    assert code == "invalid_parameter"


def test_extreme_but_valid_time_bounds_are_fine(api: ApiClient, mixed: dict[str, Event]) -> None:
    assert names(get(api, "/v1/events", since="0001-01-01T00:00:00Z"), mixed) == "dcba"
    assert names(get(api, "/v1/events", until="9999-12-31T23:59:59.999999Z"), mixed) == "dcba"


def test_a_cursor_that_was_tampered_with_is_a_400(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    for i in range(3):
        store_event(tenant, docs_signal, received_at=T0 + timedelta(seconds=i))
    cursor = get(api, "/v1/events", limit=1).json()["next_cursor"]
    payload, _, signature = cursor.rpartition(":")
    forged = [
        payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + ":" + signature,
        cursor[:-1] + ("A" if cursor[-1] != "A" else "B"),
        "not-a-cursor",
        ":",
        cursor + ":extra",
        "x" * 5000,
        "WzEsMl0:" + signature,
        "\x00",
        "é:é",
    ]
    for bad in forged:
        response = get(api, "/v1/events", cursor=bad)
        assert error_of(response, 400) == ("cursor is invalid", "invalid_cursor"), bad


def test_a_cursor_signed_for_something_else_is_refused(api: ApiClient) -> None:
    from django.core import signing

    lookalike = signing.Signer(salt="something.else").sign_object([0, uuid.uuid4().hex])
    assert error_of(get(api, "/v1/events", cursor=lookalike), 400)[1] == "invalid_cursor"


# --- GET /v1/events: isolation and cost -------------------------------------------------------
def test_another_organizations_events_never_appear_whatever_the_filters(
    api: ApiClient,
    tenant: Tenant,
    docs_signal: Signal,
    other: Tenant,
    other_api: ApiClient,
) -> None:
    # Same signal slug, same identity, same reference in both organizations.
    other.signal("visited-documentation-page", rate_limit_per_minute=1000)
    mine = {ingest(api)["id"] for _ in range(2)}
    theirs = {ingest(other_api)["id"] for _ in range(3)}

    for params in (
        {},
        {"signal": "visited-documentation-page"},
        {"identity_type": "account", "identity_id": "001ABC000000123"},
        {"reference": "evt-001"},
        {"status": "pending"},
    ):
        assert set(ids_of(get(api, "/v1/events", **params))) == mine
        assert set(ids_of(get(other_api, "/v1/events", **params))) == theirs

    # Their cursor is bound to their organization: with my key it is refused like a forged one
    # (docs/security.md), rather than paging my events from their position.
    their_cursor = get(other_api, "/v1/events", limit=1).json()["next_cursor"]
    assert error_of(get(api, "/v1/events", cursor=their_cursor), 400) == (
        "cursor is invalid",
        "invalid_cursor",
    )


def test_listing_costs_one_query_however_many_events_and_signals(
    api: ApiClient, tenant: Tenant, django_assert_max_num_queries: Any
) -> None:
    signals = [tenant.signal(f"signal-{n}") for n in range(5)]
    get(api, "/v1/events")  # warm the key lookup and its last-used stamp
    for i in range(30):
        store_event(tenant, signals[i % 5], received_at=T0 + timedelta(seconds=i))

    with django_assert_max_num_queries(1):
        response = get(api, "/v1/events", limit=30)
    assert {item["signal"] for item in response.json()["data"]} == {s.slug for s in signals}

    cursor = get(api, "/v1/events", limit=10).json()["next_cursor"]
    with django_assert_max_num_queries(1):
        assert len(ids_of(get(api, "/v1/events", limit=10, cursor=cursor))) == 10


def test_listing_needs_a_key(anon: ApiClient) -> None:
    response = get(anon, "/v1/events")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


def test_posting_to_the_collection_still_ingests(api: ApiClient, docs_signal: Signal) -> None:
    assert api.post("/v1/events", SEED_REQUEST).status_code == 202
    assert len(get(api, "/v1/events").json()["data"]) == 1


def test_the_list_reads_the_organization_received_at_index_on_postgres(
    tenant: Tenant, docs_signal: Signal
) -> None:
    """Pins the list's plan on purpose: on a large table only the index keeps a page cheap, and
    no result tells an index scan from a scan of the table."""
    if not on_postgres():
        pytest.skip("query plans are PostgreSQL's: run with DATABASE_URL=postgres://...")
    for i in range(3):
        store_event(tenant, docs_signal, received_at=T0 + timedelta(seconds=i))
    for plan in event_list_plans(tenant.organization.pk, EventFilters()):
        assert "event_org_received" in plan, plan


# --- GET /v1/records/<type>/<id> --------------------------------------------------------------
def test_a_record_profile_counts_events_per_signal(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visited-documentation-page", rate_limit_per_minute=1000)
    calls = tenant.signal("api-calls", type="metric")
    tenant.signal("unused")
    ingest(api, timestamp="2026-03-16T09:00:00Z")
    ingest(api, timestamp="2026-03-16T11:00:00Z")
    ingest(api, timestamp="2026-03-16T10:00:00Z")
    ingest(api, signal="api-calls", data={"value": 3}, timestamp="2026-03-15T08:00:00Z")
    ingest(api, identity={"type": "contact", "id": "001ABC000000123"})  # another record
    record = CrmRecord.objects.get(type="account", external_id="001ABC000000123")

    response = get(api, "/v1/records/account/001ABC000000123")

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {
        "type": "account",
        "id": "001ABC000000123",
        "first_seen_at": record.first_seen_at.isoformat().replace("+00:00", "Z"),
        "last_seen_at": record.last_seen_at.isoformat().replace("+00:00", "Z"),
        "event_count": 4,
        "events_by_signal": [
            {
                "signal": "api-calls",
                "signal_id": calls.public_id,
                "count": 1,
                "last_event_at": "2026-03-15T08:00:00Z",
            },
            {
                "signal": "visited-documentation-page",
                "signal_id": Signal.objects.get(slug="visited-documentation-page").public_id,
                "count": 3,
                "last_event_at": "2026-03-16T11:00:00Z",
            },
        ],
        # Nothing processed yet.
        "states": [],
        "aggregates": [],
        "engagement_score": 0.0,
        "insights": [],
    }
    assert record.first_seen_at < record.last_seen_at


@pytest.mark.parametrize(
    ("external_id", "path_id"),
    [
        ("eu/acme/42", "eu/acme/42"),
        ("eu/acme/42", quote("eu/acme/42", safe="")),
        ("trailing/", "trailing/"),
        ("Zoë Müller ✓ 42", quote("Zoë Müller ✓ 42", safe="")),
        ("100% + more?#&=", quote("100% + more?#&=", safe="")),
        (" spaced  out ", "%20spaced%20%20out%20"),
        ("..", ".."),
    ],
)
def test_a_record_id_may_hold_any_characters(
    api: ApiClient, docs_signal: Signal, external_id: str, path_id: str
) -> None:
    ingest(api, identity={"type": "account", "id": external_id})

    response = get(api, f"/v1/records/account/{path_id}")

    assert response.status_code == 200, response.content
    assert response.json()["data"]["id"] == external_id
    assert response.json()["data"]["event_count"] == 1


def test_a_custom_record_type_is_read_like_any_other(api: ApiClient, docs_signal: Signal) -> None:
    ingest(api, identity={"type": "workspace_2", "id": "w-1"})
    assert get(api, "/v1/records/workspace_2/w-1").json()["data"]["type"] == "workspace_2"


def test_an_unknown_record_is_not_found(api: ApiClient, docs_signal: Signal) -> None:
    ingest(api)
    assert error_of(get(api, "/v1/records/account/nope"), 404) == (
        "Record not found: account/nope",
        "record_not_found",
    )
    # Same id, other type: another record.
    assert error_of(get(api, "/v1/records/contact/001ABC000000123"), 404) == (
        "Record not found: contact/001ABC000000123",
        "record_not_found",
    )
    assert error_of(get(api, "/v1/records/account/a/b"), 404)[0] == "Record not found: account/a/b"
    assert error_of(get(api, "/v1/records/account/%00"), 404)[1] == "record_not_found"
    assert error_of(get(api, "/v1/records/%00/x"), 404)[1] == "record_not_found"
    assert error_of(get(api, "/v1/records/account/" + "x" * 3000), 404)[1] == "record_not_found"


def test_another_organizations_record_is_not_found(
    api: ApiClient, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("visited-documentation-page")
    ingest(other_api)

    assert error_of(get(api, "/v1/records/account/001ABC000000123"), 404) == (
        "Record not found: account/001ABC000000123",
        "record_not_found",
    )
    assert get(other_api, "/v1/records/account/001ABC000000123").status_code == 200


def test_a_record_counts_only_its_own_organizations_events(
    api: ApiClient, docs_signal: Signal, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("visited-documentation-page")
    ingest(api)
    for _ in range(3):
        ingest(other_api)
    data = get(api, "/v1/records/account/001ABC000000123").json()["data"]
    assert data["event_count"] == 1
    assert [item["signal_id"] for item in data["events_by_signal"]] == [docs_signal.public_id]


def test_a_record_profile_costs_five_queries_however_many_signals(
    api: ApiClient, tenant: Tenant, django_assert_max_num_queries: Any
) -> None:
    from events_app.pipeline.processing import events_process

    signals = [tenant.signal(f"signal-{n}") for n in range(2)]
    signals += [tenant.signal(f"metric-{n}", type="metric") for n in range(2)]
    signals += [tenant.signal(f"state-{n}", type="state") for n in range(2)]
    events = [
        store_event(
            tenant, signals[i % 6], received_at=T0 + timedelta(seconds=i), data={"value": i}
        )
        for i in range(18)
    ]
    events_process(event_ids=[event.id for event in events])
    get(api, "/v1/records/account/A1")  # warm the key lookup

    # The record, counts per signal, states, aggregates (one windowed query), insights.
    with django_assert_max_num_queries(5):
        data = get(api, "/v1/records/account/A1").json()["data"]
    assert data["event_count"] == 18
    assert [item["count"] for item in data["events_by_signal"]] == [3] * 6
    assert len(data["states"]) == 2 and len(data["aggregates"]) == 2
    assert [len(series["buckets"]) for series in data["aggregates"]] == [1, 1]
    assert len(data["insights"]) == 10  # of 12: 6 events, 6 state changes


def test_reading_a_record_needs_a_key(anon: ApiClient) -> None:
    assert get(anon, "/v1/records/account/x").status_code == 401

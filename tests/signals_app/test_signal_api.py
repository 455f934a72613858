"""GET /v1/signals, /v1/signals/<slug> and /v1/signals/<slug>/schemas/<n|latest> through the
whole HTTP stack with real keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from signals_app.models import SchemaVersion, Signal
from signals_app.services import schema_version_create, signal_update
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

SIGNAL_KEYS = {
    "signal_id",
    "slug",
    "name",
    "type",
    "description",
    "ai_instructions",
    "active",
    "rate_limit_per_minute",
    "rate_limit_is_override",
    "compatibility",
    "enforcement",
    "redact",
    "latest_version",
    "versions",
}
METRIC_KEYS = {"aggregation", "period", "value_field"}
V1 = {"type": "object", "properties": {"page": {"type": "string"}}}
# A backward-compatible step (the fixture's signal is `backward`): page may now also be null.
V2 = {"type": "object", "properties": {"page": {"type": ["string", "null"]}}}


def get(client: ApiClient, path: str, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {client.raw_key}"} if client.raw_key else {}
    return client.client.get(path, params, headers=headers)


def data_of(response: Any) -> Any:
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["success"] is True
    return body["data"]


def error_of(response: Any, status: int) -> tuple[str, str | None]:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["success"] is False
    return body["error"], body.get("code")


def iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z")


@pytest.fixture
def other(make_tenant: Callable[[str], Tenant]) -> Tenant:
    return make_tenant("globex")


@pytest.fixture
def other_api(other: Tenant) -> ApiClient:
    return ApiClient(other.raw_key)


@pytest.fixture
def page_signal(tenant: Tenant) -> Signal:
    signal = tenant.signal(
        "visited-documentation-page",
        description="A page of the docs was read",
        ai_instructions="Reading the pricing page means buying intent.",
        compatibility="backward",
        enforcement="flag",
        redact=[{"path": "/visitor/email", "mode": "hash"}, {"path": "/ip", "mode": "drop"}],
    )
    schema_version_create(signal=signal, schema=V1)
    schema_version_create(signal=signal, schema=V2)
    return signal


# --- GET /v1/signals --------------------------------------------------------------------------
def test_the_list_shows_every_signal_of_the_organization_by_slug(
    api: ApiClient, tenant: Tenant, page_signal: Signal
) -> None:
    calls = tenant.signal(
        "api-calls", type="metric", aggregation="avg", period="hour", rate_limit_per_minute=5000
    )
    plan = tenant.signal("plan", type="state", active=False)

    data = data_of(get(api, "/v1/signals"))

    assert [item["slug"] for item in data] == ["api-calls", "plan", "visited-documentation-page"]
    versions = list(SchemaVersion.objects.filter(signal=page_signal).order_by("version"))
    assert data[2] == {
        "signal_id": page_signal.public_id,
        "slug": "visited-documentation-page",
        "name": "Visited Documentation Page",
        "type": "event",
        "description": "A page of the docs was read",
        "ai_instructions": "Reading the pricing page means buying intent.",
        "active": True,
        "rate_limit_per_minute": 100,
        "rate_limit_is_override": False,
        "compatibility": "backward",
        "enforcement": "flag",
        "redact": [{"path": "/visitor/email", "mode": "hash"}, {"path": "/ip", "mode": "drop"}],
        "latest_version": 2,
        "versions": [{"version": v.version, "created_at": iso(v.created_at)} for v in versions],
    }
    assert data[0] == {
        "signal_id": calls.public_id,
        "slug": "api-calls",
        "name": "Api Calls",
        "type": "metric",
        "description": "",
        "ai_instructions": "",
        "active": True,
        "rate_limit_per_minute": 5000,
        "rate_limit_is_override": True,
        "compatibility": "none",
        "enforcement": "reject",
        "redact": [],
        "aggregation": "avg",
        "period": "hour",
        "value_field": "value",
        "latest_version": None,
        "versions": [],
    }
    assert data[1]["signal_id"] == plan.public_id
    assert data[1]["active"] is False
    assert data[1]["rate_limit_per_minute"] == 30
    assert set(data[1]) == SIGNAL_KEYS


def test_metric_settings_appear_on_metric_signals_only(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("e", type="event")
    tenant.signal("m", type="metric", value_field="amount")
    tenant.signal("s", type="state")
    by_slug = {item["slug"]: item for item in data_of(get(api, "/v1/signals"))}
    assert set(by_slug["e"]) == SIGNAL_KEYS
    assert set(by_slug["s"]) == SIGNAL_KEYS
    assert set(by_slug["m"]) == SIGNAL_KEYS | METRIC_KEYS
    assert by_slug["m"]["value_field"] == "amount"


def test_the_rate_limit_shown_is_the_one_ingest_applies(
    api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    settings.BIGMIND_RATE_LIMITS = {**settings.BIGMIND_RATE_LIMITS, "event": 7}
    tenant.signal("default-limit")
    tenant.signal("own-limit", rate_limit_per_minute=11)

    for slug, limit, override in (("default-limit", 7, False), ("own-limit", 11, True)):
        shown = data_of(get(api, f"/v1/signals/{slug}"))
        assert (shown["rate_limit_per_minute"], shown["rate_limit_is_override"]) == (
            limit,
            override,
        )
        ingest = api.post("/v1/events", {**SEED_REQUEST, "signal": slug})
        assert ingest.status_code == 202
        assert ingest["X-RateLimit-Limit"] == str(limit)


def test_an_organization_without_signals_gets_an_empty_list(api: ApiClient) -> None:
    assert get(api, "/v1/signals").json() == {"success": True, "data": []}


def test_another_organizations_signals_are_not_listed(
    api: ApiClient, page_signal: Signal, other: Tenant, other_api: ApiClient
) -> None:
    theirs = other.signal("visited-documentation-page")
    other.signal("their-only-signal")

    mine = data_of(get(api, "/v1/signals"))
    assert [item["signal_id"] for item in mine] == [page_signal.public_id]
    listed = data_of(get(other_api, "/v1/signals"))
    assert {item["signal_id"] for item in listed} == {
        theirs.public_id,
        Signal.objects.get(slug="their-only-signal").public_id,
    }
    assert all(item["versions"] == [] for item in listed)


def test_the_list_costs_two_queries_however_many_signals_and_versions(
    api: ApiClient, tenant: Tenant, django_assert_max_num_queries: Any
) -> None:
    get(api, "/v1/signals")  # warm the key lookup and its last-used stamp
    for n in range(8):
        signal = tenant.signal(f"signal-{n}", type=("event", "metric", "state")[n % 3])
        for _ in range(n % 3):
            schema_version_create(signal=signal, schema=V1)

    with django_assert_max_num_queries(2):
        data = data_of(get(api, "/v1/signals"))
    assert len(data) == 8
    assert [item["latest_version"] for item in data] == [None, 1, 2, None, 1, 2, None, 1]


def test_listing_signals_needs_a_key(anon: ApiClient) -> None:
    response = get(anon, "/v1/signals")
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


# --- GET /v1/signals/<slug> -------------------------------------------------------------------
def test_one_signal_reads_like_its_list_item(api: ApiClient, page_signal: Signal) -> None:
    one = data_of(get(api, "/v1/signals/visited-documentation-page"))
    assert one == data_of(get(api, "/v1/signals"))[0]
    assert one["latest_version"] == 2
    assert [v["version"] for v in one["versions"]] == [1, 2]


def test_an_inactive_signal_is_shown_with_active_false(api: ApiClient, page_signal: Signal) -> None:
    signal_update(signal=page_signal, active=False)
    one = data_of(get(api, "/v1/signals/visited-documentation-page"))
    assert one["active"] is False
    # Ingest refuses it all the same.
    assert api.post("/v1/events", SEED_REQUEST).status_code == 404


@pytest.mark.parametrize(
    ("path_slug", "shown"),
    [
        ("nope", "nope"),
        ("Visited-Documentation-Page", "Visited-Documentation-Page"),
        ("%00", "\x00"),
        ("z%C3%B6e", "zöe"),
        ("x" * 3000, "x" * 3000),
    ],
)
def test_an_unknown_signal_is_not_found(
    api: ApiClient, page_signal: Signal, path_slug: str, shown: str
) -> None:
    assert error_of(get(api, f"/v1/signals/{path_slug}"), 404) == (
        f"Signal not found: {shown}",
        "signal_not_found",
    )


def test_another_organizations_signal_is_not_found(
    api: ApiClient, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("theirs")
    assert error_of(get(api, "/v1/signals/theirs"), 404) == (
        "Signal not found: theirs",
        "signal_not_found",
    )
    assert data_of(get(other_api, "/v1/signals/theirs"))["slug"] == "theirs"


def test_reading_a_signal_needs_a_key(anon: ApiClient, page_signal: Signal) -> None:
    assert get(anon, "/v1/signals/visited-documentation-page").status_code == 401


# --- GET /v1/signals/<slug>/schemas/<n|latest> ------------------------------------------------
def test_a_schema_version_is_served_by_number(api: ApiClient, page_signal: Signal) -> None:
    first = SchemaVersion.objects.get(signal=page_signal, version=1)
    assert get(api, "/v1/signals/visited-documentation-page/schemas/1").json() == {
        "success": True,
        "data": {
            "signal_id": page_signal.public_id,
            "slug": "visited-documentation-page",
            "version": 1,
            "schema": V1,
            "created_at": iso(first.created_at),
        },
    }


def test_latest_is_the_highest_version(api: ApiClient, page_signal: Signal) -> None:
    latest = data_of(get(api, "/v1/signals/visited-documentation-page/schemas/latest"))
    assert (latest["version"], latest["schema"]) == (2, V2)
    schema_version_create(signal=page_signal, schema={"type": "object"})
    latest = data_of(get(api, "/v1/signals/visited-documentation-page/schemas/latest"))
    assert (latest["version"], latest["schema"]) == (3, {"type": "object"})


def test_the_schema_of_an_inactive_signal_can_still_be_read(
    api: ApiClient, page_signal: Signal
) -> None:
    signal_update(signal=page_signal, active=False)
    assert data_of(get(api, "/v1/signals/visited-documentation-page/schemas/2"))["version"] == 2


@pytest.mark.parametrize(
    "version",
    [
        "3",
        "0",
        "007",
        "99999999999999999999999999",
        "2147483648",
        "abc",
        "-1",
        "1.0",
        "LATEST",
        "%D9%A1",
        "%00",
        "%20",
    ],
)
def test_a_version_that_does_not_exist_is_not_found(
    api: ApiClient, page_signal: Signal, version: str
) -> None:
    from urllib.parse import unquote

    message, code = error_of(
        get(api, f"/v1/signals/visited-documentation-page/schemas/{version}"), 404
    )
    assert (
        message
        == f"Schema version {unquote(version)} not found for signal visited-documentation-page"
    )
    assert code == "schema_version_not_found"


def test_latest_of_a_signal_without_schemas_is_not_found(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("no-schema")
    assert error_of(get(api, "/v1/signals/no-schema/schemas/latest"), 404) == (
        "Schema version latest not found for signal no-schema",
        "schema_version_not_found",
    )
    assert error_of(get(api, "/v1/signals/no-schema/schemas/1"), 404)[1] == (
        "schema_version_not_found"
    )


def test_the_schema_of_an_unknown_signal_is_signal_not_found(api: ApiClient) -> None:
    for version in ("1", "latest", "abc"):
        assert error_of(get(api, f"/v1/signals/nope/schemas/{version}"), 404) == (
            "Signal not found: nope",
            "signal_not_found",
        )
    assert error_of(get(api, "/v1/signals/%00/schemas/1"), 404)[1] == "signal_not_found"


def test_another_organizations_schemas_are_not_found(
    api: ApiClient, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("theirs", schema=V1)
    for version in ("1", "latest"):
        assert error_of(get(api, f"/v1/signals/theirs/schemas/{version}"), 404) == (
            "Signal not found: theirs",
            "signal_not_found",
        )
        assert data_of(get(other_api, f"/v1/signals/theirs/schemas/{version}"))["schema"] == V1


def test_same_slug_in_two_organizations_serves_each_its_own_schema(
    api: ApiClient, page_signal: Signal, other: Tenant, other_api: ApiClient
) -> None:
    other.signal("visited-documentation-page", schema={"type": "object", "title": "theirs"})
    mine = data_of(get(api, "/v1/signals/visited-documentation-page/schemas/1"))
    theirs = data_of(get(other_api, "/v1/signals/visited-documentation-page/schemas/1"))
    assert mine["schema"] == V1
    assert theirs["schema"] == {"type": "object", "title": "theirs"}
    assert error_of(get(other_api, "/v1/signals/visited-documentation-page/schemas/2"), 404)[1] == (
        "schema_version_not_found"
    )


def test_reading_a_schema_needs_a_key(anon: ApiClient, page_signal: Signal) -> None:
    assert get(anon, "/v1/signals/visited-documentation-page/schemas/1").status_code == 401


def test_the_read_routes_answer_405_to_other_methods(api: ApiClient, page_signal: Signal) -> None:
    for path in (
        "/v1/signals",
        "/v1/signals/visited-documentation-page",
        "/v1/signals/visited-documentation-page/schemas/1",
    ):
        response = api.post(path, {})
        assert response.status_code == 405
        assert response.json()["success"] is False

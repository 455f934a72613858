"""No input of any kind produces a 5xx: generated JSON bodies and raw bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ApiClient, Tenant

URL = "/v1/events"
# Surrogates included: json.dumps escapes them as \udxxx, which the API must refuse cleanly.
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4)
    ),
    max_leaves=20,
)
signals = st.sampled_from(["open", "schemaed", "nope", "", "Open"]) | json_values
identities = (
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(["account", "contact", "custom_x", "Account", ""])
            | json_values,
            "id": st.text(max_size=300) | json_values,
        },
    )
    | json_values
)
timestamps = (
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.sampled_from(
        ["2026-03-16T12:00:00Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"]
    )
    | json_values
)
bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "signal": signals,
            "version": st.sampled_from(["latest", 1, 2, 0, -1, 1.0, 2**40]) | json_values,
            "identity": identities,
            "data": st.dictionaries(any_text, json_values, max_size=5) | json_values,
            "timestamp": timestamps,
            "reference": st.text(max_size=300) | json_values,
            "idempotency_key": st.text(max_size=300) | json_values,
        },
    )
    | json_values
)

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzz_tenant(tenant: Tenant) -> Tenant:
    tenant.signal("open", rate_limit_per_minute=10**9)
    tenant.signal(
        "schemaed",
        rate_limit_per_minute=10**9,
        schema={
            "type": "object",
            "properties": {
                "n": {"type": "number", "maximum": 10},
                "s": {"type": "string", "pattern": "^a"},
            },
            "additionalProperties": {"type": ["string", "number", "object"]},
        },
    )
    return tenant


def _assert_clean(response) -> None:
    assert response.status_code < 500, response.content[:300]
    body = response.json()
    assert body["success"] is (response.status_code in (200, 202))
    if not body["success"]:
        assert isinstance(body["error"], str) and body["error"]


@FUZZ
@given(body=bodies)
def test_generated_json_bodies_never_produce_a_5xx(fuzz_tenant: Tenant, body: object) -> None:
    response = ApiClient(fuzz_tenant.raw_key).post_raw(URL, json.dumps(body))
    _assert_clean(response)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_produce_a_5xx(fuzz_tenant: Tenant, raw: bytes) -> None:
    _assert_clean(ApiClient(fuzz_tenant.raw_key).post_raw(URL, raw))


@FUZZ
@given(
    prefix=st.sampled_from(
        [b'{"signal": "open", "identity": {"type": "account", "id": "', b'{"data": ']
    ),
    raw=st.binary(max_size=200),
)
def test_mangled_bodies_never_produce_a_5xx(fuzz_tenant: Tenant, prefix: bytes, raw: bytes) -> None:
    _assert_clean(ApiClient(fuzz_tenant.raw_key).post_raw(URL, prefix + raw))


@FUZZ
@given(header=st.text(max_size=80), key=st.text(max_size=80))
def test_arbitrary_authorization_and_idempotency_headers_never_produce_a_5xx(
    fuzz_tenant: Tenant, header: str, key: str
) -> None:
    client = ApiClient(None)
    body = {"signal": "open", "identity": {"type": "account", "id": "1"}}
    try:
        response = client.post(URL, body, Authorization=header, **{"Idempotency-Key": key})
    except (ValueError, UnicodeEncodeError):
        return  # the test client itself refuses header values no HTTP client could send
    _assert_clean(response)


@FUZZ
@given(events=st.lists(bodies, min_size=0, max_size=8) | json_values)
def test_generated_batches_never_produce_a_5xx(fuzz_tenant: Tenant, events: object) -> None:
    response = ApiClient(fuzz_tenant.raw_key).post_raw(
        "/v1/events/batch", json.dumps({"events": events})
    )
    assert response.status_code < 500, response.content[:300]
    body = response.json()
    assert body["success"] is (response.status_code == 202)


@FUZZ
@given(body=bodies)
def test_generated_bodies_never_make_validate_produce_a_5xx(
    fuzz_tenant: Tenant, body: object
) -> None:
    _assert_clean_validate(
        ApiClient(fuzz_tenant.raw_key).post_raw("/v1/events/validate", json.dumps(body))
    )


def _assert_clean_validate(response) -> None:
    assert response.status_code < 500, response.content[:300]
    assert response.json()["success"] is (response.status_code == 200)

"""POST /v1/events/validate: the checks of ingest without storing or spending budget."""

from __future__ import annotations

import pytest

from events_app.models import Event
from signals_app.models import Signal
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

URL = "/v1/events/validate"
PAGE_SCHEMA = {"type": "object", "required": ["page"], "properties": {"page": {"type": "string"}}}


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA, rate_limit_per_minute=1)


def test_a_valid_event_is_reported_valid_and_nothing_is_stored(
    api: ApiClient, docs_signal: Signal, django_capture_on_commit_callbacks
) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(URL, SEED_REQUEST)
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {
            "valid": True,
            "signal_id": docs_signal.public_id,
            "schema_version": 1,
            "schema_valid": True,
            "violations": None,
        },
    }
    assert Event.objects.count() == 0
    assert callbacks == []


def test_validation_spends_no_budget(api: ApiClient, docs_signal: Signal) -> None:
    for _ in range(3):
        response = api.post(URL, SEED_REQUEST)
        assert response.status_code == 200
        assert response["X-RateLimit-Remaining"] == "1"
    assert api.post("/v1/events", SEED_REQUEST).status_code == 202
    # Budget spent: validation still answers (it does not rate-limit).
    assert api.post(URL, SEED_REQUEST).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {**SEED_REQUEST, "signal": ""},
        {**SEED_REQUEST, "identity": {}},
        {**SEED_REQUEST, "version": "x"},
        {**SEED_REQUEST, "signal": "nope"},
        {**SEED_REQUEST, "version": 4},
        {**SEED_REQUEST, "data": {"page": 1}},
        [1],
    ],
)
def test_an_invalid_event_gets_exactly_the_error_ingest_would_give(
    api: ApiClient, tenant: Tenant, body: object
) -> None:
    tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA, rate_limit_per_minute=1000)
    validated = api.post(URL, body)
    ingested = api.post("/v1/events", body)
    assert validated.status_code == ingested.status_code >= 400
    assert validated.json() == ingested.json()


def test_an_idempotency_key_used_for_another_request_is_reported(
    api: ApiClient, docs_signal: Signal
) -> None:
    assert api.post("/v1/events", SEED_REQUEST, **{"Idempotency-Key": "k"}).status_code == 202
    assert api.post(URL, SEED_REQUEST, **{"Idempotency-Key": "k"}).status_code == 200
    other = {**SEED_REQUEST, "reference": "other"}
    response = api.post(URL, other, **{"Idempotency-Key": "k"})
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_conflict"


def test_validation_needs_a_key(anon: ApiClient) -> None:
    assert anon.post(URL, SEED_REQUEST).status_code == 401

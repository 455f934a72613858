"""POST /v1/events through the whole HTTP stack, row by row of the contract's error table."""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from django.utils import timezone

from events_app.models import CrmRecord, Event
from signals_app.models import Signal
from signals_app.services import api_key_revoke, signal_update
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

URL = "/v1/events"
PAGE_SCHEMA = {
    "type": "object",
    "required": ["page"],
    "properties": {
        "page": {"type": "string"},
        "duration_seconds": {"type": "integer", "minimum": 0},
        "referrer": {"type": "string"},
    },
}


def event(**overrides: object) -> dict:
    body = json.loads(json.dumps(SEED_REQUEST))
    body.update(overrides)
    return body


def error_of(response) -> str:
    body = response.json()
    assert body["success"] is False
    assert set(body) >= {"success", "error"}
    return body["error"]


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page")


# --- The seed page's example ------------------------------------------------------------------
def test_the_seed_example_is_accepted_with_the_documented_response(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, SEED_REQUEST)

    assert response.status_code == 202
    body = response.json()
    assert body["success"] is True
    document = json.loads(Client().get("/v1/openapi.json").content)
    assert set(body["data"]) == set(
        document["components"]["schemas"]["EventAccepted"]["properties"]
    )
    assert uuid.UUID(body["data"]["id"]).version == 7
    assert body["data"]["signal_id"] == docs_signal.public_id
    assert re.fullmatch(r"sig_[A-Za-z0-9]{8}", body["data"]["signal_id"])
    assert body["data"]["schema_version"] is None
    assert body["data"]["status"] == "pending"
    assert body["data"]["reference"] == "evt-001"
    assert response["Location"] == f"/v1/events/{body['data']['id']}"
    assert response["Content-Type"] == "application/json"


def test_it_stores_every_field_of_the_request(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(timestamp="2026-03-16T10:00:00+02:00"))

    stored = Event.objects.get(pk=response.json()["data"]["id"])
    assert stored.signal_id == docs_signal.pk
    assert stored.identity_type == "account"
    assert stored.identity_id == "001ABC000000123"
    assert stored.data == SEED_REQUEST["data"]
    assert stored.timestamp == datetime(2026, 3, 16, 8, 0, tzinfo=UTC)
    assert stored.reference == "evt-001"
    assert stored.status == "pending"
    assert stored.received_at is not None


def test_reference_is_null_when_none_was_sent(api: ApiClient, docs_signal: Signal) -> None:
    body = event()
    del body["reference"]
    response = api.post(URL, body)
    assert response.status_code == 202
    assert response.json()["data"]["reference"] is None


def test_timestamp_defaults_to_the_time_of_receipt(api: ApiClient, docs_signal: Signal) -> None:
    before = timezone.now()
    response = api.post(URL, event())
    stored = Event.objects.get(pk=response.json()["data"]["id"])
    assert before <= stored.timestamp <= timezone.now()
    assert stored.timestamp == stored.received_at


def test_a_timestamp_without_offset_is_taken_as_utc(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(timestamp="2026-03-16T10:00:00"))
    stored = Event.objects.get(pk=response.json()["data"]["id"])
    assert stored.timestamp == datetime(2026, 3, 16, 10, 0, tzinfo=UTC)


def test_version_and_data_are_optional(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(
        URL, {"signal": "visited-documentation-page", "identity": {"type": "lead", "id": "L1"}}
    )
    assert response.status_code == 202
    assert Event.objects.get(pk=response.json()["data"]["id"]).data == {}


def test_every_response_carries_a_request_id(
    api: ApiClient, anon: ApiClient, docs_signal: Signal
) -> None:
    assert api.post(URL, SEED_REQUEST)["X-Request-ID"]
    assert anon.post(URL, SEED_REQUEST)["X-Request-ID"]
    assert api.post_raw(URL, "nope")["X-Request-ID"]
    echoed = api.post(URL, SEED_REQUEST, **{"X-Request-ID": "client-abc.123"})
    assert echoed["X-Request-ID"] == "client-abc.123"
    unsafe = api.post(URL, SEED_REQUEST, **{"X-Request-ID": "bad id\twith spaces"})
    assert unsafe["X-Request-ID"] != "bad id\twith spaces"


# --- CRM records ------------------------------------------------------------------------------
def test_the_crm_record_is_created_on_first_sight_and_reused_after(
    api: ApiClient, tenant: Tenant, docs_signal: Signal
) -> None:
    first = Event.objects.get(pk=api.post(URL, event()).json()["data"]["id"])
    second = Event.objects.get(pk=api.post(URL, event(reference="evt-002")).json()["data"]["id"])
    api.post(URL, event(identity={"type": "contact", "id": "001ABC000000123"}))

    assert first.crm_record_id == second.crm_record_id
    record = CrmRecord.objects.get(pk=first.crm_record_id)
    assert (record.organization_id, record.type, record.external_id) == (
        tenant.organization.pk,
        "account",
        "001ABC000000123",
    )
    assert record.first_seen_at == first.received_at
    assert record.last_seen_at == second.received_at
    assert CrmRecord.objects.count() == 2


def test_custom_object_types_are_accepted(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(identity={"type": "workspace_v2", "id": "w-1"}))
    assert response.status_code == 202
    assert CrmRecord.objects.filter(type="workspace_v2", external_id="w-1").exists()


# --- Row 1: the body is not a JSON object -----------------------------------------------------
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "Request body is empty; send a JSON object"),
        (b"   ", "Request body is empty; send a JSON object"),
        (b"{not json", "Request body is not valid JSON"),
        (b"[1, 2]", "Request body must be a JSON object"),
        (b'"a string"', "Request body must be a JSON object"),
        (b"null", "Request body must be a JSON object"),
        (b"\xff\xfe{}", "Request body is not valid UTF-8"),
        (b'{"signal": "a\xed\xa0\x80"}', "Request body is not valid UTF-8"),
        (b'{"signal": NaN}', "Request body is not valid JSON"),
        (b'{"signal": 1e999}', "Request body is not valid JSON"),
        (
            b'{"signal": "a", "signal": "b"}',
            "Request body is not valid JSON: duplicate key 'signal'",
        ),
        (b'{"signal": "a\\u0000"}', "Request body contains a NUL character"),
        (b'{"data": {"k": "\\ud800"}}', "Request body contains an unpaired UTF-16 surrogate"),
        (b'{"data": ' + b"[" * 100 + b"]" * 100 + b"}", "Request body is nested deeper than"),
        (b"[" * 100_000 + b"]" * 100_000, "Request body is nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "Request body is not valid JSON"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_naming_the_problem(
    api: ApiClient, docs_signal: Signal, body: bytes, message: str
) -> None:
    response = api.post_raw(URL, body)
    assert response.status_code == 400
    assert error_of(response).startswith(message)
    assert response.json()["code"] == "invalid_json"
    assert Event.objects.count() == 0


def test_the_content_type_does_not_matter_for_a_json_body(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post_raw(URL, json.dumps(SEED_REQUEST), content_type="text/plain")
    assert response.status_code == 202


# --- Row 2: signal ----------------------------------------------------------------------------
@pytest.mark.parametrize("signal", [None, "", "   "])
def test_a_missing_or_empty_signal_is_refused(api: ApiClient, signal: object) -> None:
    body = event(signal=signal)
    if signal is None:
        del body["signal"]
    response = api.post(URL, body)
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "signal is required",
        "code": "signal_required",
    }


def test_signal_is_checked_before_identity(api: ApiClient) -> None:
    response = api.post(URL, {"data": {}})
    assert error_of(response) == "signal is required"


# --- Row 3: identity --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "identity",
    [
        "missing",
        None,
        {},
        "",
        {"type": "account"},
        {"id": "1"},
        {"type": "", "id": "1"},
        {"type": "account", "id": ""},
        {"type": "account", "id": None},
        {"type": " ", "id": "1"},
    ],
)
def test_missing_or_empty_identity_parts_are_refused(
    api: ApiClient, docs_signal: Signal, identity: object
) -> None:
    body = event(identity=identity)
    if identity == "missing":
        del body["identity"]
    response = api.post(URL, body)
    assert response.status_code == 400
    assert error_of(response) == "identity.type and identity.id are required"


def test_identity_is_checked_before_the_form_of_other_fields(api: ApiClient) -> None:
    response = api.post(URL, {"signal": "x", "version": "bogus", "data": []})
    assert error_of(response) == "identity.type and identity.id are required"


# --- Row 4: wrong type or form ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"signal": 123}, "signal"),
        ({"signal": "s" * 101}, "signal"),
        ({"version": "2"}, "version"),
        ({"version": 0}, "version"),
        ({"version": -1}, "version"),
        ({"version": 1.5}, "version"),
        ({"version": True}, "version"),
        ({"version": [1]}, "version"),
        ({"identity": ["account", "1"]}, "identity"),
        ({"identity": {"type": "Account", "id": "1"}}, "identity.type"),
        ({"identity": {"type": "my-type", "id": "1"}}, "identity.type"),
        ({"identity": {"type": "t" * 65, "id": "1"}}, "identity.type"),
        ({"identity": {"type": 5, "id": "1"}}, "identity.type"),
        ({"identity": {"type": "account", "id": 123}}, "identity.id"),
        ({"identity": {"type": "account", "id": "x" * 256}}, "identity.id"),
        ({"data": [1, 2]}, "data"),
        ({"data": "text"}, "data"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1700000000}, "timestamp"),
        ({"timestamp": "2026-13-01T00:00:00Z"}, "timestamp"),
        ({"reference": 5}, "reference"),
        ({"reference": "r" * 256}, "reference"),
        ({"idempotency_key": 5}, "idempotency_key"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_a_field_of_the_wrong_type_or_form_is_a_400_naming_the_field(
    api: ApiClient, docs_signal: Signal, overrides: dict, field: str
) -> None:
    response = api.post(URL, event(**overrides))
    assert response.status_code == 400
    assert error_of(response).startswith(field + " ")
    assert response.json()["code"] == "invalid_field"
    assert Event.objects.count() == 0


def test_a_timestamp_more_than_a_day_in_the_future_is_refused(
    api: ApiClient, docs_signal: Signal
) -> None:
    soon = (timezone.now() + timedelta(hours=23)).isoformat()
    late = (timezone.now() + timedelta(hours=25)).isoformat()
    assert api.post(URL, event(timestamp=soon)).status_code == 202
    response = api.post(URL, event(timestamp=late))
    assert response.status_code == 400
    assert error_of(response) == "timestamp must not be more than 24 hours in the future"


def test_version_accepts_latest_an_integer_or_nothing(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("page", schema=PAGE_SCHEMA)
    for version in ("latest", 1, 1.0, None):
        body = event(signal="page", version=version)
        assert api.post(URL, body).status_code == 202, version


def test_form_errors_still_carry_rate_limit_headers_when_the_signal_is_known(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, event(data="text"))
    assert response.status_code == 400
    assert response["X-RateLimit-Limit"] == "100"
    unknown = api.post(URL, event(signal="nope", data="text"))
    assert "X-RateLimit-Limit" not in unknown


# --- Row 5: unknown signal --------------------------------------------------------------------
def test_an_unknown_signal_is_a_404_with_the_seed_message(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, event(signal="my-signal-slug"))
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "Signal not found: my-signal-slug",
        "code": "signal_not_found",
    }
    assert "X-RateLimit-Limit" not in response


def test_a_slug_that_cannot_exist_is_not_found_either(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(signal="Not A Slug/../x"))
    assert response.status_code == 404
    assert error_of(response) == "Signal not found: Not A Slug/../x"


def test_an_inactive_signal_is_not_found(
    api: ApiClient, docs_signal: Signal, django_capture_on_commit_callbacks
) -> None:
    assert api.post(URL, event()).status_code == 202
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=docs_signal, active=False)
    response = api.post(URL, event())
    assert response.status_code == 404
    assert error_of(response) == "Signal not found: visited-documentation-page"


# --- Row 6: rate limit ------------------------------------------------------------------------
def test_the_budget_counts_down_and_then_answers_429(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("limited", rate_limit_per_minute=3)
    remaining = []
    for i in range(3):
        response = api.post(URL, event(signal="limited", reference=f"r{i}"))
        assert response.status_code == 202
        assert response["X-RateLimit-Limit"] == "3"
        remaining.append(response["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]

    refused = api.post(URL, event(signal="limited"))
    assert refused.status_code == 429
    assert refused["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(refused["Retry-After"]) <= 60
    reset = datetime.strptime(refused["X-RateLimit-Reset"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    assert timezone.now() - timedelta(seconds=1) <= reset <= timezone.now() + timedelta(seconds=61)
    # The contract's message, and details that agree with the headers.
    assert refused.json() == {
        "success": False,
        "error": "Rate limit exceeded",
        "code": "rate_limited",
        "details": [
            {
                "signal": "limited",
                "limit": 3,
                "window_seconds": 60,
                "reset_at": refused["X-RateLimit-Reset"],
                "retry_after": int(refused["Retry-After"]),
            }
        ],
    }
    assert Event.objects.count() == 3


def test_default_budgets_follow_the_signal_type(api: ApiClient, tenant: Tenant) -> None:
    for slug, type_, limit in (
        ("e", "event", "100"),
        ("m", "metric", "1000"),
        ("s", "state", "30"),
    ):
        tenant.signal(slug, type=type_)
        data = {"value": 1} if type_ == "metric" else {}
        response = api.post(URL, event(signal=slug, data=data))
        assert response.status_code == 202
        assert response["X-RateLimit-Limit"] == limit


def test_budgets_are_per_signal_and_per_organization(
    make_tenant, tenant: Tenant, api: ApiClient
) -> None:
    other = make_tenant("globex")
    other_api = ApiClient(other.raw_key)
    tenant.signal("limited", rate_limit_per_minute=1)
    tenant.signal("free", rate_limit_per_minute=1)
    other.signal("limited", rate_limit_per_minute=1)

    assert api.post(URL, event(signal="limited")).status_code == 202
    assert api.post(URL, event(signal="limited")).status_code == 429
    assert api.post(URL, event(signal="free")).status_code == 202
    assert other_api.post(URL, event(signal="limited")).status_code == 202


def test_the_rate_limit_comes_before_schema_checks(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("limited", rate_limit_per_minute=1, schema=PAGE_SCHEMA)
    assert api.post(URL, event(signal="limited")).status_code == 202
    assert api.post(URL, event(signal="limited", version=9)).status_code == 429
    assert api.post(URL, event(signal="limited", data={})).status_code == 429


def test_an_unreachable_rate_limit_store_accepts_the_event(
    api: ApiClient, docs_signal: Signal, settings, caplog
) -> None:
    # A cache file that cannot be opened: every cache call fails, lookups fall back to the DB.
    settings.CACHES = {
        "default": {
            "BACKEND": "bigmind.cache.SQLiteCache",
            "LOCATION": "/proc/no/such/dir/c.sqlite3",
        }
    }
    response = api.post(URL, event())
    assert response.status_code == 202
    assert response["X-RateLimit-Limit"] == "100"
    assert "rate-limit store unreachable" in caplog.text


# --- Row 7: unknown schema version ------------------------------------------------------------
def test_a_requested_version_that_does_not_exist_is_a_404_naming_it(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("page", schema=PAGE_SCHEMA)
    response = api.post(URL, event(signal="page", version=2))
    assert response.status_code == 404
    assert error_of(response) == "Schema version 2 not found for signal page"
    assert response["X-RateLimit-Limit"] == "100"


def test_an_explicit_version_of_a_signal_without_schemas_is_a_404(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, event(version=1))
    assert response.status_code == 404
    assert error_of(response) == "Schema version 1 not found for signal visited-documentation-page"


# --- Row 8: schema validation -----------------------------------------------------------------
def test_data_is_validated_against_the_latest_version(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("page", schema=PAGE_SCHEMA)
    response = api.post(URL, event(signal="page"))
    assert response.status_code == 202
    assert response.json()["data"]["schema_version"] == 1


def test_each_violation_is_listed_with_its_json_path(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("page", schema=PAGE_SCHEMA)
    response = api.post(URL, event(signal="page", data={"duration_seconds": -5, "referrer": 7}))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "data does not match schema version 1 of signal page"
    assert body["code"] == "schema_validation_failed"
    paths = sorted((d["path"], d["keyword"]) for d in body["details"])
    assert paths == [("$", "required"), ("$.duration_seconds", "minimum"), ("$.referrer", "type")]
    assert all(d["message"] for d in body["details"])
    assert Event.objects.count() == 0


def test_an_older_version_can_be_chosen_explicitly(api: ApiClient, tenant: Tenant) -> None:
    from signals_app.services import schema_version_create

    signal = tenant.signal("page", schema=PAGE_SCHEMA)
    schema_version_create(signal=signal, schema={**PAGE_SCHEMA, "required": ["page", "plan"]})
    assert api.post(URL, event(signal="page")).status_code == 400
    response = api.post(URL, event(signal="page", version=1))
    assert response.status_code == 202
    assert response.json()["data"]["schema_version"] == 1


def test_formats_are_asserted(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal(
        "dated",
        schema={"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}},
    )
    response = api.post(URL, event(signal="dated", data={"at": "not a date"}))
    assert response.status_code == 400
    assert response.json()["details"][0]["path"] == "$.at"


# --- Row 9: idempotency -----------------------------------------------------------------------
def test_a_replay_with_the_same_key_answers_200_with_the_original_event(
    api: ApiClient, docs_signal: Signal
) -> None:
    first = api.post(URL, event(), **{"Idempotency-Key": "k-1"})
    again = api.post(URL, event(), **{"Idempotency-Key": "k-1"})

    assert first.status_code == 202
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert Event.objects.count() == 1


def test_the_key_may_come_in_the_body(api: ApiClient, docs_signal: Signal) -> None:
    first = api.post(URL, event(idempotency_key="k-2"))
    again = api.post(URL, event(), **{"Idempotency-Key": "k-2"})
    assert first.status_code == 202
    assert again.status_code == 200
    assert Event.objects.get().idempotency_key == "k-2"


def test_the_same_key_with_a_different_request_is_a_409(
    api: ApiClient, docs_signal: Signal
) -> None:
    assert api.post(URL, event(), **{"Idempotency-Key": "k-3"}).status_code == 202
    response = api.post(URL, event(data={"page": "/other"}), **{"Idempotency-Key": "k-3"})
    assert response.status_code == 409
    assert error_of(response) == "Idempotency key was already used for a different request"
    assert response.json()["code"] == "idempotency_conflict"
    assert Event.objects.count() == 1


def test_schema_errors_come_before_idempotency_conflicts(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("page", schema=PAGE_SCHEMA)
    assert api.post(URL, event(signal="page"), **{"Idempotency-Key": "k-4"}).status_code == 202
    response = api.post(URL, event(signal="page", data={}), **{"Idempotency-Key": "k-4"})
    assert response.status_code == 400


def test_header_and_body_keys_must_agree(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(idempotency_key="a"), **{"Idempotency-Key": "b"})
    assert response.status_code == 400
    assert error_of(response) == "Idempotency-Key header and idempotency_key field differ"


def test_idempotency_keys_are_scoped_to_the_organization(
    make_tenant, tenant: Tenant, api: ApiClient
) -> None:
    other = make_tenant("globex")
    tenant.signal("visited-documentation-page")
    other.signal("visited-documentation-page")
    assert api.post(URL, event(), **{"Idempotency-Key": "shared"}).status_code == 202
    assert (
        ApiClient(other.raw_key).post(URL, event(), **{"Idempotency-Key": "shared"}).status_code
        == 202
    )
    assert Event.objects.count() == 2


# --- Row 10: body size ------------------------------------------------------------------------
def test_a_body_over_the_limit_is_a_413_stating_the_limit(
    api: ApiClient, docs_signal: Signal, settings
) -> None:
    settings.BIGMIND_EVENT_MAX_BODY_BYTES = 1000
    ok = event(data={"pad": "x" * 500})
    assert api.post(URL, ok).status_code == 202
    response = api.post(URL, event(data={"pad": "x" * 1000}))
    assert response.status_code == 413
    assert error_of(response) == "Request body is too large: the limit is 1000 bytes"
    assert response.json()["code"] == "body_too_large"


def test_the_default_limit_is_one_mebibyte(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(URL, event(data={"pad": "x" * (1024 * 1024)}))
    assert response.status_code == 413
    assert error_of(response) == "Request body is too large: the limit is 1048576 bytes"


# --- Methods and paths --------------------------------------------------------------------------
def test_other_methods_answer_405_in_the_envelope(api: ApiClient) -> None:
    # GET lists the events (tests/events_app/test_read_api.py); PUT and DELETE mean nothing here.
    for method in (api.client.put, api.client.delete):
        response = method(URL, headers={"Authorization": f"Bearer {api.raw_key}"})
        assert response.status_code == 405
        assert response.json()["success"] is False


def test_unknown_api_paths_answer_404_in_the_envelope(api: ApiClient) -> None:
    response = api.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": "Not found: /v1/nothing-here",
        "code": "not_found",
    }


# --- Authentication and tenancy ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "Missing API key: send the header 'Authorization: Bearer sk_...'"),
        ("", "Missing API key: send the header 'Authorization: Bearer sk_...'"),
        ("Basic dXNlcjpwYXNz", "The Authorization header must be 'Bearer <API key>'"),
        ("Bearer", "The Authorization header must be 'Bearer <API key>'"),
        ("Bearer sk_unknown_key_000000000000000000000", "Invalid API key"),
        ("Bearer not-even-sk", "Invalid API key"),
        ("Bearer " + "sk_" + "x" * 500, "Invalid API key"),
    ],
)
def test_requests_without_a_valid_key_get_401_with_www_authenticate(
    docs_signal: Signal, header: str | None, message: str
) -> None:
    client = ApiClient(None)
    headers = {} if header is None else {"Authorization": header}
    response = client.post(URL, SEED_REQUEST, **headers)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert error_of(response) == message
    assert Event.objects.count() == 0


def test_a_revoked_key_is_refused(
    api: ApiClient, tenant: Tenant, docs_signal: Signal, django_capture_on_commit_callbacks
) -> None:
    assert api.post(URL, SEED_REQUEST).status_code == 202  # cached as valid now
    with django_capture_on_commit_callbacks(execute=True):
        api_key_revoke(api_key=tenant.api_key)
    response = api.post(URL, SEED_REQUEST)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"
    assert error_of(response) == "API key has been revoked"


def test_the_scheme_is_case_insensitive(tenant: Tenant, docs_signal: Signal) -> None:
    response = ApiClient(None).post(URL, SEED_REQUEST, Authorization=f"bearer {tenant.raw_key}")
    assert response.status_code == 202


def test_auth_comes_before_anything_about_the_body(anon: ApiClient) -> None:
    assert anon.post_raw(URL, b"{bad").status_code == 401


def test_a_key_only_reaches_its_own_organizations_signals(
    make_tenant, tenant: Tenant, api: ApiClient
) -> None:
    other = make_tenant("globex")
    other.signal("secret-signal")
    response = api.post(URL, event(signal="secret-signal"))
    assert response.status_code == 404
    assert error_of(response) == "Signal not found: secret-signal"
    assert "X-RateLimit-Limit" not in response
    assert Event.objects.count() == 0


def test_events_and_records_belong_to_the_keys_organization(
    make_tenant, tenant: Tenant, api: ApiClient
) -> None:
    other = make_tenant("globex")
    tenant.signal("visited-documentation-page")
    other.signal("visited-documentation-page")
    mine = api.post(URL, event()).json()["data"]
    theirs = ApiClient(other.raw_key).post(URL, event()).json()["data"]
    assert mine["signal_id"] != theirs["signal_id"]
    assert Event.objects.get(pk=mine["id"]).organization_id == tenant.organization.pk
    assert Event.objects.get(pk=theirs["id"]).crm_record.organization_id == other.organization.pk
    assert CrmRecord.objects.count() == 2


def test_last_used_is_recorded(api: ApiClient, tenant: Tenant, docs_signal: Signal) -> None:
    assert tenant.api_key.last_used_at is None
    api.post(URL, SEED_REQUEST)
    tenant.api_key.refresh_from_db()
    assert tenant.api_key.last_used_at is not None


def test_the_answer_is_json_whatever_the_accept_header_asks(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, SEED_REQUEST, Accept="text/html")
    assert response.status_code == 202
    assert response["Content-Type"] == "application/json"


# --- Schemas that data can drive into a corner ----------------------------------------------
def test_a_huge_integer_against_multiple_of_is_a_400_not_a_crash(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal(
        "money", schema={"properties": {"amount": {"type": "number", "multipleOf": 0.01}}}
    )
    body = (
        '{"signal": "money", "identity": {"type": "account", "id": "1"}, "data": {"amount": 1'
        + "0" * 400
        + "}}"
    )
    response = api.post_raw(URL, body)
    assert response.status_code == 400
    assert response.json()["code"] == "schema_validation_failed"
    assert response.json()["error"] == "data could not be checked against the schema"


def test_a_pathological_regex_value_is_a_400_not_a_crash(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("rx", schema={"properties": {"pattern": {"type": "string", "format": "regex"}}})
    for value in ("a{99999999999}", "(" * 3000):
        response = api.post(URL, event(signal="rx", data={"pattern": value}))
        assert response.status_code == 400, value


def test_a_conflicting_or_replayed_key_touches_no_crm_record(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page")
    a = event(identity={"type": "account", "id": "A"})
    assert api.post(URL, a, **{"Idempotency-Key": "k1"}).status_code == 202
    seen = CrmRecord.objects.get(external_id="A").last_seen_at
    b = event(identity={"type": "account", "id": "B"})
    assert api.post(URL, b, **{"Idempotency-Key": "k1"}).status_code == 409
    assert api.post(URL, a, **{"Idempotency-Key": "k1"}).status_code == 200
    assert list(CrmRecord.objects.values_list("external_id", flat=True)) == ["A"]
    assert CrmRecord.objects.get(external_id="A").last_seen_at == seen
    assert Event.objects.count() == 1


def test_retry_after_points_at_the_first_second_of_the_next_window(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("one-a-minute", rate_limit_per_minute=1)
    assert api.post(URL, event(signal="one-a-minute")).status_code == 202
    refused = api.post(URL, event(signal="one-a-minute"))
    assert refused.status_code == 429
    reset = datetime.strptime(refused["X-RateLimit-Reset"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=UTC
    )
    # The counter's window includes its last second; Reset names the second after it.
    window_end = int(time.time()) + int(refused["Retry-After"]) - 1
    assert abs(reset.timestamp() - (window_end + 1)) <= 1


def test_only_a_429_carries_retry_after(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("one-a-minute", rate_limit_per_minute=1)
    assert api.post(URL, event(signal="one-a-minute")).status_code == 202
    assert "Retry-After" in api.post(URL, event(signal="one-a-minute"))
    bad = api.post(URL, event(signal="one-a-minute", data=[]))
    assert bad.status_code == 400
    assert "Retry-After" not in bad
    assert bad["X-RateLimit-Remaining"] == "0"


def test_a_trailing_newline_in_identity_type_is_refused(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visited-documentation-page")
    response = api.post(URL, event(identity={"type": "account\n", "id": "1"}))
    assert response.status_code == 400
    assert response.json()["error"].startswith("identity.type ")


@pytest.mark.parametrize("key", ["", "   ", "a\x01b", "k" * 256])
def test_a_malformed_idempotency_key_header_is_refused(
    api: ApiClient, tenant: Tenant, key: str
) -> None:
    tenant.signal("visited-documentation-page")
    response = api.post(URL, SEED_REQUEST, **{"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"].startswith("Idempotency-Key header must be")
    assert Event.objects.count() == 0

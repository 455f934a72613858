"""Redaction (events_app/ingest/redaction.py): the rules applied to `data`, the organization key,
violation details made safe; then through the API: single and batch ingest, idempotency,
validate, rejections (with an inactive signal's rules), replay, and rule changes."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
from django.test import override_settings

from events_app.ingest.redaction import (
    data_redact,
    redaction_key,
    value_canonical_bytes,
    value_hash,
    violations_redact,
)
from events_app.ingest.replay import rejection_replay
from events_app.ingest.validation import event_request_parse
from events_app.models import Event, RejectedEvent
from signals_app.models import Signal
from signals_app.schemas import schema_compile, schema_violations
from signals_app.services import schema_version_create, signal_update
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

HEX64 = r"hmac:[0-9a-f]{64}"


def hashed(value: Any, organization_id: int) -> str:
    """The documented computation, done by hand: HMAC-SHA256 of the canonical JSON."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    mac = hmac.new(redaction_key(organization_id), canonical.encode(), hashlib.sha256)
    return "hmac:" + mac.hexdigest()


# --- Applying rules -------------------------------------------------------------------------------
def test_drop_removes_members_and_array_items_named_against_the_data_as_received() -> None:
    data = {"card": {"number": "4111", "exp": "12/30"}, "items": ["a", "b", "c"], "keep": 1}
    rules = (("/card/number", "drop"), ("/items/0", "drop"), ("/items/1", "drop"))

    assert data_redact(data, rules=rules, organization_id=1) == {
        "card": {"exp": "12/30"},
        "items": ["c"],  # the first two as sent, not the first and then the third
        "keep": 1,
    }


def test_hash_replaces_a_value_by_the_documented_hmac_and_equal_values_still_match() -> None:
    rules = (("/email", "hash"), ("/address", "hash"))
    one = data_redact(
        {"email": "bob@example.com", "address": {"city": "Oslo", "zip": "0150"}},
        rules=rules,
        organization_id=7,
    )
    other = data_redact(
        {"email": "bob@example.com", "address": {"zip": "0150", "city": "Oslo"}},
        rules=rules,
        organization_id=7,
    )

    assert one == other  # key order is not part of the canonical bytes
    assert one["email"] == hashed("bob@example.com", 7)
    assert one["address"] == hashed({"city": "Oslo", "zip": "0150"}, 7)
    assert value_canonical_bytes({"b": "é", "a": [1, 2.5]}) == '{"a":[1,2.5],"b":"é"}'.encode()
    # Another organization, another key: its hashes cannot be matched with these.
    assert value_hash("bob@example.com", organization_id=8) != one["email"]


def test_a_pointer_that_names_nothing_changes_nothing_and_the_input_is_never_changed() -> None:
    data = {"a": {"b": [1, {"c": "x"}]}, "s": "text", "list": [1]}
    before = copy.deepcopy(data)
    rules = (
        ("/missing", "drop"),
        ("/s/0", "drop"),  # into a string
        ("/list/1", "hash"),  # past the end
        ("/list/-", "drop"),  # "-" names no item
        ("/list/01", "drop"),  # not an array index
        ("/a/b/1/c", "hash"),
    )

    result = data_redact(data, rules=rules, organization_id=1)

    assert data == before
    assert result == {"a": {"b": [1, {"c": hashed("x", 1)}]}, "s": "text", "list": [1]}
    assert data_redact(data, rules=(("/missing", "drop"),), organization_id=1) is data
    assert data_redact(data, rules=(), organization_id=1) is data


def test_pointer_escapes_and_an_empty_member_name_are_understood() -> None:
    data = {"a/b": 1, "m~n": 2, "": 3, "k": 4}
    rules = (("/a~1b", "drop"), ("/m~0n", "drop"), ("/", "drop"))

    assert data_redact(data, rules=rules, organization_id=1) == {"k": 4}


def test_redacting_twice_is_redacting_once() -> None:
    rules = (("/email", "hash"), ("/secret", "drop"))
    once = data_redact({"email": "a@b.c", "secret": 1}, rules=rules, organization_id=3)

    assert data_redact(once, rules=rules, organization_id=3) == once


def test_the_key_derives_from_the_redaction_secret_and_falls_back_to_the_secret_key() -> None:
    with override_settings(BIGMIND_REDACTION_KEY="r" * 60, SECRET_KEY="s" * 60):
        own = redaction_key(1)
        assert redaction_key(2) != own
    with override_settings(BIGMIND_REDACTION_KEY="q" * 60, SECRET_KEY="s" * 60):
        assert redaction_key(1) != own
    with override_settings(BIGMIND_REDACTION_KEY="", SECRET_KEY="s" * 60):
        fallback = redaction_key(1)
    with override_settings(BIGMIND_REDACTION_KEY="s" * 60, SECRET_KEY="t" * 60):
        assert redaction_key(1) == fallback


# --- Violation details ----------------------------------------------------------------------------
SCHEMA = {
    "type": "object",
    "minProperties": 9,
    "properties": {
        "email": {"type": "string", "format": "email"},
        "card": {"type": "object", "properties": {"number": {"type": "integer"}}},
        "by_address": {"type": "object", "additionalProperties": {"type": "integer"}},
        "plan": {"enum": ["free", "pro"]},
    },
}


def test_violation_details_never_show_a_redacted_value_and_keep_what_is_safe() -> None:
    data = {
        "email": "marker-77-at-example",
        "card": {"number": "4111-1111"},
        "by_address": {"hidden-key@example.com": "x"},
        "plan": "gold",
    }
    rules = (("/email", "hash"), ("/card/number", "drop"), ("/by_address", "hash"))
    details = schema_violations(schema_compile(SCHEMA), data)
    assert "marker-77-at-example" in json.dumps(details)  # jsonschema quotes it: the point

    safe = violations_redact(details, data=data, rules=rules)

    text = json.dumps(safe)
    for secret in ("marker-77-at-example", "4111-1111", "hidden-key@example.com"):
        assert secret not in text
    by_path = {(d["path"], d["keyword"]): d["message"] for d in safe}
    assert by_path[("$.email", "format")] == "<redacted> is not a 'email'"
    assert by_path[("$.card.number", "type")] == "<redacted> is not of type 'integer'"
    # Inside a hashed object: moved to the object, since member names may be data too.
    assert ("$.by_address", "type") in by_path
    assert "<redacted>" in by_path[("$", "minProperties")]
    # A violation of a value that is not redacted is untouched.
    assert by_path[("$.plan", "enum")] == "'gold' is not one of ['free', 'pro']"
    assert len(safe) == len(details)


def test_a_violation_after_an_item_dropped_from_its_array_is_put_on_the_array() -> None:
    # Stored, `data.l` is [5]: "$.l[1]" would name nothing, "$.l[0]" the wrong item.
    data = {"l": ["x-secret", 5], "n": "not a number"}
    schema = {
        "type": "object",
        "properties": {"l": {"items": {"type": "string"}}, "n": {"type": "number"}},
    }
    details = schema_violations(schema_compile(schema), data)

    safe = violations_redact(details, data=data, rules=(("/l/0", "drop"),))

    by_keyword_path = {(d["path"], d["keyword"]): d["message"] for d in safe}
    assert by_keyword_path == {
        ("$.l", "type"): "5 is not of type 'string'",
        ("$.n", "type"): "'not a number' is not of type 'number'",
    }


def test_a_message_that_would_still_show_a_redacted_value_is_withheld() -> None:
    data = {"email": "bob@x.io"}
    details = [{"path": "$", "message": "ValueError: bad bob@x.io here", "keyword": ""}]

    safe = violations_redact(details, data=data, rules=(("/email", "drop"),))

    assert "bob@x.io" not in json.dumps(safe)
    assert safe[0]["message"].startswith("message withheld")
    assert violations_redact(details, data=data, rules=()) == details
    assert violations_redact(details, data={}, rules=(("/email", "drop"),)) == details


def test_a_redacted_number_is_found_as_a_number_not_as_a_digit_of_another() -> None:
    data = {"pin": 4321, "count": 7}
    details = [
        {"path": "$.count", "message": "7 is greater than the maximum of 5", "keyword": "maximum"},
        {"path": "$", "message": "{'pin': 4321, 'count': 7} is bad", "keyword": "not"},
    ]

    safe = violations_redact(details, data=data, rules=(("/pin", "hash"),))

    assert safe[0] == details[0]
    assert safe[1]["message"] == "{'pin': <redacted>, 'count': 7} is bad"


# --- Through the API ------------------------------------------------------------------------------
EMAIL = "redact-me-1@example.com"
SIGNUP_SCHEMA = {
    "type": "object",
    "required": ["email", "card"],
    "properties": {
        "email": {"type": "string", "format": "email"},
        "card": {"type": "object", "required": ["number"]},
        "plan": {"type": "string"},
    },
}
RULES = [{"path": "/email", "mode": "hash"}, {"path": "/card/number", "mode": "drop"}]


@pytest.fixture
def signup(tenant: Tenant) -> Signal:
    return tenant.signal("signup", schema=SIGNUP_SCHEMA, redact=RULES)


@pytest.fixture
def update(django_capture_on_commit_callbacks: Any) -> Any:
    """signal_update, with its after-commit cache invalidation run (as a commit would)."""

    def change(signal: Signal, **changes: Any) -> None:
        with django_capture_on_commit_callbacks(execute=True):
            signal_update(signal=signal, **changes)

    return change


def body(**data: Any) -> dict[str, Any]:
    payload = json.loads(json.dumps(SEED_REQUEST)) | {"signal": "signup"}
    payload["data"] = {"email": EMAIL, "card": {"number": "4111", "exp": "12/30"}} | data
    return payload


def redacted_data(tenant: Tenant, **data: Any) -> dict[str, Any]:
    return {
        "email": hashed(EMAIL, tenant.organization.pk),
        "card": {"exp": "12/30"},
        **data,
    }


def test_an_event_is_validated_as_sent_and_stored_redacted(
    api: ApiClient, tenant: Tenant, signup: Signal
) -> None:
    # The schema requires the dropped number and an e-mail format the hash does not have.
    response = api.post("/v1/events", body(plan="pro"))

    assert response.status_code == 202, response.content
    event = Event.objects.get(pk=response.json()["data"]["id"])
    assert event.data == redacted_data(tenant, plan="pro")
    shown = api.client.get(
        f"/v1/events/{event.pk}", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert shown.json()["data"]["data"] == redacted_data(tenant, plan="pro")


def test_the_idempotency_fingerprint_is_taken_over_the_redacted_request(
    api: ApiClient, tenant: Tenant, signup: Signal
) -> None:
    first = api.post("/v1/events", body(), **{"Idempotency-Key": "k-1"})
    assert first.status_code == 202
    stored = Event.objects.get(pk=first.json()["data"]["id"])
    sent = event_request_parse(body(), idempotency_header="k-1")
    assert stored.request_hash != sent.fingerprint()  # a plain hash over the e-mail: never
    expected = event_request_parse({**body(), "data": redacted_data(tenant)})
    assert stored.request_hash == expected.fingerprint()

    again = api.post("/v1/events", body(), **{"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    # A hashed value that differs is a different request.
    other = api.post("/v1/events", body(email="other@example.com"), **{"Idempotency-Key": "k-1"})
    assert other.status_code == 409
    # Validate answers what ingest would: the same request is no conflict.
    valid = api.post("/v1/events/validate", body(), **{"Idempotency-Key": "k-1"})
    assert valid.status_code == 200, valid.content


def test_a_batch_stores_its_items_redacted_and_its_refused_item_redacted(
    api: ApiClient, tenant: Tenant, signup: Signal
) -> None:
    bad = body(email="not-an-email-marker-2")
    response = api.post("/v1/events/batch", {"events": [body(), bad, body(plan="x")]})

    assert response.status_code == 207, response.content
    items = response.json()["data"]
    assert [item.get("status") for item in items] == ["pending", "rejected", "pending"]
    stored = Event.objects.filter(organization=tenant.organization).order_by("id")
    assert [e.data for e in stored] == [redacted_data(tenant), redacted_data(tenant, plan="x")]
    rejection = RejectedEvent.objects.get()
    kept = json.dumps([rejection.body, rejection.violations, rejection.message])
    assert "not-an-email-marker-2" not in kept and "4111" not in kept
    assert json.loads(rejection.body)["data"]["email"] == hashed(
        "not-an-email-marker-2", tenant.organization.pk
    )
    assert rejection.violations == [
        {"path": "$.email", "message": "<redacted> is not a 'email'", "keyword": "format"}
    ]


def test_a_refused_event_is_kept_redacted_and_so_is_one_sent_to_an_inactive_signal(
    api: ApiClient, tenant: Tenant, signup: Signal, update: Any
) -> None:
    refused = api.post("/v1/events", body(email="bad-marker-3"))
    assert refused.status_code == 400
    # The client's own answer names its own value; what is kept does not.
    assert "bad-marker-3" in refused.content.decode()
    update(signup, active=False)
    gone = api.post("/v1/events", body(email="inactive-marker-4@example.com"))
    assert gone.status_code == 404

    rows = RejectedEvent.objects.order_by("received_at", "id")
    assert [r.reason for r in rows] == ["schema_validation_failed", "signal_not_found"]
    kept = json.dumps([[r.body, r.violations, r.message] for r in rows])
    for secret in ("bad-marker-3", "inactive-marker-4@example.com", "4111"):
        assert secret not in kept
    assert rows[1].body_bytes == len(json.dumps(body(email="inactive-marker-4@example.com")))


def test_a_replayed_rejection_runs_on_the_redacted_body(
    api: ApiClient, tenant: Tenant, signup: Signal, update: Any
) -> None:
    # Refused for `plan`; the e-mail and the card are fine but kept redacted.
    assert api.post("/v1/events", body(plan=5)).status_code == 400
    rejection = RejectedEvent.objects.get()
    # A fix that still requires the dropped card number: the redacted body cannot pass it.
    schema_version_create(signal=signup, schema={**SIGNUP_SCHEMA, "properties": {}})
    again = rejection_replay(rejection=rejection)
    assert again.error is not None and again.error.code == "schema_validation_failed"
    assert {
        "path": "$.card",
        "message": "'number' is a required property",
        "keyword": "required",
    } in (again.error.details or [])
    # A fix that asks for nothing the redaction took: accepted, with the same hash as at ingest.
    loose = {"type": "object", "properties": {"plan": {"type": "integer"}}}
    update(signup, compatibility="none")
    schema_version_create(signal=signup, schema=loose)
    replayed = rejection_replay(rejection=rejection)
    assert replayed.accepted, replayed.error
    assert Event.objects.get(pk=replayed.event_id).data == redacted_data(tenant, plan=5)


def test_changing_the_rules_affects_only_new_events(
    api: ApiClient, tenant: Tenant, signup: Signal, update: Any
) -> None:
    update(signup, redact=[])
    before = api.post("/v1/events", body()).json()["data"]["id"]
    update(signup, redact=RULES)
    after = api.post("/v1/events", body()).json()["data"]["id"]

    assert Event.objects.get(pk=before).data["email"] == EMAIL  # not rewritten
    assert Event.objects.get(pk=after).data == redacted_data(tenant)


@pytest.mark.usefixtures("pipeline_in_process")
def test_processing_sees_only_the_redacted_data(api: ApiClient, tenant: Tenant) -> None:
    from events_app.pipeline.processing import events_process

    tenant.signal("spend", type="metric", redact=[{"path": "/value", "mode": "hash"}])
    tenant.signal("visit", redact=[{"path": "/email", "mode": "hash"}])
    spend = api.post("/v1/events", {**SEED_REQUEST, "signal": "spend", "data": {"value": 5}})
    visit = api.post("/v1/events", {**SEED_REQUEST, "signal": "visit", "data": {"email": EMAIL}})
    ids = [spend.json()["data"]["id"], visit.json()["data"]["id"]]

    events_process(event_ids=ids)

    failed, completed = (Event.objects.get(pk=pk) for pk in ids)
    # The documented consequence of hashing a metric's value field: nothing to aggregate.
    assert failed.status == "failed"
    assert failed.last_error == "Metric value field 'value' must be a number, got str"
    assert completed.status == "completed"
    assert EMAIL not in json.dumps(completed.result)

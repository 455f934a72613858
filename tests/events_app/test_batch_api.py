"""POST /v1/events/batch: per-item outcomes, all-or-nothing storage, one message per batch."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from events_app.models import CrmRecord, Event
from signals_app.models import Signal
from tests.conftest import SEED_REQUEST, ApiClient, Tenant
from tests.events_app.test_ingest_queue import broker_drain, broker_purge

URL = "/v1/events/batch"
PAGE_SCHEMA = {"type": "object", "required": ["page"], "properties": {"page": {"type": "string"}}}


def item(**overrides: object) -> dict:
    body = json.loads(json.dumps(SEED_REQUEST))
    body.update(overrides)
    return body


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA)


def test_a_batch_of_good_events_is_accepted_in_order(api: ApiClient, docs_signal: Signal) -> None:
    events = [
        item(reference=f"r{i}", identity={"type": "account", "id": f"a{i % 3}"}) for i in range(10)
    ]
    response = api.post(URL, {"events": events})

    assert response.status_code == 202
    body = response.json()
    assert body["success"] is True
    assert [slot["reference"] for slot in body["data"]] == [f"r{i}" for i in range(10)]
    assert [slot["index"] for slot in body["data"]] == list(range(10))
    for slot in body["data"]:
        assert {"id", "signal_id", "schema_version", "status", "reference"} <= set(slot)
        assert slot["status"] == "pending" and slot["schema_version"] == 1
        assert slot["signal_id"] == docs_signal.public_id
    assert Event.objects.count() == 10
    assert CrmRecord.objects.count() == 3
    assert response["X-RateLimit-Remaining"] == "90"


def test_one_bad_item_does_not_sink_the_others_and_answers_207(
    api: ApiClient, docs_signal: Signal
) -> None:
    events = [
        item(reference="ok-1"),
        item(reference="no-signal", signal=""),
        item(reference="unknown", signal="nope"),
        item(reference="schema", data={"page": 5}),
        "not an object",
        item(reference="bad-version", version=7),
        item(reference="ok-2"),
    ]
    response = api.post(URL, {"events": events})

    assert response.status_code == 207
    body = response.json()
    assert body["success"] is False
    slots = body["data"]
    assert slots[0]["status"] == "pending" and slots[6]["status"] == "pending"
    rejected = {slot["index"]: slot for slot in slots if slot["status"] == "rejected"}
    assert {i: (s["status_code"], s["code"], s["error"]) for i, s in rejected.items()} == {
        1: (400, "signal_required", "signal is required"),
        2: (404, "signal_not_found", "Signal not found: nope"),
        3: (
            400,
            "schema_validation_failed",
            "data does not match schema version 1 of signal visited-documentation-page",
        ),
        4: (400, "invalid_json", "Request body must be a JSON object"),
        5: (
            404,
            "schema_version_not_found",
            "Schema version 7 not found for signal visited-documentation-page",
        ),
    }
    assert rejected[3]["details"][0]["path"] == "$.page"
    assert rejected[2]["reference"] == "unknown" and rejected[4]["reference"] is None
    assert Event.objects.count() == 2


def test_an_item_rejected_alone_gives_the_same_answer_as_a_single_request(
    api: ApiClient, docs_signal: Signal
) -> None:
    bad = item(data={"page": 5})
    single = api.post("/v1/events", bad)
    slot = api.post(URL, {"events": [bad]}).json()["data"][0]
    assert (slot["status_code"], slot["error"], slot["code"], slot["details"]) == (
        single.status_code,
        single.json()["error"],
        single.json()["code"],
        single.json()["details"],
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], 'Request body must be a JSON object {"events": [...]}'),
        ({}, 'Request body must be a JSON object {"events": [...]}'),
        ({"events": {}}, "events must be a list of event objects"),
        ({"events": "x"}, "events must be a list of event objects"),
        ({"events": []}, "events must not be empty"),
        ({"events": [{}] * 101}, "events may hold at most 100 items; got 101"),
    ],
)
def test_a_body_that_is_not_a_batch_is_a_400_for_the_whole_request(
    api: ApiClient, docs_signal: Signal, body: object, message: str
) -> None:
    response = api.post(URL, body)
    assert response.status_code == 400
    assert response.json() == {"success": False, "error": message, "code": "invalid_batch"}
    assert Event.objects.count() == 0


def test_invalid_json_is_a_400_for_the_whole_request(api: ApiClient) -> None:
    response = api.post_raw(URL, b"{nope")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_json"


def test_a_body_over_the_batch_limit_is_a_413(
    api: ApiClient, docs_signal: Signal, settings
) -> None:
    settings.BIGMIND_BATCH_MAX_BODY_BYTES = 2000
    response = api.post(URL, {"events": [item(data={"page": "x" * 2000})]})
    assert response.status_code == 413
    assert response.json()["error"] == "Request body is too large: the limit is 2000 bytes"


def test_an_item_over_the_event_limit_is_rejected_in_its_slot(
    api: ApiClient, docs_signal: Signal, settings
) -> None:
    settings.BIGMIND_EVENT_MAX_BODY_BYTES = 1000
    response = api.post(URL, {"events": [item(data={"page": "x" * 1200}), item()]})
    assert response.status_code == 207
    slot = response.json()["data"][0]
    assert (slot["status_code"], slot["code"]) == (413, "body_too_large")
    assert slot["error"] == "Event is too large: the limit is 1000 bytes"
    assert Event.objects.count() == 1


def test_each_item_spends_one_unit_of_its_own_signal(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("small", rate_limit_per_minute=3)
    tenant.signal("big", rate_limit_per_minute=50)
    events = [item(signal="small", reference=f"s{i}") for i in range(5)] + [item(signal="big")]
    response = api.post(URL, {"events": events})

    assert response.status_code == 207
    statuses = [slot.get("status_code", 202) for slot in response.json()["data"]]
    assert statuses == [202, 202, 202, 429, 429, 202]
    refused = response.json()["data"][3]
    assert (refused["error"], refused["code"]) == ("Rate limit exceeded", "rate_limited")
    # The slot says which budget refused it and when it refills, as a single 429 does.
    (details,) = refused["details"]
    # Another unit's status than the headers' (the last of the signal): a second may tick.
    reset_at, header = (
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
        for text in (details["reset_at"], response["X-RateLimit-Reset"])
    )
    assert abs((reset_at - header).total_seconds()) <= 1
    assert {key: details[key] for key in ("signal", "limit", "window_seconds")} == {
        "signal": "small",
        "limit": 3,
        "window_seconds": 60,
    }
    assert 1 <= details["retry_after"] <= 60
    # The headers describe the most constrained signal of the batch.
    assert response["X-RateLimit-Limit"] == "3"
    assert response["X-RateLimit-Remaining"] == "0"
    # The budget is shared with single requests.
    assert api.post("/v1/events", item(signal="small")).status_code == 429
    assert api.post("/v1/events", item(signal="big")).status_code == 202


def test_idempotency_keys_work_per_item(api: ApiClient, docs_signal: Signal) -> None:
    first = api.post("/v1/events", item(idempotency_key="k1")).json()["data"]
    response = api.post(
        URL,
        {
            "events": [
                item(idempotency_key="k1"),
                item(idempotency_key="k1", data={"page": "/other"}),
                item(idempotency_key="k2"),
            ]
        },
    )
    slots = response.json()["data"]
    assert slots[0]["id"] == first["id"] and slots[0]["replayed"] is True
    assert (slots[1]["status_code"], slots[1]["code"]) == (409, "idempotency_conflict")
    assert slots[2]["status"] == "pending" and "replayed" not in slots[2]
    assert Event.objects.count() == 2


def test_a_key_repeated_inside_one_batch_is_one_event(api: ApiClient, docs_signal: Signal) -> None:
    response = api.post(
        URL,
        {
            "events": [
                item(idempotency_key="dup"),
                item(idempotency_key="dup"),
                item(idempotency_key="dup", reference="different"),
            ]
        },
    )
    slots = response.json()["data"]
    assert slots[1]["id"] == slots[0]["id"] and slots[1]["replayed"] is True
    assert (slots[2]["status_code"], slots[2]["code"]) == (409, "idempotency_conflict")
    assert Event.objects.count() == 1


def test_an_all_replayed_batch_is_still_all_accepted(api: ApiClient, docs_signal: Signal) -> None:
    body = {"events": [item(idempotency_key="a"), item(idempotency_key="b")]}
    assert api.post(URL, body).status_code == 202
    again = api.post(URL, body)
    assert again.status_code == 202
    assert all(slot["replayed"] for slot in again.json()["data"])
    assert Event.objects.count() == 2


def test_another_organizations_signals_are_not_found_in_a_batch(
    make_tenant, api: ApiClient, docs_signal: Signal
) -> None:
    other = make_tenant("globex")
    other.signal("their-signal")
    response = api.post(URL, {"events": [item(), item(signal="their-signal")]})
    slots = response.json()["data"]
    assert slots[1]["error"] == "Signal not found: their-signal"
    assert Event.objects.filter(organization=other.organization).count() == 0


def test_the_batch_is_queued_in_one_message_after_commit(
    api: ApiClient, docs_signal: Signal, django_capture_on_commit_callbacks
) -> None:
    broker_purge()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = api.post(
            URL, {"events": [item(reference=f"r{i}") for i in range(5)] + [item(signal="nope")]}
        )
    assert len(callbacks) == 1
    ids = [slot["id"] for slot in response.json()["data"] if slot.get("id")]
    times = [Event.objects.get(pk=i).received_at.isoformat() for i in ids]
    assert broker_drain(expect=1) == [("events.process_events", [ids, times])]


def test_nothing_is_stored_when_the_store_fails(
    api: ApiClient, docs_signal: Signal, django_capture_on_commit_callbacks
) -> None:
    from unittest import mock

    from django.db import OperationalError

    with (
        mock.patch(
            "events_app.ingest.batch.events_insert_many", side_effect=OperationalError("db down")
        ),
        django_capture_on_commit_callbacks(execute=True) as callbacks,
    ):
        response = api.post(URL, {"events": [item(), item()]})
    assert response.status_code == 503
    assert callbacks == []
    assert Event.objects.count() == 0


def test_a_hundred_events_at_once(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("bulk", rate_limit_per_minute=1000)
    events = [item(signal="bulk", identity={"type": "account", "id": f"a{i}"}) for i in range(100)]
    response = api.post(URL, {"events": events})
    assert response.status_code == 202
    assert Event.objects.count() == 100
    assert CrmRecord.objects.count() == 100

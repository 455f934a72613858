"""A signal's `flag` enforcement end to end: data failing its schema is accepted and marked,
listed by the filter, counted, processed with the flag in view, and shown in the admin; `reject`
is unchanged. Through the real HTTP stack with real keys; the pipeline runs in-process."""

from __future__ import annotations

import html
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from events_app.ingest.replay import rejection_replay
from events_app.models import (
    Event,
    EventStatus,
    EventTransition,
    Insight,
    MetricAggregate,
    RejectedEvent,
)
from events_app.pipeline.processing import events_process
from events_app.pipeline.processors import (
    EventInfo,
    ProcessingInput,
    RecordContext,
    SignalInfo,
)
from events_app.pipeline.processors.openai import OpenAIProcessor
from events_app.selectors import EventFilters
from signals_app.models import Signal
from signals_app.services import signal_update
from tests.bigmind.test_metrics import Delta
from tests.conftest import ApiClient, Tenant, event_list_plans

pytestmark = pytest.mark.usefixtures("pipeline_in_process")

SIGNUP_SCHEMA = {
    "type": "object",
    "required": ["plan"],
    "properties": {"plan": {"type": "string"}, "seats": {"type": "integer"}},
}
SIGNALS_YAML = """\
organization: acme
signals:
  - slug: signup
    name: Signup
    type: event
    rate_limit_per_minute: 10000
    enforcement: flag
    schemas:
      - version: 1
        schema: {type: object, required: [plan], properties: {plan: {type: string}, seats: {type: integer}}}
  - slug: strict-signup
    name: Strict signup
    type: event
    rate_limit_per_minute: 10000
    schemas:
      - version: 1
        schema: {type: object, required: [plan], properties: {plan: {type: string}, seats: {type: integer}}}
"""
INVALID = {"plan": "pro", "seats": "many"}
VIOLATIONS = [{"path": "$.seats", "message": "'many' is not of type 'integer'", "keyword": "type"}]


def body(signal: str = "signup", data: Any = None, **fields: Any) -> dict[str, Any]:
    return {
        "signal": signal,
        "identity": {"type": "account", "id": "acc-1"},
        "data": INVALID if data is None else data,
        **fields,
    }


def get(client: ApiClient, path: str, **params: Any) -> Any:
    return client.client.get(path, params, headers={"Authorization": f"Bearer {client.raw_key}"})


def listed(client: ApiClient, **params: Any) -> list[dict[str, Any]]:
    response = get(client, "/v1/events", **params)
    assert response.status_code == 200, response.content
    return response.json()["data"]


@pytest.fixture
def synced(tenant: Tenant, tmp_path: Path) -> dict[str, Signal]:
    """`signup` (flag) and `strict-signup` (reject, the default), set by sync_signals."""
    path = tmp_path / "signals.yaml"
    path.write_text(SIGNALS_YAML, encoding="utf-8")
    call_command("sync_signals", str(path), stdout=io.StringIO())
    signals = {s.slug: s for s in Signal.objects.filter(organization=tenant.organization)}
    assert signals["signup"].enforcement == "flag"
    assert signals["strict-signup"].enforcement == "reject"
    return signals


# --- End to end -------------------------------------------------------------------------------
def test_flag_mode_end_to_end_ingest_filter_processing_and_admin(
    api: ApiClient, synced: dict[str, Signal], staff: Client
) -> None:
    # Ingest: the invalid event is accepted with the contract's answer, like the valid one.
    invalid = api.post("/v1/events", body(reference="bad-1"))
    valid = api.post("/v1/events", body(data={"plan": "pro", "seats": 3}, reference="good-1"))
    assert invalid.status_code == 202, invalid.content
    assert valid.status_code == 202, valid.content
    assert set(invalid.json()["data"]) == set(valid.json()["data"])
    assert invalid.json()["data"]["schema_version"] == 1
    invalid_id, valid_id = invalid.json()["data"]["id"], valid.json()["data"]["id"]
    stored = Event.objects.get(pk=invalid_id)
    assert (stored.schema_valid, stored.violations, stored.data) == (False, VIOLATIONS, INVALID)
    assert Event.objects.get(pk=valid_id).schema_valid is True
    assert RejectedEvent.objects.count() == 0  # flagged is not rejected

    # The list filter: only the flagged event, with its violations; `true` the other one.
    [flagged] = listed(api, schema_valid="false")
    assert flagged["id"] == invalid_id
    assert (flagged["schema_valid"], flagged["violations"]) == (False, VIOLATIONS)
    [clean] = listed(api, schema_valid="true")
    assert clean["id"] == valid_id
    assert (clean["schema_valid"], clean["violations"]) == (True, None)
    assert {e["id"] for e in listed(api)} == {invalid_id, valid_id}

    # Processing: completed, and the insight says the data failed its schema.
    events_process(event_ids=[invalid_id, valid_id])
    done = Event.objects.get(pk=invalid_id)
    assert done.status == EventStatus.COMPLETED, done.last_error
    insight = done.result["insight"]
    assert insight["summary"].endswith("[data failed schema version 1]")
    assert insight["reasons"][0] == (
        "Data failed schema version 1: $.seats: 'many' is not of type 'integer'."
    )
    assert Insight.objects.get(event_id=invalid_id).summary == insight["summary"]
    other = Event.objects.get(pk=valid_id).result["insight"]
    assert "schema" not in other["summary"] and "schema" not in " ".join(other["reasons"])
    detail = get(api, f"/v1/events/{invalid_id}").json()["data"]
    assert detail["result"]["insight"]["summary"] == insight["summary"]
    assert (detail["schema_valid"], detail["violations"]) == (False, VIOLATIONS)

    # The admin: the filter lists the flagged event only; its page shows the violations.
    page = staff.get("/admin/events_app/event/", {"schema_valid__exact": "0"})
    assert page.status_code == 200
    text = page.content.decode()
    assert invalid_id in text and valid_id not in text
    assert "By schema valid" in text and 'alt="False"' in text
    page = staff.get(f"/admin/events_app/event/{invalid_id}/change/")
    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert "Invalid: data failed schema version 1" in text
    assert "<code>$.seats</code>" in text
    assert "'many' is not of type 'integer'" in text
    page = staff.get(f"/admin/events_app/event/{valid_id}/change/")
    assert "Valid against schema version 1." in page.content.decode()


# --- Ingest -----------------------------------------------------------------------------------
def test_a_flagged_event_costs_the_same_statements_as_a_valid_one(
    api: ApiClient, synced: dict[str, Signal]
) -> None:
    # Warm: the key, the signal and the validator are cached after the first request.
    assert api.post("/v1/events", body(data={"plan": "pro"})).status_code == 202

    def statements(data: dict[str, Any]) -> list[str]:
        # The group statement runs on psycopg's own cursor (events_app/ingest/store.py), which
        # Django does not capture: on PostgreSQL every statement is counted at psycopg.
        sent: list[str] = []
        original = psycopg.Cursor.execute

        def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(str(query).split()[0].upper())
            return original(cursor, query, *args, **kwargs)

        with (
            CaptureQueriesContext(connection) as queries,
            mock.patch.object(psycopg.Cursor, "execute", execute),
        ):
            assert api.post("/v1/events", body(data=data)).status_code == 202
        if connection.vendor == "postgresql":
            return sent
        return [query["sql"].split()[0].upper() for query in queries]

    valid, flagged = statements({"plan": "pro"}), statements(INVALID)
    assert flagged == valid
    assert {"INSERT", "WITH"} & set(valid)  # the store was seen: the comparison means something
    assert Event.objects.filter(schema_valid=False).count() == 1


def test_reject_mode_is_unchanged(api: ApiClient, synced: dict[str, Signal]) -> None:
    response = api.post("/v1/events", body("strict-signup"))
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "data does not match schema version 1 of signal strict-signup",
        "code": "schema_validation_failed",
        "details": VIOLATIONS,
    }
    assert Event.objects.count() == 0
    assert RejectedEvent.objects.get().violations == VIOLATIONS


def test_a_rejection_replayed_after_a_switch_to_flag_is_stored_flagged(
    api: ApiClient, synced: dict[str, Signal], django_capture_on_commit_callbacks: Any
) -> None:
    assert api.post("/v1/events", body("strict-signup")).status_code == 400
    with django_capture_on_commit_callbacks(execute=True):  # the signal caches are cleared
        signal_update(signal=synced["strict-signup"], enforcement="flag")

    result = rejection_replay(rejection=RejectedEvent.objects.get())

    assert result.accepted, result.error
    event = Event.objects.get(pk=result.event_id)
    assert (event.schema_valid, event.violations) == (False, VIOLATIONS)


def test_after_a_switch_back_to_reject_a_flagged_requests_replay_is_refused(
    api: ApiClient, synced: dict[str, Signal], django_capture_on_commit_callbacks: Any
) -> None:
    assert api.post("/v1/events", body(), **{"Idempotency-Key": "k-2"}).status_code == 202
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=synced["signup"], enforcement="reject")
    again = api.post("/v1/events", body(), **{"Idempotency-Key": "k-2"})
    assert again.status_code == 400
    assert again.json()["code"] == "schema_validation_failed"
    assert Event.objects.get().schema_valid is False  # the stored event keeps its flag


def test_a_flagged_event_is_not_a_rejection(api: ApiClient, synced: dict[str, Signal]) -> None:
    assert api.post("/v1/events", body()).status_code == 202
    response = get(api, "/v1/rejections")
    assert response.status_code == 200, response.content
    assert response.json()["data"] == []


def test_an_idempotent_replay_of_a_flagged_event_answers_the_same(
    api: ApiClient, synced: dict[str, Signal]
) -> None:
    first = api.post("/v1/events", body(), **{"Idempotency-Key": "k-1"})
    delta = Delta()
    again = api.post("/v1/events", body(), **{"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert Event.objects.count() == 1
    assert (
        delta.of("bigmind_events_schema_invalid_total", organization="acme", signal="signup") == 0
    )


def test_data_the_schema_cannot_be_applied_to_is_flagged_too(
    api: ApiClient, tenant: Tenant
) -> None:
    # Under reject this is the 400 "data could not be checked against the schema".
    tenant.signal(
        "money",
        schema={"properties": {"amount": {"type": "number", "multipleOf": 0.01}}},
        enforcement="flag",
    )
    raw = (
        '{"signal": "money", "identity": {"type": "account", "id": "1"}, "data": {"amount": 1'
        + "0" * 400
        + "}}"
    )
    response = api.post_raw("/v1/events", raw)
    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert stored.schema_valid is False
    assert [v["path"] for v in stored.violations] == ["$"]
    assert stored.violations[0]["message"].startswith("OverflowError")


def test_a_batch_mixes_valid_flagged_and_refused_items(
    api: ApiClient, synced: dict[str, Signal]
) -> None:
    delta = Delta()
    response = api.post(
        "/v1/events/batch",
        {
            "events": [
                body(data={"plan": "pro"}, reference="valid"),
                body(reference="flagged"),
                body("strict-signup", reference="refused"),
                body(data={"seats": 2}, reference="flagged-2"),
            ]
        },
    )
    assert response.status_code == 207, response.content
    items = response.json()["data"]
    assert [item["status"] for item in items] == ["pending", "pending", "rejected", "pending"]
    assert items[2]["code"] == "schema_validation_failed" and items[2]["details"] == VIOLATIONS
    # Accepted items answer the single-event fields only, flagged or not.
    assert set(items[0]) == set(items[1]) == set(items[3])
    by_reference = {e.reference: e for e in Event.objects.all()}
    assert set(by_reference) == {"valid", "flagged", "flagged-2"}
    assert (by_reference["valid"].schema_valid, by_reference["valid"].violations) == (True, None)
    assert by_reference["flagged"].violations == VIOLATIONS
    assert by_reference["flagged-2"].violations == [
        {"path": "$", "message": "'plan' is a required property", "keyword": "required"}
    ]
    assert [e["reference"] for e in listed(api, schema_valid="false")] == ["flagged-2", "flagged"]
    assert RejectedEvent.objects.get().signal_slug == "strict-signup"
    assert (
        delta.of("bigmind_events_schema_invalid_total", organization="acme", signal="signup") == 2
    )


def test_flagged_events_are_counted_by_organization_and_signal(
    api: ApiClient, synced: dict[str, Signal]
) -> None:
    delta = Delta()
    for _ in range(2):
        assert api.post("/v1/events", body()).status_code == 202
    assert api.post("/v1/events", body(data={"plan": "pro"})).status_code == 202
    assert api.post("/v1/events", body("strict-signup")).status_code == 400
    labels = {"organization": "acme", "signal": "signup"}
    assert delta.of("bigmind_events_schema_invalid_total", **labels) == 2
    assert delta.of("bigmind_events_accepted_total", signal_type="event") == 3
    assert (
        delta.of("bigmind_events_schema_invalid_total", organization="acme", signal="strict-signup")
        == 0
    )


# --- Validate ---------------------------------------------------------------------------------
def test_validate_under_flag_answers_200_with_the_violations(
    api: ApiClient, synced: dict[str, Signal]
) -> None:
    response = api.post("/v1/events/validate", body())
    assert response.status_code == 200, response.content
    assert response.json() == {
        "success": True,
        "data": {
            "valid": True,
            "signal_id": synced["signup"].public_id,
            "schema_version": 1,
            "schema_valid": False,
            "violations": VIOLATIONS,
        },
    }
    passing = api.post("/v1/events/validate", body(data={"plan": "pro"})).json()["data"]
    assert (passing["schema_valid"], passing["violations"]) == (True, None)
    refused = api.post("/v1/events/validate", body("strict-signup"))
    assert refused.status_code == 400
    assert refused.json()["details"] == VIOLATIONS
    assert Event.objects.count() == 0


# --- Reads ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["no", "False", "0", "yes"])
def test_a_bad_schema_valid_filter_is_a_400_in_the_envelope(api: ApiClient, value: str) -> None:
    response = get(api, "/v1/events", schema_valid=value)
    assert response.status_code == 400
    assert response.json() == {
        "success": False,
        "error": "schema_valid must be one of true, false",
        "code": "invalid_parameter",
    }


def test_the_filter_holds_across_pages(api: ApiClient, synced: dict[str, Signal]) -> None:
    flagged = []
    for i in range(5):
        flagged.append(api.post("/v1/events", body(reference=f"f{i}")).json()["data"]["id"])
        api.post("/v1/events", body(data={"plan": "pro"}, reference=f"v{i}"))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"schema_valid": "false", "limit": "2", **({"cursor": cursor} if cursor else {})}
        response = get(api, "/v1/events", **params)
        seen += [item["id"] for item in response.json()["data"]]
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == flagged[::-1]


def test_the_flagged_list_reads_the_partial_index_on_postgres(
    api: ApiClient, tenant: Tenant, synced: dict[str, Signal]
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's: run with DATABASE_URL=postgres://...")
    for _ in range(3):
        api.post("/v1/events", body())
    for plan in event_list_plans(tenant.organization.pk, EventFilters(schema_valid=False)):
        assert "event_org_invalid_received" in plan, plan


# --- Processing -------------------------------------------------------------------------------
def test_a_flagged_metric_event_whose_value_is_not_a_number_completes_without_a_rollup(
    api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal(
        "calls",
        type="metric",
        schema={
            "type": "object",
            "required": ["value"],
            "properties": {"value": {"type": "number"}},
        },
        enforcement="flag",
    )
    event_id = api.post("/v1/events", body("calls", data={"value": "12"})).json()["data"]["id"]
    good_id = api.post("/v1/events", body("calls", data={"value": 12})).json()["data"]["id"]

    events_process(event_ids=[event_id, good_id])

    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.COMPLETED, event.last_error
    assert event.attempts == 1 and event.last_error == ""
    reason = "Metric value field 'value' must be a number, got str"
    assert event.result["rollup_skipped"] == reason
    assert event.result["rollup"] == {} and event.rollup == {}
    assert event.result["insight"] is None
    step = EventTransition.objects.filter(event_id=event_id, status="completed").get()
    assert step.note == reason
    # Only the valid value reached the bucket.
    good = Event.objects.get(pk=good_id)
    assert good.rollup["metric"]["value"] == 12
    assert "rollup_skipped" not in good.result
    assert [(a.count, a.sum) for a in MetricAggregate.objects.all()] == [(1, 12.0)]
    # Nothing is queued again, and reprocessing it changes nothing.
    events_process(event_ids=[event_id])
    assert Event.objects.get(pk=event_id).status == EventStatus.COMPLETED


def test_a_valid_metric_event_without_a_number_still_fails(api: ApiClient, tenant: Tenant) -> None:
    # No schema to fail, so nothing is flagged: the value is an error as before.
    tenant.signal("calls", type="metric", enforcement="flag")
    event_id = api.post("/v1/events", body("calls", data={"value": "12"})).json()["data"]["id"]
    events_process(event_ids=[event_id])
    event = Event.objects.get(pk=event_id)
    assert event.status == EventStatus.FAILED
    assert "must be a number" in event.last_error


def test_the_openai_prompt_carries_the_schema_check_of_a_flagged_event() -> None:
    info = EventInfo(
        id="e1",
        identity_type="account",
        identity_id="acc-1",
        data=INVALID,
        timestamp=datetime(2026, 3, 10, tzinfo=UTC),
        schema_valid=False,
        schema_version=1,
        violations=VIOLATIONS,
    )
    job = ProcessingInput(
        kind="event",
        signal=SignalInfo(
            slug="signup", name="Signup", type="event", description="", ai_instructions=""
        ),
        event=info,
        context=RecordContext(signal_events_7d=0, events_7d=0),
        facts={},
    )
    system, user = OpenAIProcessor().messages(job)
    assert "schema_check" in system["content"]
    document = json.loads(user["content"])
    assert document["event"]["schema_check"] == {
        "valid": False,
        "version": 1,
        "note": "data failed schema version 1: $.seats: 'many' is not of type 'integer'",
        "violations": VIOLATIONS,
    }
    valid = ProcessingInput(
        kind="event",
        signal=job.signal,
        event=EventInfo(
            id="e2",
            identity_type="account",
            identity_id="acc-1",
            data={"plan": "pro"},
            timestamp=info.timestamp,
        ),
        context=job.context,
        facts={},
    )
    assert (
        "schema_check" not in json.loads(OpenAIProcessor().messages(valid)[1]["content"])["event"]
    )


def test_the_schema_note_names_at_most_three_violations() -> None:
    many = [{"path": f"$.f{i}", "message": "x" * 500, "keyword": "type"} for i in range(5)]
    info = EventInfo(
        id="e1",
        identity_type="account",
        identity_id="a",
        data={},
        timestamp=datetime(2026, 3, 10, tzinfo=UTC),
        schema_valid=False,
        schema_version=2,
        violations=many,
    )
    note = info.schema_note()
    assert note is not None
    assert note.startswith("data failed schema version 2: $.f0: ")
    assert "$.f2" in note and "$.f3" not in note and note.endswith("(and 2 more)")
    assert len(note) < 500

"""Rejected events: what is recorded, how it is bounded, read, replayed and purged."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events_app.ingest.rejections import rejection_body_cut, rejections_purge
from events_app.ingest.replay import RejectionNotReplayable, rejection_replay
from events_app.models import Event, RejectedEvent, RejectionOverflow
from events_app.tasks import purge_rejections_task
from signals_app.models import Signal
from signals_app.services import schema_version_create
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

URL = "/v1/events"
BATCH = "/v1/events/batch"
LIST = "/v1/rejections"
PAGE_SCHEMA = {"type": "object", "required": ["page"], "properties": {"page": {"type": "string"}}}
# Accepts the seed's data only from version 2 on: `page` must be an integer in version 1.
STRICT_SCHEMA = {
    "type": "object",
    "required": ["page"],
    "properties": {"page": {"type": "integer"}},
}
T0 = datetime(2026, 3, 16, 12, 0, tzinfo=UTC)


def event(**overrides: Any) -> dict[str, Any]:
    return json.loads(json.dumps(SEED_REQUEST)) | overrides


def get(client: ApiClient, path: str = LIST, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {client.raw_key}"} if client.raw_key else {}
    return client.client.get(path, params, headers=headers)


def listed(client: ApiClient, **params: Any) -> list[dict[str, Any]]:
    response = get(client, **params)
    assert response.status_code == 200, response.content
    return response.json()["data"]


@pytest.fixture
def docs_signal(tenant: Tenant) -> Signal:
    return tenant.signal("visited-documentation-page", schema=STRICT_SCHEMA)


@pytest.fixture
def other(make_tenant: Callable[[str], Tenant]) -> Tenant:
    return make_tenant("globex")


def store_rejection(tenant: Tenant, *, received_at: datetime, **fields: Any) -> RejectedEvent:
    """A rejection written straight to the database, for control over received_at."""
    fields.setdefault("signal_slug", "nope")
    fields.setdefault("reason", "signal_not_found")
    fields.setdefault("message", f"Signal not found: {fields['signal_slug']}")
    return RejectedEvent.objects.create(
        organization=tenant.organization,
        body="{}",
        body_bytes=2,
        received_at=received_at,
        **fields,
    )


# --- What is recorded -------------------------------------------------------------------------
def test_an_unknown_signal_is_recorded_with_what_was_sent_and_answered(
    api: ApiClient, tenant: Tenant
) -> None:
    raw = json.dumps(event(signal="no-such-signal"), indent=1)
    response = api.post_raw(URL, raw)

    assert response.status_code == 404
    rejection = RejectedEvent.objects.get()
    assert rejection.organization == tenant.organization
    assert rejection.api_key_id == tenant.api_key.pk
    assert rejection.signal_slug == "no-such-signal"
    assert rejection.reason == response.json()["code"] == "signal_not_found"
    assert rejection.message == response.json()["error"] == "Signal not found: no-such-signal"
    assert rejection.violations == []
    assert rejection.body == raw  # the bytes as sent, whitespace and all
    assert rejection.body_bytes == len(raw.encode())
    assert rejection.body_truncated is False
    assert (rejection.identity_type, rejection.identity_id) == ("account", "001ABC000000123")
    assert rejection.replayed_event_id is None
    assert timezone.now() - rejection.received_at < timedelta(seconds=10)


def test_a_schema_violation_is_recorded_with_its_violations(
    api: ApiClient, docs_signal: Signal
) -> None:
    response = api.post(URL, SEED_REQUEST)

    assert response.status_code == 400
    body = response.json()
    rejection = RejectedEvent.objects.get()
    assert rejection.reason == body["code"] == "schema_validation_failed"
    assert rejection.message == body["error"]
    assert rejection.violations == body["details"] and body["details"]
    assert rejection.signal_slug == "visited-documentation-page"
    assert json.loads(rejection.body) == SEED_REQUEST
    assert Event.objects.count() == 0  # the event is not stored, its rejection is


def test_each_refused_item_of_a_batch_is_recorded_and_nothing_else(
    api: ApiClient, docs_signal: Signal
) -> None:
    tenant_signal_ok = {**event(reference="ok"), "data": {"page": 1}}
    items = [
        tenant_signal_ok,
        event(reference="unknown", signal="nope"),
        event(reference="schema"),
        event(reference="no-signal", signal=""),
        event(reference="bad-version", version=9),
        "not an object",
    ]
    response = api.post(BATCH, {"events": items})

    assert response.status_code == 207
    slots = response.json()["data"]
    assert [slot.get("code") for slot in slots] == [
        None,
        "signal_not_found",
        "schema_validation_failed",
        "signal_required",
        "schema_version_not_found",
        "invalid_json",
    ]
    assert Event.objects.count() == 1
    rows = {row.reason: row for row in RejectedEvent.objects.all()}
    assert set(rows) == {"signal_not_found", "schema_validation_failed"}
    assert rows["signal_not_found"].message == slots[1]["error"]
    assert json.loads(rows["signal_not_found"].body) == items[1]
    assert rows["schema_validation_failed"].violations == slots[2]["details"]
    # A batch item is stored as the item itself, compact JSON.
    raw = json.dumps(items[2], ensure_ascii=False, separators=(",", ":"))
    assert rows["schema_validation_failed"].body == raw
    assert rows["schema_validation_failed"].body_bytes == len(raw.encode())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1]", 400, "invalid_json"),
        (json.dumps(event(signal="")).encode(), 400, "signal_required"),
        (json.dumps(event(identity={})).encode(), 400, "identity_required"),
        (json.dumps(event(version="x")).encode(), 400, "invalid_field"),
        (json.dumps(event(version=9)).encode(), 404, "schema_version_not_found"),
    ],
)
def test_other_refusals_are_not_recorded(
    api: ApiClient, docs_signal: Signal, body: bytes, status: int, code: str
) -> None:
    response = api.post_raw(URL, body)
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert not RejectedEvent.objects.exists()


def test_auth_rate_limit_size_conflicts_and_validate_are_not_recorded(
    api: ApiClient, anon: ApiClient, tenant: Tenant, settings: Any
) -> None:
    tenant.signal("limited", rate_limit_per_minute=1, schema=STRICT_SCHEMA)
    tenant.signal("visited-documentation-page")

    assert anon.post(URL, event(signal="nope")).status_code == 401
    assert api.post(URL, event(signal="nope"), Authorization="Bearer sk_wrong").status_code == 401
    assert api.post("/v1/events/validate", event(signal="nope")).status_code == 404
    assert api.post("/v1/events/validate", event(signal="limited")).status_code == 400
    assert api.post(BATCH, {"events": []}).status_code == 400
    settings.BIGMIND_EVENT_MAX_BODY_BYTES = 50
    assert api.post(URL, event(signal="nope")).status_code == 413
    settings.BIGMIND_EVENT_MAX_BODY_BYTES = 1024 * 1024
    assert api.post(URL, event(idempotency_key="k")).status_code == 202
    assert api.post(URL, event(idempotency_key="k", reference="x")).status_code == 409
    assert not RejectedEvent.objects.exists()

    # The budget is spent before the schema is checked: the first is a schema refusal
    # (recorded), the second a 429 (not).
    assert api.post(URL, event(signal="limited")).status_code == 400
    assert api.post(URL, event(signal="limited")).status_code == 429
    assert list(RejectedEvent.objects.values_list("reason", flat=True)) == [
        "schema_validation_failed"
    ]


def test_an_accepted_request_does_not_touch_the_rejections(api: ApiClient, tenant: Tenant) -> None:
    """Pins the statements on purpose: "does not touch" means no statement on the rejection
    tables on the ingest path, and only the captured SQL shows a read that changes nothing."""
    tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA)
    with (
        CaptureQueriesContext(connection) as queries,
        mock.patch("events_app.ingest.rejections.cache") as counter,
    ):
        assert api.post(URL, SEED_REQUEST).status_code == 202
        assert api.post(BATCH, {"events": [SEED_REQUEST, SEED_REQUEST]}).status_code == 202
    assert not counter.method_calls
    tables = (RejectedEvent._meta.db_table, RejectionOverflow._meta.db_table)
    assert not [q for q in queries.captured_queries if any(t in q["sql"] for t in tables)]


# --- Bounded ----------------------------------------------------------------------------------
def test_over_the_cap_per_minute_rejections_are_counted_not_stored(
    api: ApiClient, tenant: Tenant, other: Tenant, settings: Any
) -> None:
    settings.BIGMIND_REJECTIONS_PER_MINUTE = 3
    minute = timezone.now().replace(second=30, microsecond=0)
    with mock.patch("events_app.ingest.rejections.timezone.now", return_value=minute):
        answers = [api.post(URL, event(signal=f"nope-{n}")).status_code for n in range(5)]
        batch = api.post(BATCH, {"events": [event(signal="nope-b")] * 4})
        ApiClient(other.raw_key).post(URL, event(signal="nope"))  # its own budget

    assert answers == [404] * 5  # the client sees no difference
    assert batch.status_code == 207
    kept = RejectedEvent.objects.filter(organization=tenant.organization)
    assert sorted(kept.values_list("signal_slug", flat=True)) == ["nope-0", "nope-1", "nope-2"]
    overflow = RejectionOverflow.objects.get(organization=tenant.organization)
    assert (overflow.minute, overflow.count) == (minute.replace(second=0), 2 + 4)
    assert RejectedEvent.objects.filter(organization=other.organization).count() == 1

    # A new minute, a new budget.
    later = minute + timedelta(minutes=1)
    with mock.patch("events_app.ingest.rejections.timezone.now", return_value=later):
        api.post(BATCH, {"events": [event(signal="nope-c")] * 4})
    assert kept.filter(signal_slug="nope-c").count() == 3
    assert RejectionOverflow.objects.get(minute=later.replace(second=0)).count == 1


def test_with_the_cache_down_the_cap_is_checked_in_the_database(
    api: ApiClient, tenant: Tenant, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.BIGMIND_REJECTIONS_PER_MINUTE = 2
    down = ConnectionError("cache unreachable")
    minute = timezone.now().replace(second=30, microsecond=0)
    with (
        mock.patch("events_app.ingest.rejections.timezone.now", return_value=minute),
        mock.patch.object(cache, "incr", side_effect=down),
        mock.patch.object(cache, "add", side_effect=down),
        caplog.at_level(logging.WARNING, logger="events_app.ingest.rejections"),
    ):
        answers = [api.post(URL, event(signal="nope")).status_code for _ in range(3)]

    assert answers == [404, 404, 404]
    assert RejectedEvent.objects.count() == 2
    assert RejectionOverflow.objects.get().count == 1
    assert "checking the cap in the database" in caplog.text


# --- Body truncation --------------------------------------------------------------------------
@pytest.mark.parametrize("limit", range(4, 9))
def test_a_cut_never_splits_a_utf8_character(limit: int) -> None:
    raw = "abcd\U0001f600é".encode()  # 4 + 4 + 2 bytes
    text, truncated = rejection_body_cut(raw, limit)
    assert truncated is True
    assert text == ("abcd" if limit < 8 else "abcd\U0001f600")
    assert len(text.encode()) <= limit
    assert rejection_body_cut(raw, len(raw)) == (raw.decode(), False)


def test_a_long_body_is_stored_cut_at_a_character_boundary_with_its_size(
    api: ApiClient, tenant: Tenant, settings: Any
) -> None:
    settings.BIGMIND_REJECTION_BODY_MAX_BYTES = 100
    raw = json.dumps(event(signal="nope", data={"text": "é" * 200}), ensure_ascii=False).encode()
    response = api.post_raw(URL, raw)

    assert response.status_code == 404
    rejection = RejectedEvent.objects.get()
    assert rejection.body_truncated is True
    assert rejection.body_bytes == len(raw)
    stored = rejection.body.encode()
    assert 99 <= len(stored) <= 100
    assert raw.startswith(stored)
    item = listed(api)[0]
    assert item["body"] == rejection.body and item["body_truncated"] is True


# --- GET /v1/rejections -----------------------------------------------------------------------
def test_the_list_shows_the_organizations_rejections_newest_first(
    api: ApiClient, docs_signal: Signal
) -> None:
    api.post(URL, event(signal="nope"))
    api.post(URL, SEED_REQUEST)

    response = get(api)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "data", "next_cursor"}
    assert body["success"] is True and body["next_cursor"] is None
    newest, oldest = body["data"]
    document = json.loads(Client().get("/v1/openapi.json").content)
    assert set(newest) == set(document["components"]["schemas"]["Rejection"]["properties"])
    assert newest["reason"] == "schema_validation_failed" and newest["details"]
    assert newest["signal"] == "visited-documentation-page"
    assert newest["identity"] == {"type": "account", "id": "001ABC000000123"}
    assert json.loads(newest["body"]) == SEED_REQUEST
    assert newest["received_at"].endswith("Z")
    assert newest["replayed_event_id"] is None and newest["replayed_at"] is None
    assert oldest["reason"] == "signal_not_found" and oldest["details"] == []
    assert oldest["error"] == "Signal not found: nope"


def test_another_organization_never_sees_them(
    api: ApiClient, tenant: Tenant, other: Tenant
) -> None:
    api.post(URL, event(signal="nope"))
    other_api = ApiClient(other.raw_key)

    assert listed(other_api) == []
    assert listed(other_api, signal="nope", reason="signal_not_found") == []
    assert [item["signal"] for item in listed(api)] == ["nope"]
    assert get(ApiClient(None)).status_code == 401


def test_filters_narrow_the_list(api: ApiClient, tenant: Tenant) -> None:
    store_rejection(tenant, received_at=T0, signal_slug="a")
    store_rejection(tenant, received_at=T0 + timedelta(minutes=1), signal_slug="b")
    store_rejection(
        tenant,
        received_at=T0 + timedelta(minutes=2),
        signal_slug="a",
        reason="schema_validation_failed",
        message="data does not match",
    )

    def slugs(**params: Any) -> list[tuple[str, str]]:
        return [(item["signal"], item["reason"][:6]) for item in listed(api, **params)]

    assert slugs() == [("a", "schema"), ("b", "signal"), ("a", "signal")]
    assert slugs(signal="a") == [("a", "schema"), ("a", "signal")]
    assert slugs(reason="signal_not_found") == [("b", "signal"), ("a", "signal")]
    assert slugs(since="2026-03-16T12:01:00Z") == [("a", "schema"), ("b", "signal")]
    assert slugs(until="2026-03-16T12:01:00Z") == [("a", "signal")]
    assert slugs(signal="a", reason="signal_not_found", since="2026-03-16") == [("a", "signal")]
    assert slugs(signal="", reason="") == slugs()


def test_the_cursor_walks_every_rejection_once_in_order(api: ApiClient, tenant: Tenant) -> None:
    same = T0 + timedelta(minutes=5)
    stored = [store_rejection(tenant, received_at=T0 + timedelta(minutes=n)) for n in range(5)]
    stored += [store_rejection(tenant, received_at=same) for _ in range(3)]
    expected = [
        str(r.id) for r in sorted(stored, key=lambda r: (r.received_at, r.id), reverse=True)
    ]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        response = get(api, limit="3", **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200
        seen += [item["id"] for item in response.json()["data"]]
        cursor = response.json()["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        ({"reason": "rate_limited"}, "invalid_parameter", "reason must be one of"),
        ({"limit": "0"}, "invalid_parameter", "limit must be an integer from 1 to 100"),
        ({"since": "yesterday"}, "invalid_parameter", "since must be an ISO 8601"),
        ({"signal": "x" * 101}, "invalid_parameter", "signal must be at most 100"),
        ({"cursor": "garbled"}, "invalid_cursor", "cursor is invalid"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(
    api: ApiClient, params: dict[str, str], code: str, message: str
) -> None:
    response = get(api, **params)
    assert response.status_code == 400
    assert response.json()["code"] == code
    assert response.json()["error"].startswith(message)


def test_an_event_list_cursor_is_not_a_rejection_cursor(api: ApiClient, tenant: Tenant) -> None:
    tenant.signal("visited-documentation-page")
    for _ in range(2):
        api.post(URL, SEED_REQUEST)
    event_cursor = get(api, "/v1/events", limit="1").json()["next_cursor"]
    assert event_cursor
    response = get(api, cursor=event_cursor)
    assert (response.status_code, response.json()["code"]) == (400, "invalid_cursor")


def test_list_answers_conform_to_the_openapi_document(api: ApiClient, tenant: Tenant) -> None:
    from tests.test_openapi import assert_conforms

    document = json.loads(Client().get("/v1/openapi.json").content)
    tenant.signal("visited-documentation-page", schema=STRICT_SCHEMA)
    api.post(URL, SEED_REQUEST)
    api.post(URL, event(signal="nope", identity={"type": "lead", "id": "L1"}))
    store_rejection(tenant, received_at=timezone.now())  # no identity
    assert listed(api)[0]["identity"] is None
    for response in (
        get(api),
        get(api, limit="1"),
        get(api, reason="nope"),
        get(api, cursor="garbled"),
        get(ApiClient(None)),
    ):
        assert_conforms(document, "GET", LIST, response)


# --- Replay -----------------------------------------------------------------------------------
def test_a_replay_after_a_schema_fix_stores_the_event_and_links_it(
    api: ApiClient, docs_signal: Signal, django_capture_on_commit_callbacks: Any
) -> None:
    api.post(URL, SEED_REQUEST)
    rejection = RejectedEvent.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        schema_version_create(signal=docs_signal, schema=PAGE_SCHEMA)

    result = rejection_replay(rejection=rejection)

    assert result.accepted and result.error is None
    stored = Event.objects.get()
    assert result.event_id == stored.id
    assert stored.schema_version == 2
    assert stored.data == SEED_REQUEST["data"] and stored.reference == "evt-001"
    rejection.refresh_from_db()
    assert rejection.replayed_event_id == stored.id
    assert timezone.now() - rejection.replayed_at < timedelta(seconds=10)
    assert listed(api)[0]["replayed_event_id"] == str(stored.id)
    assert RejectedEvent.objects.count() == 1

    with pytest.raises(RejectionNotReplayable, match="already replayed as event"):
        rejection_replay(rejection=rejection)
    assert Event.objects.count() == 1


def test_a_replay_of_an_unknown_signal_after_creating_it_is_accepted(
    api: ApiClient, tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    api.post(BATCH, {"events": [event(signal="new-signal")]})
    with django_capture_on_commit_callbacks(execute=True):
        tenant.signal("new-signal")

    result = rejection_replay(rejection=RejectedEvent.objects.get())

    assert result.accepted
    assert Event.objects.get().signal.slug == "new-signal"


def test_a_replay_refused_again_returns_the_new_error_and_records_nothing(
    api: ApiClient, docs_signal: Signal
) -> None:
    api.post(URL, SEED_REQUEST)
    rejection = RejectedEvent.objects.get()

    result = rejection_replay(rejection=rejection)

    assert not result.accepted and result.event_id is None
    assert result.error is not None
    assert result.error.code == "schema_validation_failed"
    assert result.error.message == rejection.message
    assert RejectedEvent.objects.count() == 1
    rejection.refresh_from_db()
    assert rejection.replayed_event_id is None and rejection.replayed_at is None
    assert not Event.objects.exists()


def test_a_truncated_body_cannot_be_replayed(api: ApiClient, tenant: Tenant, settings: Any) -> None:
    settings.BIGMIND_REJECTION_BODY_MAX_BYTES = 40
    api.post(URL, event(signal="nope"))
    rejection = RejectedEvent.objects.get()
    assert rejection.body_truncated

    with pytest.raises(RejectionNotReplayable, match="truncated"):
        rejection_replay(rejection=rejection)
    assert not Event.objects.exists()


# --- Admin ------------------------------------------------------------------------------------
def test_the_admin_lists_filters_and_shows_a_rejection(
    staff: Client, api: ApiClient, docs_signal: Signal
) -> None:
    api.post(URL, SEED_REQUEST)
    api.post(URL, event(signal="nope"))
    rejection = RejectedEvent.objects.get(reason="schema_validation_failed")
    base = "/admin/events_app/rejectedevent/"

    assert staff.get(base).status_code == 200
    for query in (
        "?reason__exact=signal_not_found",
        f"?organization__id__exact={docs_signal.organization_id}",
        "?signal_slug=nope",
        "?q=nope",
        "?received_at__year=2026",
    ):
        assert staff.get(base + query).status_code == 200, query
    filtered = staff.get(base + "?signal_slug=nope").context["cl"].result_list
    assert [row.signal_slug for row in filtered] == ["nope"]

    detail = staff.get(f"{base}{rejection.pk}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "&quot;page&quot;" in html  # the body, escaped
    assert "keyword" in html  # the violations


def test_the_admin_replay_action_reports_each_row(
    staff: Client,
    api: ApiClient,
    docs_signal: Signal,
    tenant: Tenant,
    settings: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    api.post(URL, SEED_REQUEST)  # fixed below by a new schema version
    api.post(URL, event(signal="still-unknown"))
    settings.BIGMIND_REJECTION_BODY_MAX_BYTES = 20
    api.post(URL, event(signal="too-long"))
    with django_capture_on_commit_callbacks(execute=True):
        schema_version_create(signal=docs_signal, schema=PAGE_SCHEMA)
    ids = [str(pk) for pk in RejectedEvent.objects.values_list("pk", flat=True)]

    response = staff.post(
        "/admin/events_app/rejectedevent/",
        {"action": "replay", "_selected_action": ids},
        follow=True,
    )

    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    stored = Event.objects.get()
    assert any(f"accepted as event {stored.id}" in m for m in messages)
    assert any(
        "refused again (signal_not_found): Signal not found: still-unknown" in m for m in messages
    )
    assert any("not replayed: The stored body was truncated" in m for m in messages)
    assert RejectedEvent.objects.get(replayed_event_id=stored.id).reason == (
        "schema_validation_failed"
    )


# --- Retention --------------------------------------------------------------------------------
def test_the_purge_deletes_old_rows_in_chunks_and_keeps_recent_ones(
    tenant: Tenant, settings: Any
) -> None:
    """Counts the DELETE statements on purpose: a chunk is one short statement (short locks, a
    bounded write burst), and only the statements show the chunks the result reports."""
    settings.BIGMIND_REJECTION_RETENTION_DAYS = 14
    settings.BIGMIND_REJECTION_PURGE_CHUNK_SIZE = 2
    now = timezone.now()
    for n in range(5):
        store_rejection(tenant, received_at=now - timedelta(days=15, minutes=n))
    recent = store_rejection(tenant, received_at=now - timedelta(days=13))
    RejectionOverflow.objects.create(
        organization=tenant.organization, minute=now - timedelta(days=20), count=7
    )
    kept_count = RejectionOverflow.objects.create(
        organization=tenant.organization, minute=now - timedelta(days=1), count=3
    )

    with CaptureQueriesContext(connection) as queries:
        result = rejections_purge(now=now)

    assert (result.rejections, result.overflow_rows) == (5, 1)
    assert list(RejectedEvent.objects.values_list("pk", flat=True)) == [recent.pk]
    assert list(RejectionOverflow.objects.values_list("pk", flat=True)) == [kept_count.pk]
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
    # 2 + 2 + 1 rejections, then the overflow row: one short statement each.
    assert len(deletes) == result.chunks == 4
    assert rejections_purge(now=now).rejections == 0


def test_the_purge_runs_as_a_beat_task(tenant: Tenant, settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["events-purge-rejections"]
    assert entry["task"] == purge_rejections_task.name == "events.purge_rejections"
    store_rejection(tenant, received_at=timezone.now() - timedelta(days=30))
    purge_rejections_task()
    assert not RejectedEvent.objects.exists()


# --- Never in the way -------------------------------------------------------------------------
def test_a_recording_failure_still_answers_the_original_error(
    api: ApiClient, docs_signal: Signal, caplog: pytest.LogCaptureFixture
) -> None:
    failing = mock.patch.object(
        RejectedEvent.objects, "bulk_create", side_effect=DatabaseError("disk full")
    )
    with failing, caplog.at_level(logging.ERROR, logger="events_app.ingest.rejections"):
        single = api.post(URL, event(signal="nope"))
        schema = api.post(URL, SEED_REQUEST)
        batch = api.post(
            BATCH, {"events": [event(signal="nope"), {**SEED_REQUEST, "data": {"page": 1}}]}
        )

    assert (single.status_code, single.json()["error"]) == (404, "Signal not found: nope")
    assert (schema.status_code, schema.json()["code"]) == (400, "schema_validation_failed")
    assert batch.status_code == 207
    assert [slot["status"] for slot in batch.json()["data"]] == ["rejected", "pending"]
    assert Event.objects.count() == 1
    assert not RejectedEvent.objects.exists()
    assert caplog.text.count("could not record") == 3


def test_rows_of_a_deleted_organization_go_with_it(api: ApiClient, tenant: Tenant) -> None:
    api.post(URL, event(signal="nope"))
    RejectionOverflow.objects.create(organization=tenant.organization, minute=T0, count=1)
    tenant.api_key.delete()
    assert RejectedEvent.objects.get().api_key_id is None
    tenant.organization.delete()
    assert not RejectedEvent.objects.exists() and not RejectionOverflow.objects.exists()

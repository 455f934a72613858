"""The webhooks REST API (events_app/api/webhooks.py) through the whole HTTP stack: endpoints
created, listed, read, changed, deleted, rotated and pinged; deliveries listed and retried; bad
input refused in the envelope; another organization's objects answered as missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from events_app.models import (
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEventType,
)
from events_app.webhooks.endpoints import signing_secrets
from events_app.webhooks.payloads import body as payload_body
from events_app.webhooks.secrets import secret_decrypt
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db
PUBLIC = "https://93.184.215.14/hooks"
ENDPOINT_FIELDS = {
    "id",
    "url",
    "description",
    "events",
    "signals",
    "enabled",
    "disabled_reason",
    "failing_since",
    "created_at",
    "updated_at",
}
DELIVERY_FIELDS = {
    "id",
    "type",
    "status",
    "attempts",
    "last_status_code",
    "last_attempt_at",
    "next_attempt_at",
    "created_at",
    "completed_at",
    "event_id",
    "last_error",
}


class Caller:
    """One organization's key through Django's test client."""

    def __init__(self, raw_key: str | None) -> None:
        self.client = Client()
        self.raw_key = raw_key

    def __call__(
        self, method: str, path: str, body: Any = None, *, raw: bytes | str | None = None
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.raw_key}"} if self.raw_key else {}
        data = raw if raw is not None else ("" if body is None else json.dumps(body))
        return self.client.generic(
            method, path, data, content_type="application/json", headers=headers
        )


@pytest.fixture
def call(tenant: Tenant, pipeline_in_process: Any) -> Caller:
    return Caller(tenant.raw_key)


@pytest.fixture
def create(call: Caller) -> Callable[..., dict[str, Any]]:
    def make(**fields: Any) -> dict[str, Any]:
        response = call("POST", "/v1/webhook-endpoints", {"url": PUBLIC, "events": ["*"], **fields})
        assert response.status_code == 201, response.content
        return response.json()["data"]

    return make


def delivery(endpoint: WebhookEndpoint, **fields: Any) -> WebhookDelivery:
    now = timezone.now()
    row = WebhookDelivery(
        organization_id=endpoint.organization_id,
        endpoint=endpoint,
        type=fields.pop("type", WebhookEventType.EVENT_COMPLETED),
        next_attempt_at=now,
        **fields,
    )
    row.body = payload_body(
        delivery_id=row.id, type=row.type, created=now, organization="acme", data={}
    )
    row.save()
    return row


# --- Create -----------------------------------------------------------------------------------
def test_create_answers_201_with_the_secret_shown_once(call: Caller, tenant: Tenant) -> None:
    signal = tenant.signal("api-calls")
    response = call(
        "POST",
        "/v1/webhook-endpoints",
        {
            "url": PUBLIC,
            "events": ["insight.created", "event.completed"],
            "signals": [signal.slug],
            "description": "CRM sync",
        },
    )
    assert response.status_code == 201, response.content
    data = response.json()["data"]
    assert set(data) == ENDPOINT_FIELDS | {"secret"}
    assert data["id"].startswith("we_") and len(data["id"]) == 15
    assert data["secret"].startswith("whsec_") and len(data["secret"]) == 38
    assert data["events"] == ["event.completed", "insight.created"]
    assert data["signals"] == ["api-calls"]
    assert data["enabled"] is True and data["disabled_reason"] is None
    assert data["failing_since"] is None
    endpoint = WebhookEndpoint.objects.get(public_id=data["id"])
    assert endpoint.organization == tenant.organization
    assert secret_decrypt(endpoint.secret_encrypted) == data["secret"]
    # Never again: not on read, not in the list, not after a change.
    for answer in (
        call("GET", f"/v1/webhook-endpoints/{data['id']}"),
        call("GET", "/v1/webhook-endpoints"),
        call("PATCH", f"/v1/webhook-endpoints/{data['id']}", {"description": "x"}),
    ):
        assert answer.status_code == 200, answer.content
        assert data["secret"] not in answer.content.decode()
        assert "secret" not in answer.content.decode()


def test_create_with_only_the_required_fields(call: Caller) -> None:
    response = call("POST", "/v1/webhook-endpoints", {"url": PUBLIC, "events": ["*"]})
    assert response.status_code == 201, response.content
    data = response.json()["data"]
    assert (data["events"], data["signals"], data["description"]) == (["*"], [], "")


def _refused(response: Any, field: str | None, code: str = "invalid_webhook_endpoint") -> None:
    assert response.status_code == 400, response.content
    answer = response.json()
    assert answer["success"] is False and answer["code"] == code, answer
    if field is not None:
        assert [d["field"] for d in answer["details"]] == [field], answer


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"events": ["*"]}, "url"),
        ({"url": PUBLIC}, "events"),
        ({"url": 5, "events": ["*"]}, "url"),
        ({"url": ["https://x"], "events": ["*"]}, "url"),
        ({"url": "http://93.184.215.14/hooks", "events": ["*"]}, "url"),
        ({"url": "https://127.0.0.1/hooks", "events": ["*"]}, "url"),
        ({"url": "https://10.0.0.1/hooks", "events": ["*"]}, "url"),
        ({"url": "https://169.254.169.254/latest", "events": ["*"]}, "url"),
        ({"url": "https://[::ffff:10.0.0.1]/", "events": ["*"]}, "url"),
        ({"url": "https://user:pw@93.184.215.14/", "events": ["*"]}, "url"),
        ({"url": "not a url", "events": ["*"]}, "url"),
        ({"url": "https://93.184.215.14/" + "a" * 5000, "events": ["*"]}, "url"),
        ({"url": PUBLIC, "events": "*"}, "events"),
        ({"url": PUBLIC, "events": []}, "events"),
        ({"url": PUBLIC, "events": ["ping"]}, "events"),
        ({"url": PUBLIC, "events": ["nope"]}, "events"),
        ({"url": PUBLIC, "events": [1]}, "events"),
        ({"url": PUBLIC, "events": ["*"], "signals": "a"}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "signals": ["no-such-signal"]}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "signals": ["x"] * 101}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "signals": ["a" * 100_00]}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "description": 5}, "description"),
        ({"url": PUBLIC, "events": ["*"], "description": "d" * 501}, "description"),
        ({"url": PUBLIC, "events": ["*"], "enabled": "yes"}, "enabled"),
        ({"url": PUBLIC, "events": ["*"], "enabled": None}, "enabled"),
        ({"url": PUBLIC, "events": ["*"], "secret": "whsec_mine"}, "secret"),
        ({"url": PUBLIC, "events": ["*"], "id": "we_mine"}, "id"),
    ],
)
def test_create_refuses_a_wrong_field_with_its_name(
    call: Caller, fields: dict[str, Any], field: str
) -> None:
    _refused(call("POST", "/v1/webhook-endpoints", fields), field)
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "[]",
        '"x"',
        "{",
        '{"url": "https://93.184.215.14/\\u0000", "events": ["*"]}',
        '{"url": "' + PUBLIC + '", "events": ["*"], "description": "a\\u0000b"}',
        '{"url": "' + PUBLIC + '", "events": ["*"], "signals": ["\\u0000"]}',
        '{"url": "' + PUBLIC + '", "url": "' + PUBLIC + '", "events": ["*"]}',
        '{"url": "' + PUBLIC + '", "events": ["*"], "enabled": NaN}',
        b'{"url": "\xff"}',
    ],
)
def test_create_refuses_what_is_not_a_strict_json_object(call: Caller, raw: str | bytes) -> None:
    _refused(call("POST", "/v1/webhook-endpoints", raw=raw), None, code="invalid_json")
    assert not WebhookEndpoint.objects.exists()


def test_a_huge_body_is_refused_413_unread(call: Caller) -> None:
    body = {"url": PUBLIC, "events": ["*"], "description": "d" * 70_000}
    response = call("POST", "/v1/webhook-endpoints", body)
    assert response.status_code == 413, response.content
    assert response.json()["code"] == "body_too_large"


def test_another_organizations_signal_is_no_signal(
    call: Caller, make_tenant: Callable[[str], Tenant]
) -> None:
    make_tenant("globex").signal("globex-only")
    response = call(
        "POST",
        "/v1/webhook-endpoints",
        {"url": PUBLIC, "events": ["*"], "signals": ["globex-only"]},
    )
    _refused(response, "signals")


# --- List, read, change, delete ---------------------------------------------------------------
def test_the_list_is_newest_first_a_page_at_a_time(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = [create(description=f"n{n}")["id"] for n in range(3)]
    first = call("GET", "/v1/webhook-endpoints?limit=2")
    assert first.status_code == 200, first.content
    page = first.json()
    assert [e["id"] for e in page["data"]] == made[::-1][:2]
    assert all(set(e) == ENDPOINT_FIELDS for e in page["data"])
    second = call("GET", f"/v1/webhook-endpoints?limit=2&cursor={page['next_cursor']}")
    assert [e["id"] for e in second.json()["data"]] == made[:1]
    assert second.json()["next_cursor"] is None


@pytest.mark.parametrize("query", ["limit=0", "limit=abc", "cursor=forged"])
def test_a_wrong_list_parameter_is_a_400(call: Caller, query: str) -> None:
    response = call("GET", f"/v1/webhook-endpoints?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["code"] in ("invalid_parameter", "invalid_cursor")


def test_read_shows_the_signal_filter_by_todays_slugs(
    call: Caller, create: Callable[..., dict[str, Any]], tenant: Tenant
) -> None:
    signal = tenant.signal("api-calls")
    made = create(signals=["api-calls"])
    signal.slug = "api-calls-renamed"
    signal.save(update_fields=["slug"])
    response = call("GET", f"/v1/webhook-endpoints/{made['id']}")
    assert response.status_code == 200, response.content
    assert response.json()["data"]["signals"] == ["api-calls-renamed"]


def test_patch_changes_only_the_fields_sent(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create(description="before", events=["event.completed"])
    response = call(
        "PATCH",
        f"/v1/webhook-endpoints/{made['id']}",
        {"events": ["state.changed"], "url": "https://93.184.215.15/other"},
    )
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert data["events"] == ["state.changed"]
    assert data["url"] == "https://93.184.215.15/other"
    assert data["description"] == "before"


def test_patch_refuses_bad_fields_and_changes_nothing(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create()
    path = f"/v1/webhook-endpoints/{made['id']}"
    before = WebhookEndpoint.objects.values().get()
    _refused(call("PATCH", path, {"url": "https://192.168.1.1/"}), "url")
    _refused(call("PATCH", path, {"nope": 1}), "nope")
    _refused(call("PATCH", path, {"enabled": 1}), "enabled")
    _refused(call("PATCH", path, raw='{"description": "\\u0000"}'), None, code="invalid_json")
    assert WebhookEndpoint.objects.values().get() == before


def test_enabling_a_disabled_endpoint_clears_why(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create()
    WebhookEndpoint.objects.filter(public_id=made["id"]).update(
        enabled=False, disabled_reason="every delivery failed", failing_since=timezone.now()
    )
    shown = call("GET", f"/v1/webhook-endpoints/{made['id']}").json()["data"]
    assert shown["enabled"] is False and shown["disabled_reason"] == "every delivery failed"
    assert shown["failing_since"] is not None
    response = call("PATCH", f"/v1/webhook-endpoints/{made['id']}", {"enabled": True})
    data = response.json()["data"]
    assert (data["enabled"], data["disabled_reason"], data["failing_since"]) == (True, None, None)


def test_delete_removes_the_endpoint_and_its_deliveries(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create()
    endpoint = WebhookEndpoint.objects.get(public_id=made["id"])
    delivery(endpoint)
    response = call("DELETE", f"/v1/webhook-endpoints/{made['id']}")
    assert response.status_code == 200, response.content
    assert response.json() == {"success": True, "data": {"id": made["id"], "deleted": True}}
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()
    again = call("DELETE", f"/v1/webhook-endpoints/{made['id']}")
    assert again.status_code == 404
    assert again.json()["code"] == "webhook_endpoint_not_found"


@pytest.mark.parametrize(
    "endpoint_id",
    ["we_000000000000", "we_", "x", "we_" + "a" * 500, "we_%00aaaaaaaaaaa", "we_aaaaaaaaaaa%C3%A9"],
)
@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("POST", "/rotate-secret"),
        ("POST", "/test"),
        ("GET", "/deliveries"),
    ],
)
def test_an_unknown_or_malformed_id_is_a_404_in_the_envelope(
    call: Caller, endpoint_id: str, method: str, suffix: str
) -> None:
    response = call(method, f"/v1/webhook-endpoints/{endpoint_id}{suffix}", {"description": "x"})
    assert response.status_code == 404, response.content
    assert response.json()["success"] is False
    assert response.json()["code"] == "webhook_endpoint_not_found"


def test_a_path_with_a_slash_in_the_id_is_an_unknown_path(call: Caller) -> None:
    response = call("GET", "/v1/webhook-endpoints/we_a/b")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_a_missing_or_bad_key_is_a_401(create: Callable[..., dict[str, Any]]) -> None:
    made = create()
    for key in (None, "sk_not_a_real_key_0000000000000000000000000"):
        caller = Caller(key)
        for method, path in (
            ("GET", "/v1/webhook-endpoints"),
            ("POST", "/v1/webhook-endpoints"),
            ("GET", f"/v1/webhook-endpoints/{made['id']}"),
            ("PATCH", f"/v1/webhook-endpoints/{made['id']}"),
            ("DELETE", f"/v1/webhook-endpoints/{made['id']}"),
            ("POST", f"/v1/webhook-endpoints/{made['id']}/rotate-secret"),
            ("POST", f"/v1/webhook-endpoints/{made['id']}/test"),
            ("GET", f"/v1/webhook-endpoints/{made['id']}/deliveries"),
            ("POST", "/v1/webhook-deliveries/whevt_0193a1c2d3e47f5a8b9c0d1e2f3a4b5c/retry"),
        ):
            response = caller(method, path, {"url": PUBLIC, "events": ["*"]})
            assert response.status_code == 401, (method, path, response.content)
            assert response["WWW-Authenticate"] == "Bearer"
    assert WebhookEndpoint.objects.count() == 1


# --- Rotate, test -----------------------------------------------------------------------------
def test_rotate_answers_the_new_secret_and_the_old_one_keeps_signing(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create()
    response = call("POST", f"/v1/webhook-endpoints/{made['id']}/rotate-secret")
    assert response.status_code == 200, response.content
    data = response.json()["data"]
    assert set(data) == ENDPOINT_FIELDS | {"secret"}
    assert data["secret"].startswith("whsec_") and data["secret"] != made["secret"]
    endpoint = WebhookEndpoint.objects.get()
    assert [secret_decrypt(p["secret"]) for p in endpoint.previous_secrets] == [made["secret"]]
    assert signing_secrets(endpoint) == [data["secret"], made["secret"]]


def test_test_writes_a_pending_ping_and_wakes_the_sender(
    call: Caller,
    create: Callable[..., dict[str, Any]],
    pipeline_in_process: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    made = create()
    endpoint = WebhookEndpoint.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = call("POST", f"/v1/webhook-endpoints/{made['id']}/test")
    assert response.status_code == 202, response.content
    data = response.json()["data"]
    assert set(data) == DELIVERY_FIELDS
    ping = WebhookDelivery.objects.get()
    assert data["id"] == ping.webhook_event_id and data["id"].startswith("whevt_")
    assert (data["type"], data["status"], data["attempts"]) == ("ping", "pending", 0)
    assert data["event_id"] is None and data["last_error"] is None
    assert ping.status == WebhookDeliveryStatus.PENDING and ping.endpoint == endpoint
    pipeline_in_process.webhooks.assert_called_once_with(endpoint.pk)


def test_a_disabled_endpoint_is_refused_a_test(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create(enabled=False)
    response = call("POST", f"/v1/webhook-endpoints/{made['id']}/test")
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "webhook_endpoint_disabled"
    assert not WebhookDelivery.objects.exists()


# --- Deliveries -------------------------------------------------------------------------------
def test_deliveries_are_listed_newest_first_with_filters(
    call: Caller, create: Callable[..., dict[str, Any]]
) -> None:
    made = create()
    endpoint = WebhookEndpoint.objects.get()
    other = WebhookEndpoint.objects.get(public_id=create()["id"])
    now = timezone.now()
    rows = [
        delivery(endpoint, type=WebhookEventType.EVENT_COMPLETED),
        delivery(endpoint, type=WebhookEventType.INSIGHT_CREATED),
        delivery(endpoint, type=WebhookEventType.EVENT_COMPLETED),
    ]
    delivery(other)
    for n, row in enumerate(rows):
        WebhookDelivery.objects.filter(pk=row.pk).update(created_at=now + timedelta(seconds=n))
    WebhookDelivery.objects.filter(pk=rows[0].pk).update(
        status=WebhookDeliveryStatus.FAILED,
        attempts=7,
        last_status_code=500,
        last_error="HTTP 500",
        last_attempt_at=now,
        completed_at=now,
        next_attempt_at=None,
    )
    path = f"/v1/webhook-endpoints/{made['id']}/deliveries"
    listed = call("GET", path)
    assert listed.status_code == 200, listed.content
    ids = [d["id"] for d in listed.json()["data"]]
    assert ids == [r.webhook_event_id for r in rows[::-1]]
    failed = call("GET", f"{path}?status=failed").json()["data"]
    assert [d["id"] for d in failed] == [rows[0].webhook_event_id]
    assert failed[0]["last_status_code"] == 500 and failed[0]["last_error"] == "HTTP 500"
    assert failed[0]["attempts"] == 7 and failed[0]["next_attempt_at"] is None
    assert failed[0]["completed_at"] is not None and set(failed[0]) == DELIVERY_FIELDS
    typed = call("GET", f"{path}?type=insight.created").json()["data"]
    assert [d["id"] for d in typed] == [rows[1].webhook_event_id]
    first = call("GET", f"{path}?limit=2").json()
    assert [d["id"] for d in first["data"]] == ids[:2]
    rest = call("GET", f"{path}?limit=2&cursor={first['next_cursor']}").json()
    assert [d["id"] for d in rest["data"]] == ids[2:] and rest["next_cursor"] is None
    # A cursor of one endpoint's list is not another endpoint's.
    foreign = call(
        "GET", f"/v1/webhook-endpoints/{other.public_id}/deliveries?cursor={first['next_cursor']}"
    )
    assert foreign.status_code == 400 and foreign.json()["code"] == "invalid_cursor"
    for bad in ("status=done", "type=x", "limit=101", "status=%00"):
        response = call("GET", f"{path}?{bad}")
        assert response.status_code == 400, (bad, response.content)
        assert response.json()["code"] == "invalid_parameter"


def test_retry_of_a_failed_delivery_makes_it_pending_now(
    call: Caller,
    create: Callable[..., dict[str, Any]],
    pipeline_in_process: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    create()
    endpoint = WebhookEndpoint.objects.get()
    failed = delivery(endpoint)
    done = timezone.now() - timedelta(days=1)
    WebhookDelivery.objects.filter(pk=failed.pk).update(
        status=WebhookDeliveryStatus.FAILED, completed_at=done, next_attempt_at=None, attempts=9
    )
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        response = call("POST", f"/v1/webhook-deliveries/{failed.webhook_event_id}/retry")
    assert response.status_code == 202, response.content
    data = response.json()["data"]
    assert (data["id"], data["status"], data["completed_at"]) == (
        failed.webhook_event_id,
        "pending",
        None,
    )
    row = WebhookDelivery.objects.get()
    assert row.status == WebhookDeliveryStatus.PENDING and row.completed_at is None
    assert row.next_attempt_at is not None and before <= row.next_attempt_at <= timezone.now()
    pipeline_in_process.webhooks.assert_called_once_with(endpoint.pk)


@pytest.mark.parametrize(
    "delivery_id",
    [
        "whevt_0193a1c2d3e47f5a8b9c0d1e2f3a4b5c",
        "whevt_0193A1C2D3E47F5A8B9C0D1E2F3A4B5C",
        "0193a1c2-d3e4-7f5a-8b9c-0d1e2f3a4b5c",
        "whevt_",
        "whevt_%00",
        "whevt_" + "0" * 500,
    ],
)
def test_retry_of_an_unknown_or_malformed_delivery_is_a_404(call: Caller, delivery_id: str) -> None:
    response = call("POST", f"/v1/webhook-deliveries/{delivery_id}/retry")
    assert response.status_code == 404, response.content
    assert response.json()["code"] == "webhook_delivery_not_found"


# --- Another organization ---------------------------------------------------------------------
def test_another_organizations_endpoints_and_deliveries_are_not_found(
    call: Caller,
    create: Callable[..., dict[str, Any]],
    make_tenant: Callable[[str], Tenant],
) -> None:
    made = create()
    endpoint = WebhookEndpoint.objects.get()
    owned = delivery(endpoint)
    before = (list(WebhookEndpoint.objects.values()), list(WebhookDelivery.objects.values()))
    other = Caller(make_tenant("globex").raw_key)
    assert other("GET", "/v1/webhook-endpoints").json()["data"] == []
    for method, suffix, body in (
        ("GET", "", None),
        ("PATCH", "", {"enabled": False}),
        ("DELETE", "", None),
        ("POST", "/rotate-secret", None),
        ("POST", "/test", None),
        ("GET", "/deliveries", None),
    ):
        response = other(method, f"/v1/webhook-endpoints/{made['id']}{suffix}", body)
        assert response.status_code == 404, (method, suffix, response.content)
        assert response.json()["code"] == "webhook_endpoint_not_found"
    retry = other("POST", f"/v1/webhook-deliveries/{owned.webhook_event_id}/retry")
    assert retry.status_code == 404 and retry.json()["code"] == "webhook_delivery_not_found"
    assert (
        list(WebhookEndpoint.objects.values()),
        list(WebhookDelivery.objects.values()),
    ) == before

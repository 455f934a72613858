"""The webhooks admin (events_app/admin/webhooks.py) through the test client: endpoints made and
changed through the endpoint services, the signing secret shown once (on creation and on
rotation), test events, and the deliveries' list, page and retry."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from events_app.ids import uuid7
from events_app.models import (
    WebhookDelivery,
    WebhookDeliveryStatus,
    WebhookEndpoint,
    WebhookEventType,
)
from events_app.webhooks.endpoints import endpoint_create, endpoint_update, signing_secrets
from events_app.webhooks.payloads import body
from signals_app.models import OrganizationMembership
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db
PUBLIC = "https://93.184.215.14/hooks"
ENDPOINTS = "/admin/events_app/webhookendpoint/"
DELIVERIES = "/admin/events_app/webhookdelivery/"
T0 = datetime(2026, 12, 2, 20, 0, 36, tzinfo=UTC)
SECRET = re.compile(r"whsec_[0-9A-Za-z]{32}")


def add_form(tenant: Tenant, **overrides: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "organization": tenant.organization.pk,
        "url": PUBLIC,
        "events": ["*"],
        "description": "CRM sync",
        "enabled": "on",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def change_form(endpoint: WebhookEndpoint, **overrides: Any) -> dict[str, Any]:
    form: dict[str, Any] = {
        "url": endpoint.url,
        "events": endpoint.event_types,
        "signals": [str(pk) for pk in endpoint.signal_ids],
        "description": endpoint.description,
        "enabled": "on" if endpoint.enabled else None,
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {k: list(v) for k, v in response.context["adminform"].form.errors.items()}


def make_delivery(endpoint: WebhookEndpoint, **fields: Any) -> WebhookDelivery:
    delivery_id = uuid7()
    fields.setdefault("type", WebhookEventType.EVENT_COMPLETED)
    data = fields.pop("data", {"event": {"id": str(uuid7())}})
    return WebhookDelivery.objects.create(
        id=delivery_id,
        organization_id=endpoint.organization_id,
        endpoint=endpoint,
        body=body(
            delivery_id=delivery_id,
            type=fields["type"],
            created=T0,
            organization=endpoint.organization.slug,
            data=data,
        ),
        next_attempt_at=fields.pop("next_attempt_at", T0),
        **fields,
    )


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


# --- Creating: the secret shown once ----------------------------------------------------------
def test_creating_an_endpoint_shows_its_secret_once_and_never_again(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("page-viewed")
    response = staff.post(
        f"{ENDPOINTS}add/",
        add_form(tenant, events=["event.completed", "insight.created"], signals=[signal.pk]),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    endpoint = WebhookEndpoint.objects.get()
    assert response["Location"] == f"{ENDPOINTS}{endpoint.pk}/created/"
    assert not SECRET.search(response.content.decode())
    assert endpoint.event_types == ["event.completed", "insight.created"]
    assert endpoint.signal_ids == [signal.pk]
    assert endpoint.description == "CRM sync" and endpoint.enabled

    shown = staff.get(response["Location"])
    assert "no-store" in shown["Cache-Control"]
    secrets = SECRET.findall(shown.content.decode())
    assert secrets and set(secrets) == {signing_secrets(endpoint)[0]}

    again = staff.get(response["Location"]).content.decode()
    assert not SECRET.search(again) and 'id="webhook-secret-shown-already"' in again
    for url in (ENDPOINTS, f"{ENDPOINTS}{endpoint.pk}/change/"):
        page = staff.get(url).content.decode()
        assert endpoint.public_id in page and not SECRET.search(page), url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.215.14/hooks", "The URL must start with https://"),
        ("https://10.0.0.1/hooks", "10.0.0.1"),
        ("https://user:pw@93.184.215.14/", "user name or password"),
    ],
    ids=["http", "private-address", "credentials"],
)
def test_an_unsafe_url_is_an_error_beside_the_url_field(
    staff: Client, tenant: Tenant, url: str, message: str
) -> None:
    errors = form_errors(staff.post(f"{ENDPOINTS}add/", add_form(tenant, url=url)))
    assert list(errors) == ["url"], errors
    assert message in errors["url"][0]
    assert not WebhookEndpoint.objects.exists()


def test_all_event_types_and_particular_ones_together_are_refused(
    staff: Client, tenant: Tenant
) -> None:
    errors = form_errors(
        staff.post(f"{ENDPOINTS}add/", add_form(tenant, events=["*", "event.failed"]))
    )
    assert list(errors) == ["events"]
    assert not WebhookEndpoint.objects.exists()


def test_another_organizations_signal_is_refused_not_swapped_for_its_namesake(
    staff: Client, make_tenant: Any
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    acme.signal("shared")
    theirs = globex.signal("shared")
    errors = form_errors(staff.post(f"{ENDPOINTS}add/", add_form(acme, signals=[theirs.pk])))
    assert list(errors) == ["signals"] and "globex/shared" in errors["signals"][0]
    assert not WebhookEndpoint.objects.exists()


# --- Changing ---------------------------------------------------------------------------------
def test_the_change_form_saves_through_the_service_and_re_enabling_clears_the_reason(
    staff: Client, tenant: Tenant
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False,
        disabled_reason="Disabled on 2026-12-02: every delivery failed",
        failing_since=T0,
    )
    endpoint.refresh_from_db()
    page = staff.get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()
    assert "every delivery failed" in page and "2026-12-02 20:00:36 UTC" in page
    assert 'name="disabled_reason"' not in page  # read-only

    response = staff.post(
        f"{ENDPOINTS}{endpoint.pk}/change/",
        change_form(
            endpoint, url="https://93.184.215.14/v2", events=["state.changed"], enabled="on"
        ),
    )
    assert response.status_code == 302, form_errors(response)
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.215.14/v2"
    assert endpoint.event_types == ["state.changed"]
    assert endpoint.enabled and endpoint.disabled_reason == "" and endpoint.failing_since is None

    refused = staff.post(
        f"{ENDPOINTS}{endpoint.pk}/change/", change_form(endpoint, url="ftp://example.com/")
    )
    assert list(form_errors(refused)) == ["url"]
    endpoint.refresh_from_db()
    assert endpoint.url == "https://93.184.215.14/v2"


# --- Rotating and testing ---------------------------------------------------------------------
def test_rotating_asks_first_then_shows_the_new_secret_once(staff: Client, tenant: Tenant) -> None:
    created = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    endpoint = created.endpoint
    page = staff.get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()
    assert f"{ENDPOINTS}{endpoint.pk}/rotate-secret/" in page

    confirm = staff.get(f"{ENDPOINTS}{endpoint.pk}/rotate-secret/")
    assert confirm.status_code == 200 and "24 hours" in confirm.content.decode()
    assert signing_secrets(WebhookEndpoint.objects.get()) == [created.secret]

    response = staff.post(f"{ENDPOINTS}{endpoint.pk}/rotate-secret/", {"post": "yes"})
    assert response["Location"] == f"{ENDPOINTS}{endpoint.pk}/rotated/"
    new, old = signing_secrets(WebhookEndpoint.objects.get())
    assert old == created.secret and new != created.secret
    shown = staff.get(response["Location"]).content.decode()
    assert set(SECRET.findall(shown)) == {new}
    assert not SECRET.search(staff.get(response["Location"]).content.decode())


def test_send_test_event_queues_a_ping_delivery(
    staff: Client, tenant: Tenant, pipeline_in_process: Any, django_capture_on_commit_callbacks: Any
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    assert staff.get(f"{ENDPOINTS}{endpoint.pk}/test/").status_code == 200
    assert not WebhookDelivery.objects.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"{ENDPOINTS}{endpoint.pk}/test/", {"post": "yes"}, follow=True)
    delivery = WebhookDelivery.objects.get()
    assert delivery.type == WebhookEventType.PING and delivery.endpoint == endpoint
    assert any(delivery.webhook_event_id in m for m in messages_of(response))
    assert pipeline_in_process.webhooks.called  # the endpoint's sender was woken

    with django_capture_on_commit_callbacks(execute=True):
        listed = staff.post(
            ENDPOINTS, {"action": "send_test_events", "_selected_action": [endpoint.pk]}
        )
    assert listed.status_code == 302
    assert WebhookDelivery.objects.filter(type=WebhookEventType.PING).count() == 2


def test_a_disabled_endpoint_gets_a_clear_message_not_an_error_page(
    staff: Client, tenant: Tenant, pipeline_in_process: Any
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    endpoint_update(endpoint, enabled=False)
    response = staff.post(f"{ENDPOINTS}{endpoint.pk}/test/", {"post": "yes"}, follow=True)
    assert response.status_code == 200
    assert any("disabled" in m and "enable it" in m for m in messages_of(response))
    response = staff.post(
        ENDPOINTS, {"action": "send_test_events", "_selected_action": [endpoint.pk]}, follow=True
    )
    assert response.status_code == 200
    assert any("disabled" in m for m in messages_of(response))
    assert not WebhookDelivery.objects.exists()


# --- Deliveries -------------------------------------------------------------------------------
@pytest.fixture
def deliveries(make_tenant: Any) -> dict[str, Any]:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    first = endpoint_create(organization=acme.organization, url=PUBLIC, events=["*"]).endpoint
    second = endpoint_create(
        organization=acme.organization, url="https://93.184.215.14/other", events=["*"]
    ).endpoint
    theirs = endpoint_create(organization=globex.organization, url=PUBLIC, events=["*"]).endpoint
    event_id = uuid7()
    return {
        "pending": make_delivery(first, event_id=event_id, data={"event": {"id": str(event_id)}}),
        "failed": make_delivery(
            first,
            type=WebhookEventType.STATE_CHANGED,
            status=WebhookDeliveryStatus.FAILED,
            attempts=12,
            last_attempt_at=T0,
            last_status_code=500,
            last_error="HTTP 500",
        ),
        "succeeded": make_delivery(
            second, type=WebhookEventType.INSIGHT_CREATED, status=WebhookDeliveryStatus.SUCCEEDED
        ),
        "globex": make_delivery(theirs),
        "event_id": event_id,
        "acme": acme,
    }


def listed(client: Client, query: str = "") -> set[Any]:
    response = client.get(DELIVERIES + query)
    assert response.status_code == 200, query
    return set(response.context["cl"].result_list)


def test_the_deliveries_list_filters_by_status_type_organization_and_endpoint(
    staff: Client, deliveries: dict[str, Any]
) -> None:
    pending, failed, succeeded, globex = (
        deliveries[k] for k in ("pending", "failed", "succeeded", "globex")
    )
    assert listed(staff) == {pending, failed, succeeded, globex}
    assert listed(staff, "?status__exact=failed") == {failed}
    assert listed(staff, "?type__exact=insight.created") == {succeeded}
    acme_id = deliveries["acme"].organization.pk
    assert listed(staff, f"?organization__id__exact={acme_id}") == {pending, failed, succeeded}
    assert listed(staff, f"?endpoint={pending.endpoint_id}") == {pending, failed}
    assert listed(staff, f"?q={failed.webhook_event_id}") == {failed}
    assert listed(staff, f"?q={deliveries['event_id']}") == {pending}
    assert listed(staff, "?q=not-an-id") == set()
    assert listed(staff, f"?created_at__year={timezone.now().year}") == {
        pending,
        failed,
        succeeded,
        globex,
    }
    page = staff.get(DELIVERIES).content.decode()
    assert "Failed (12)" in page and ">500<" in page


def test_the_delivery_page_shows_the_request_and_the_response_escaped(
    staff: Client, tenant: Tenant
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    delivery = make_delivery(
        endpoint,
        data={"event": {"data": {"page": "<img src=x onerror=alert(1)>"}}},
        status=WebhookDeliveryStatus.FAILED,
        attempts=1,
        last_attempt_at=T0,
        last_status_code=502,
        last_error="HTTP 502",
        response_excerpt="<script>alert('pwned')</script> bad gateway",
    )
    response = staff.get(f"{DELIVERIES}{delivery.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "<script>alert('pwned')" not in page and "<img src=x" not in page
    assert html.escape("<script>alert('pwned')</script> bad gateway") in page
    assert html.escape('"page": "<img src=x onerror=alert(1)>"') in page  # indented JSON
    assert f"Bigmind-Webhook-Id: {delivery.webhook_event_id}" in page
    assert "User-Agent: Bigmind-Webhooks/1" in page and f"POST {PUBLIC}" in page
    assert "Bigmind-Signature: t=" in page and "v1=&lt;hidden" in page
    for secret in signing_secrets(endpoint):
        assert secret not in page
    assert "HTTP 502" in page and "2026-12-02 20:00:36 UTC" in page
    assert f"{DELIVERIES}{delivery.pk}/retry/" in page
    assert 'name="_save"' not in page  # read-only: nothing to save


def test_retry_sets_deliveries_pending_from_the_list_and_from_the_page(
    staff: Client,
    deliveries: dict[str, Any],
    pipeline_in_process: Any,
    django_capture_on_commit_callbacks: Any,
) -> None:
    failed, succeeded = deliveries["failed"], deliveries["succeeded"]
    before = timezone.now() - timedelta(seconds=1)
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            DELIVERIES,
            {"action": "retry_deliveries", "_selected_action": [str(failed.pk)]},
            follow=True,
        )
    assert any("1 delivery queued" in m for m in messages_of(response))
    failed.refresh_from_db()
    assert failed.status == WebhookDeliveryStatus.PENDING and failed.next_attempt_at >= before
    assert failed.completed_at is None
    assert pipeline_in_process.webhooks.called

    assert staff.get(f"{DELIVERIES}{succeeded.pk}/retry/").status_code == 200
    succeeded.refresh_from_db()
    assert succeeded.status == WebhookDeliveryStatus.SUCCEEDED  # asked first
    staff.post(f"{DELIVERIES}{succeeded.pk}/retry/", {"post": "yes"})
    succeeded.refresh_from_db()
    assert succeeded.status == WebhookDeliveryStatus.PENDING


def test_deliveries_cannot_be_added_edited_or_deleted(
    staff: Client, deliveries: dict[str, Any]
) -> None:
    delivery = deliveries["failed"]
    assert staff.get(f"{DELIVERIES}add/").status_code == 403
    assert staff.get(f"{DELIVERIES}{delivery.pk}/delete/").status_code == 403
    before = delivery.body
    staff.post(f"{DELIVERIES}{delivery.pk}/change/", {"status": "succeeded"})
    delivery.refresh_from_db()
    assert delivery.body == before and delivery.status == WebhookDeliveryStatus.FAILED


def test_staff_who_may_only_view_endpoints_see_events_and_signals_and_no_buttons(
    tenant: Tenant,
) -> None:
    signal = tenant.signal("page-viewed")
    endpoint = endpoint_create(
        organization=tenant.organization,
        url=PUBLIC,
        events=["state.changed"],
        signals=[signal.slug],
    ).endpoint
    user = get_user_model().objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_webhookendpoint", "view_webhookdelivery"])
    )
    OrganizationMembership.objects.create(user=user, organization=tenant.organization)
    viewer = Client()
    viewer.force_login(user)
    page = viewer.get(f"{ENDPOINTS}{endpoint.pk}/change/").content.decode()
    assert "state.changed" in page and "page-viewed" in page
    assert "/rotate-secret/" not in page and "/test/" not in page
    assert (
        viewer.post(f"{ENDPOINTS}{endpoint.pk}/rotate-secret/", {"post": "yes"}).status_code == 403
    )
    assert viewer.post(f"{ENDPOINTS}{endpoint.pk}/test/", {"post": "yes"}).status_code == 403
    delivery = make_delivery(endpoint)
    page = viewer.get(f"{DELIVERIES}{delivery.pk}/change/").content.decode()
    assert "/retry/" not in page
    assert viewer.post(f"{DELIVERIES}{delivery.pk}/retry/", {"post": "yes"}).status_code == 403

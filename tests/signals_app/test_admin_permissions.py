"""Who reaches what in the admin: staff limited to one organization see and change only its
objects (elsewhere: 404), superusers see all, staff without a membership see nothing
organization-owned; API keys are revoked only after a confirmation and never shown again."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from bigmind.errors import ApplicationError
from events_app.ids import uuid7
from events_app.ingest.auth import api_key_authenticate
from events_app.models import (
    CrmRecord,
    Event,
    EventStatus,
    Insight,
    MetricAggregate,
    RecordState,
    RejectedEvent,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)
from events_app.webhooks.endpoints import endpoint_create
from events_app.webhooks.payloads import body
from signals_app.models import ApiKey, AuditEntry, Organization, OrganizationMembership, Signal
from signals_app.services import api_key_hash
from tests.conftest import KEY_FORM, Tenant, signal_form
from tests.events_app.test_read_api import store_event

ADMIN = "/admin/"
KEYS = "/admin/signals_app/apikey/"


@dataclass
class World:
    """One of everything organization-owned, in an organization."""

    tenant: Tenant
    signal: Signal
    event: Event
    record: CrmRecord
    insight: Insight
    aggregate: MetricAggregate
    state: RecordState
    rejection: RejectedEvent
    webhook_endpoint: WebhookEndpoint
    webhook_delivery: WebhookDelivery
    audit_entry: AuditEntry

    @property
    def organization(self) -> Organization:
        return self.tenant.organization

    def objects(self) -> dict[str, Any]:
        """Admin list URL -> this organization's object listed there."""
        return {
            "/admin/signals_app/organization/": self.organization,
            "/admin/signals_app/signal/": self.signal,
            KEYS: self.tenant.api_key,
            "/admin/events_app/event/": self.event,
            "/admin/events_app/crmrecord/": self.record,
            "/admin/events_app/insight/": self.insight,
            "/admin/events_app/metricaggregate/": self.aggregate,
            "/admin/events_app/recordstate/": self.state,
            "/admin/events_app/rejectedevent/": self.rejection,
            "/admin/events_app/webhookendpoint/": self.webhook_endpoint,
            "/admin/events_app/webhookdelivery/": self.webhook_delivery,
            "/admin/signals_app/auditentry/": self.audit_entry,
        }


def build_world(tenant: Tenant) -> World:
    now = timezone.now()
    signal = tenant.signal("page-viewed")
    metric = tenant.signal("api-calls", type="metric")
    event = store_event(tenant, signal, received_at=now, status=EventStatus.FAILED)
    record = event.crm_record
    insight = Insight.objects.create(
        organization=tenant.organization,
        crm_record=record,
        signal=signal,
        event_id=event.pk,
        kind="event",
        summary=f"{tenant.organization.slug} insight",
        score=50,
        next_action="call",
        processor="local",
        processor_version="1",
        occurred_at=now,
        created_at=now,
    )
    aggregate = MetricAggregate.objects.create(
        crm_record=record,
        signal=metric,
        period="day",
        bucket_start=now.replace(hour=0, minute=0, second=0, microsecond=0),
        count=1,
        sum=1,
        min=1,
        max=1,
        updated_at=now,
    )
    state = RecordState.objects.create(
        crm_record=record,
        signal=signal,
        value={"color": "green"},
        timestamp=now,
        event_id=event.pk,
        updated_at=now,
    )
    rejection = RejectedEvent.objects.create(
        organization=tenant.organization,
        api_key=tenant.api_key,
        signal_slug="nope",
        reason="signal_not_found",
        message="Signal not found: nope",
        body="{}",
        body_bytes=2,
        received_at=now,
    )
    endpoint = endpoint_create(
        organization=tenant.organization,
        url="https://93.184.215.14/hooks",
        events=["*"],
        description=f"{tenant.organization.slug}-webhook-endpoint",
    ).endpoint
    delivery_id = uuid7()
    # Written directly, as the outbox writes it: ping_create would queue a send after commit.
    delivery = WebhookDelivery.objects.create(
        id=delivery_id,
        organization=tenant.organization,
        endpoint=endpoint,
        type=WebhookEventType.EVENT_COMPLETED,
        event_id=event.pk,
        body=body(
            delivery_id=delivery_id,
            type=WebhookEventType.EVENT_COMPLETED,
            created=now,
            organization=tenant.organization.slug,
            data={"event": {"id": str(event.pk)}},
        ),
        next_attempt_at=now,
    )
    # Its organization's latest change (the endpoint's creation, recorded by the service).
    audit_entry = AuditEntry.objects.filter(organization_pk=tenant.organization.pk).latest("id")
    return World(
        tenant,
        signal,
        event,
        record,
        insight,
        aggregate,
        state,
        rejection,
        endpoint,
        delivery,
        audit_entry,
    )


@pytest.fixture
def acme(make_tenant: Callable[[str], Tenant]) -> World:
    return build_world(make_tenant("acme"))


@pytest.fixture
def globex(make_tenant: Callable[[str], Tenant]) -> World:
    return build_world(make_tenant("globex"))


def staff_user(username: str, organization: Organization | None) -> Any:
    """Staff with every permission on the project's models, limited to `organization`."""
    user = get_user_model().objects.create_user(username, password="pw-123456", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label__in=["signals_app", "events_app"])
    )
    if organization is not None:
        OrganizationMembership.objects.create(user=user, organization=organization)
    return user


def client_for(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def scoped(acme: World) -> Client:
    return client_for(staff_user("acme-staff", acme.organization))


def organization_of(obj: Any) -> Organization:
    if isinstance(obj, Organization):
        return obj
    if isinstance(obj, AuditEntry):
        return Organization.objects.get(pk=obj.organization_pk)
    if isinstance(obj, MetricAggregate | RecordState):
        return obj.crm_record.organization
    return obj.organization


def listed(client: Client, url: str) -> list[Any]:
    response = client.get(url)
    assert response.status_code == 200, url
    return list(response.context["cl"].result_list)


def change_url(list_url: str, obj: Any) -> str:
    return f"{list_url}{obj.pk}/change/"


# --- Scoped staff -----------------------------------------------------------------------------
def test_a_scoped_staff_user_sees_only_their_organizations_objects_in_every_list(
    scoped: Client, acme: World, globex: World
) -> None:
    for url, mine in acme.objects().items():
        rows = listed(scoped, url)
        assert mine in rows, url
        assert {organization_of(row) for row in rows} == {acme.organization}, url
        page = scoped.get(url).content.decode()
        assert "globex" not in page, url


def test_another_organizations_pages_are_not_found(
    scoped: Client, acme: World, globex: World
) -> None:
    for url, theirs in globex.objects().items():
        assert scoped.get(change_url(url, theirs)).status_code == 404, url
        assert scoped.get(f"{url}{theirs.pk}/history/").status_code == 404, url
    for url, mine in acme.objects().items():
        assert scoped.get(change_url(url, mine)).status_code == 200, url
    signal = globex.signal
    assert scoped.get(f"/admin/signals_app/signal/{signal.pk}/try/").status_code == 404
    assert scoped.get(f"/admin/signals_app/signal/{signal.pk}/versions/1/diff/").status_code == 404


def test_the_dashboard_shows_only_their_organization(
    scoped: Client, acme: World, globex: World
) -> None:
    chooser = scoped.get("/admin/dashboard/")
    assert [org.slug for org in chooser.context["organizations"]] == ["acme"]
    assert "/admin/dashboard/globex/" not in chooser.content.decode()
    assert scoped.get("/admin/dashboard/acme/").status_code == 200
    assert scoped.get("/admin/dashboard/globex/").status_code == 404


def test_the_add_forms_offer_only_their_organization(
    scoped: Client, acme: World, globex: World
) -> None:
    for url in ("/admin/signals_app/signal/add/", f"{KEYS}add/"):
        response = scoped.get(url)
        assert response.status_code == 200
        field = response.context["adminform"].form.fields["organization"]
        assert list(field.queryset) == [acme.organization]
        select = re.search(
            r'<select name="organization".*?</select>', response.content.decode(), re.S
        )
        assert select is not None, url
        options = re.findall(r'<option value="(\d*)"', select.group(0))
        assert options == [str(acme.organization.pk)], url  # preselected, no blank choice


def test_a_forged_post_for_another_organization_is_refused(
    scoped: Client, acme: World, globex: World
) -> None:
    signals_before = Signal.objects.count()
    response = scoped.post(
        "/admin/signals_app/signal/add/", signal_form(globex.organization, slug="forged")
    )
    assert response.status_code == 200
    assert "organization" in response.context["adminform"].form.errors
    assert Signal.objects.count() == signals_before

    keys_before = ApiKey.objects.count()
    response = scoped.post(
        f"{KEYS}add/", {"organization": globex.organization.pk, "name": "x", **KEY_FORM}
    )
    assert response.status_code == 200
    assert "new-api-key" not in response.content.decode()
    assert ApiKey.objects.count() == keys_before


def test_what_scoped_staff_create_lands_in_their_organization(
    scoped: Client, acme: World, globex: World
) -> None:
    response = scoped.post(
        "/admin/signals_app/signal/add/", signal_form(acme.organization, slug="made-by-staff")
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert Signal.objects.get(slug="made-by-staff").organization == acme.organization

    response = scoped.post(
        f"{KEYS}add/", {"organization": acme.organization.pk, "name": "ci", **KEY_FORM}, follow=True
    )
    assert response.status_code == 200
    raw = re.search(r'value="(sk_[A-Za-z0-9_\-]+)"', response.content.decode()).group(1)
    assert api_key_authenticate(raw_key=raw).organization_id == acme.organization.pk


def test_filters_and_lookups_cannot_reach_another_organization(
    scoped: Client, acme: World, globex: World
) -> None:
    events = "/admin/events_app/event/"
    assert listed(scoped, f"{events}?organization__id__exact={globex.organization.pk}") == []
    assert listed(scoped, f"{events}?signal={globex.signal.pk}") == []
    assert listed(scoped, f"{events}?crm_record__id__exact={globex.record.pk}") == []
    page = scoped.get(events).content.decode()
    assert f"?signal={acme.signal.pk}" in page
    assert f"?signal={globex.signal.pk}" not in page
    # The organization filter would list every organization: scoped users do not get it.
    assert "organization__id__exact" not in page


def test_actions_ignore_a_forged_selection_from_another_organization(
    scoped: Client, acme: World, globex: World
) -> None:
    scoped.post(
        "/admin/events_app/event/",
        {"action": "reprocess", "_selected_action": [str(globex.event.pk)]},
    )
    globex.event.refresh_from_db()
    assert globex.event.status == EventStatus.FAILED

    theirs = globex.tenant.api_key
    scoped.post(KEYS, {"action": "revoke_keys", "_selected_action": [theirs.pk], "post": "yes"})
    theirs.refresh_from_db()
    assert theirs.revoked_at is None


def test_their_organization_is_read_only_and_memberships_are_not_theirs_to_see(
    scoped: Client, acme: World
) -> None:
    url = change_url("/admin/signals_app/organization/", acme.organization)
    page = scoped.get(url).content.decode()
    assert 'name="_save"' not in page
    assert scoped.post(url, {"slug": "renamed", "name": "Renamed"}).status_code == 403
    assert Organization.objects.filter(slug="acme").exists()
    assert scoped.get("/admin/signals_app/organization/add/").status_code == 403
    assert scoped.get("/admin/signals_app/organizationmembership/").status_code == 403
    assert "organizationmembership" not in scoped.get(ADMIN).content.decode()


# --- Superusers, staff without a membership, everyone else ------------------------------------
def test_a_superuser_sees_every_organization(staff: Client, acme: World, globex: World) -> None:
    for url, mine in acme.objects().items():
        rows = listed(staff, url)
        assert mine in rows and globex.objects()[url] in rows, url
    assert staff.get(change_url(KEYS, globex.tenant.api_key)).status_code == 200
    chooser = staff.get("/admin/dashboard/")
    assert [org.slug for org in chooser.context["organizations"]] == ["acme", "globex"]
    assert staff.get("/admin/signals_app/organizationmembership/").status_code == 200


def test_a_superuser_grants_a_membership_in_the_admin(staff: Client, acme: World) -> None:
    user = get_user_model().objects.create_user("newcomer", password="pw", is_staff=True)
    response = staff.post(
        "/admin/signals_app/organizationmembership/add/",
        {"user": user.pk, "organization": acme.organization.pk},
    )
    assert response.status_code == 302
    assert OrganizationMembership.objects.get(user=user).organization == acme.organization


def test_staff_without_a_membership_see_no_organization_owned_objects(
    acme: World, globex: World
) -> None:
    client = client_for(staff_user("no-membership", None))

    for url, theirs in acme.objects().items():
        assert listed(client, url) == [], url
        assert client.get(change_url(url, theirs)).status_code == 404, url
    assert client.get("/admin/signals_app/signal/add/").status_code == 403
    assert client.get(f"{KEYS}add/").status_code == 403
    assert list(client.get("/admin/dashboard/").context["organizations"]) == []
    assert client.get("/admin/dashboard/acme/").status_code == 404


@pytest.mark.parametrize(
    "path",
    [
        ADMIN,
        KEYS,
        "/admin/events_app/event/",
        "/admin/events_app/crmrecord/",
        "/admin/signals_app/organizationmembership/",
        "/admin/dashboard/",
    ],
)
def test_visitors_who_are_not_staff_are_sent_to_the_login(db: None, path: str) -> None:
    member = get_user_model().objects.create_user("member", password="pw-123456")
    for client in (Client(), client_for(member)):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response["Location"].startswith("/admin/login/")


# --- API keys: revoke with confirmation, never shown again ------------------------------------
def revoke(client: Client, *keys: ApiKey, **extra: str) -> Any:
    return client.post(
        KEYS, {"action": "revoke_keys", "_selected_action": [k.pk for k in keys], **extra}
    )


def test_revoking_asks_first_listing_the_keys_by_name_and_prefix(
    scoped: Client, acme: World, django_capture_on_commit_callbacks: Any
) -> None:
    key = acme.tenant.api_key

    response = revoke(scoped, key, index="0")

    assert response.status_code == 200
    page = response.content.decode()
    assert "Revoke this API key?" in page  # one key: singular
    assert key.prefix in page and key.name in page
    assert 'name="post" value="yes"' in page
    assert f'name="_selected_action" value="{key.pk}"' in page
    assert 'class="button cancel-link"' in page
    key.refresh_from_db()
    assert key.revoked_at is None
    assert api_key_authenticate(raw_key=acme.tenant.raw_key).organization_id == key.organization_id

    with django_capture_on_commit_callbacks(execute=True):
        response = revoke(scoped, key, post="yes")

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    with pytest.raises(ApplicationError):
        api_key_authenticate(raw_key=acme.tenant.raw_key)


def test_the_confirmation_lists_only_keys_the_user_may_see(
    scoped: Client, acme: World, globex: World
) -> None:
    page = revoke(scoped, acme.tenant.api_key, globex.tenant.api_key).content.decode()
    assert acme.tenant.api_key.prefix in page
    assert globex.tenant.api_key.prefix not in page


def test_no_admin_page_shows_a_stored_key_or_its_hash(
    staff: Client, acme: World, globex: World
) -> None:
    response = staff.post(
        f"{KEYS}add/",
        {"organization": acme.organization.pk, "name": "shown", **KEY_FORM},
        follow=True,
    )
    raw = re.search(r'value="(sk_[A-Za-z0-9_\-]+)"', response.content.decode()).group(1)
    key = ApiKey.objects.get(key_hash=api_key_hash(raw))
    secrets = {
        raw: "the new key",
        key.key_hash: "its hash",
        acme.tenant.raw_key: "acme's key",
        acme.tenant.api_key.key_hash: "acme's hash",
    }
    pages = [
        KEYS,
        f"{KEYS}?q={key.prefix}",
        change_url(KEYS, key),
        f"{KEYS}{key.pk}/history/",
        f"{KEYS}{key.pk}/created/",  # shown once already: a second visit shows no secret
        f"{KEYS}{key.pk}/revoke/",
        change_url(KEYS, acme.tenant.api_key),
        "/admin/events_app/rejectedevent/",
        change_url("/admin/events_app/rejectedevent/", acme.rejection),
        ADMIN,
    ]
    responses = {url: staff.get(url) for url in pages}
    responses["revoke confirmation"] = revoke(staff, key, acme.tenant.api_key)
    responses["revoked"] = staff.post(
        KEYS,
        {"action": "revoke_keys", "_selected_action": [key.pk], "post": "yes"},
        follow=True,
    )
    for name, response in responses.items():
        assert response.status_code == 200, name
        page = response.content.decode()
        assert (
            key.prefix in page
            or name in (ADMIN, "/admin/events_app/rejectedevent/")
            or (acme.tenant.api_key.prefix in page)
        ), name
        for secret, what in secrets.items():
            assert secret not in page, f"{what} on {name}"

    change = responses[change_url(KEYS, key)].content.decode()
    for label in ("Name", "Prefix", "Created at", "Last used", "Revoked"):
        assert f">{label}:</label>" in change, label
    assert "Key hash" not in change

"""The audit log kept and read: no secret in any entry; an entry only with a change that
commits; read-only in the admin for everyone, filterable and cut to the staff user's
organization; `manage.py audit_log` and its filters; retention."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any
from urllib.parse import urlencode

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client
from django.utils import timezone

from bigmind.errors import ApplicationError
from events_app.models import WebhookEndpoint
from events_app.retention import retention_purge
from events_app.webhooks.endpoints import endpoint_create, endpoint_rotate_secret
from signals_app.audit import SECRET_MASK, audit_actor, audit_record
from signals_app.models import ApiKey, AuditEntry, Organization, OrganizationMembership
from signals_app.organizations import organization_delete, organization_update
from signals_app.services import (
    api_key_create,
    api_key_revoke,
    organization_get_or_create,
    schema_version_create,
    signal_create,
    signal_update,
)
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db
PUBLIC = "https://93.184.215.14/hooks"
AUDIT = "/admin/signals_app/auditentry/"


def _out(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --- Secrets ----------------------------------------------------------------------------------
def test_no_entry_holds_a_raw_key_a_key_hash_or_a_webhook_secret(tenant: Tenant) -> None:
    raws = [tenant.raw_key, _out("create_api_key", "--organization", "acme").strip()]
    api_key, raw = api_key_create(organization=tenant.organization, name="third")
    raws.append(raw)
    api_key_revoke(api_key=api_key)
    created = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    rotated = endpoint_rotate_secret(created.endpoint)
    endpoint = WebhookEndpoint.objects.get()
    secrets = [
        *raws,
        *(k.key_hash for k in ApiKey.objects.all()),
        created.secret,
        rotated.secret,
        endpoint.secret_encrypted,
        *(p["secret"] for p in endpoint.previous_secrets),
    ]
    assert len(secrets) == 10 and all(len(s) >= 24 for s in secrets)

    dump = json.dumps([list(row) for row in AuditEntry.objects.values_list()], default=str)
    assert AuditEntry.objects.count() >= 6
    for secret in secrets:
        assert secret not in dump
        # Nor a recognisable piece of one (a key is shown by its prefix only).
        assert secret[-16:] not in dump
    rotation = AuditEntry.objects.get(action="webhook_endpoint.secret_rotated")
    assert rotation.changes == {"secret": [SECRET_MASK, SECRET_MASK]}


def test_a_secret_field_passed_to_the_recorder_is_masked_whatever_its_value(
    tenant: Tenant,
) -> None:
    with transaction.atomic():
        entry = audit_record(
            action="api_key.updated",
            organization=tenant.organization,
            object_type="api_key",
            object_id=tenant.api_key.prefix,
            changes={"key_hash": ["a" * 64, "b" * 64], "raw_key": [None, tenant.raw_key]},
        )
    assert entry.changes == {
        "key_hash": [SECRET_MASK, SECRET_MASK],
        "raw_key": [SECRET_MASK, SECRET_MASK],
    }


# --- Same transaction -------------------------------------------------------------------------
def test_a_change_that_rolls_back_leaves_no_entry(tenant: Tenant) -> None:
    before = AuditEntry.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        signal = signal_create(organization=tenant.organization, name="Docs", type="event")
        signal_update(signal=signal, enforcement="flag")
        raise RuntimeError("the rest of the request failed")
    assert AuditEntry.objects.count() == before

    # A change the service refuses records nothing either.
    signal = signal_create(
        organization=tenant.organization, name="Strict", type="event", compatibility="backward"
    )
    schema_version_create(signal=signal, schema={"type": "object"})
    before = AuditEntry.objects.count()
    with pytest.raises(ApplicationError):
        schema_version_create(
            signal=signal, schema={"type": "object", "required": ["new"]}
        )  # backward-incompatible
    assert AuditEntry.objects.count() == before


@pytest.mark.django_db(transaction=True)
def test_an_entry_cannot_be_written_outside_a_transaction() -> None:
    organization, _ = organization_get_or_create(slug="acme")
    with pytest.raises(RuntimeError, match="transaction"):
        audit_record(action="x.y", organization=organization, object_type="x")
    assert AuditEntry.objects.filter(action="organization.created").count() == 1


def test_without_a_request_or_a_command_the_actor_is_the_system_and_a_command_names_itself(
    tenant: Tenant,
) -> None:
    signal_create(organization=tenant.organization, name="Plain", type="event")
    with audit_actor("command", "my_script"):
        signal_create(organization=tenant.organization, name="Scripted", type="event")
    plain, scripted = AuditEntry.objects.filter(action="signal.created").order_by("id")
    assert (plain.actor_kind, plain.actor, plain.request_id) == ("system", "", "")
    assert (scripted.actor_kind, scripted.actor) == ("command", "my_script")


def test_entries_outlive_their_organization(tenant: Tenant) -> None:
    org_id = tenant.organization.pk
    organization_delete(organization=tenant.organization)
    assert not Organization.objects.exists()
    entries = AuditEntry.objects.filter(organization_pk=org_id)
    assert {e.action for e in entries} >= {
        "organization.created",
        "api_key.created",
        "organization.deleted",
    }
    assert {e.organization_slug for e in entries} == {"acme"}


# --- The admin --------------------------------------------------------------------------------
@pytest.fixture
def superuser() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-123456"))
    return client


def test_the_admin_lists_entries_and_shows_one_but_nobody_may_add_change_or_delete(
    superuser: Client, tenant: Tenant
) -> None:
    entry = AuditEntry.objects.get(action="api_key.created")
    listing = superuser.get(AUDIT)
    assert listing.status_code == 200
    assert entry in listing.context["cl"].result_list
    page = superuser.get(f"{AUDIT}{entry.pk}/change/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "api_key.created" in text and tenant.api_key.prefix in text
    assert 'name="_save"' not in text  # a view, not a form
    # The changed fields, old beside new.
    assert (
        "<tr><td>name</td><td><code>null</code></td><td><code>&quot;acme key&quot;</code>" in text
    )

    assert superuser.get(f"{AUDIT}add/").status_code == 403
    assert superuser.post(f"{AUDIT}add/", {"action": "forged"}).status_code == 403
    assert superuser.post(f"{AUDIT}{entry.pk}/change/", {"action": "forged"}).status_code == 403
    assert superuser.post(f"{AUDIT}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = superuser.post(
        AUDIT, {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)
    assert AuditEntry.objects.filter(pk=entry.pk, action="api_key.created").exists()


def test_the_admin_filters_by_organization_action_actor_kind_and_date(
    superuser: Client, make_tenant: Callable[[str], Tenant]
) -> None:
    make_tenant("acme")
    make_tenant("globex")
    with audit_actor("command", "sync_signals"):
        signal_create(organization=Organization.objects.get(slug="globex"), name="X", type="event")

    def listed(query: str) -> set[tuple[str, str]]:
        response = superuser.get(f"{AUDIT}?{query}")
        assert response.status_code == 200, query
        return {(e.organization_slug, e.action) for e in response.context["cl"].result_list}

    assert {org for org, _ in listed("organization_slug=globex")} == {"globex"}
    assert listed("action=api_key.created") == {
        ("acme", "api_key.created"),
        ("globex", "api_key.created"),
    }
    assert listed("actor_kind=command") == {("globex", "signal.created")}
    # As the filter's own "Today" link has it: aware midnights.
    midnight = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
    day = {"at__gte": midnight, "at__lt": midnight + timedelta(days=1)}
    assert len(listed(urlencode(day))) == AuditEntry.objects.count()
    later = {name: value + timedelta(days=1) for name, value in day.items()}
    assert listed(urlencode(later)) == set()
    assert listed("q=api_key.created") == listed("action=api_key.created")


def test_a_scoped_staff_user_sees_only_their_organizations_entries(
    make_tenant: Callable[[str], Tenant],
) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    user = get_user_model().objects.create_user("acme-staff", password="pw-123456", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_auditentry"))
    OrganizationMembership.objects.create(user=user, organization=acme.organization)
    client = Client()
    client.force_login(user)

    response = client.get(AUDIT)
    assert response.status_code == 200
    assert {e.organization_slug for e in response.context["cl"].result_list} == {"acme"}
    assert "globex" not in response.content.decode()
    theirs = AuditEntry.objects.filter(organization_pk=globex.organization.pk).first()
    assert theirs is not None
    assert client.get(f"{AUDIT}{theirs.pk}/change/").status_code == 404


# --- The command ------------------------------------------------------------------------------
def _lines(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _out("audit_log", *args).splitlines()]


def test_the_command_prints_json_lines_oldest_first_and_filters(
    make_tenant: Callable[[str], Tenant],
) -> None:
    make_tenant("acme")
    make_tenant("globex")
    old = AuditEntry.objects.get(organization_slug="acme", action="organization.created")
    AuditEntry.objects.filter(pk=old.pk).update(at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))

    every = _lines()
    assert len(every) == AuditEntry.objects.count() == 4
    assert [line["at"] for line in every] == sorted(line["at"] for line in every)
    assert every[0] == {
        "id": old.pk,
        "at": "2026-01-02T03:04:05Z",
        "actor_kind": "system",
        "actor": "",
        "organization_id": old.organization_pk,
        "organization": "acme",
        "action": "organization.created",
        "object_type": "organization",
        "object_id": str(old.organization_pk),
        "object": "acme",
        "changes": {"slug": [None, "acme"], "name": [None, "acme"]},
        "request_id": None,
    }
    assert {line["organization"] for line in _lines("--organization", "globex")} == {"globex"}
    assert [line["id"] for line in _lines("--since", "2026-06-01")] == [
        line["id"] for line in every[1:]
    ]
    assert len(_lines("--since", "2026-01-02T03:04:05+00:00")) == 4
    assert len(_lines("--since", "2026-01-02T03:04:06")) == 3  # no zone: UTC
    assert len(_lines("--organization", "acme", "--since", "2026-06-01")) == 1


def test_the_command_refuses_a_bad_time_and_an_unknown_organization_but_reads_a_deleted_one(
    tenant: Tenant,
) -> None:
    for bad in ("yesterday", "2026-13-01", "2026-02-30T00:00:00", ""):
        with pytest.raises(CommandError, match="ISO 8601"):
            call_command("audit_log", "--since", bad, stdout=StringIO())
    with pytest.raises(CommandError, match="No organization with slug 'nope'"):
        call_command("audit_log", "--organization", "nope", stdout=StringIO())

    organization_delete(organization=tenant.organization)
    actions = [line["action"] for line in _lines("--organization", "acme")]
    assert actions[0] == "organization.created" and actions[-1] == "organization.deleted"


def test_the_command_finds_an_organizations_entries_from_before_a_slug_change(
    tenant: Tenant,
) -> None:
    organization_update(organization=tenant.organization, slug="acme-two")

    actions = [line["action"] for line in _lines("--organization", "acme-two")]

    assert actions == ["organization.created", "api_key.created", "organization.updated"]


# --- Retention --------------------------------------------------------------------------------
def test_entries_are_purged_after_the_retention_which_is_400_days_by_default(
    tenant: Tenant, settings: Any
) -> None:
    settings.BIGMIND_EVENT_RETENTION_DAYS = 0
    assert settings.BIGMIND_AUDIT_RETENTION_DAYS == 400
    now = timezone.now()
    entries = list(AuditEntry.objects.order_by("id"))
    assert len(entries) == 2
    AuditEntry.objects.filter(pk=entries[0].pk).update(at=now - timedelta(days=401))
    AuditEntry.objects.filter(pk=entries[1].pk).update(at=now - timedelta(days=399))

    assert retention_purge(dry_run=True).audit_entries == 1
    assert AuditEntry.objects.count() == 2
    out = _out("purge_expired")
    assert "audit log entries: 1 deleted (recorded before" in out
    assert list(AuditEntry.objects.values_list("pk", flat=True)) == [entries[1].pk]

    settings.BIGMIND_AUDIT_RETENTION_DAYS = 0  # kept forever
    AuditEntry.objects.update(at=now - timedelta(days=5000))
    assert retention_purge().audit_entries == 0
    assert AuditEntry.objects.count() == 1

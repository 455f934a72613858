"""The audit log records every kind of change, made every way it can be made: in the admin (a
superuser's session), by a command, and through the API (webhook endpoints, the only control
plane objects the API changes), each with its actor, organization, action, changed fields and,
where there is a request, its id. The worker's automatic disabling of a failing endpoint is the
system's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from events_app.models import WebhookEndpoint
from events_app.webhooks.endpoints import endpoint_create, endpoint_disable
from signals_app.audit import SECRET_MASK
from signals_app.management.commands.bootstrap_demo import DEMO_API_KEY
from signals_app.models import (
    ApiKey,
    AuditEntry,
    Organization,
    OrganizationMembership,
    Signal,
)
from signals_app.services import (
    api_key_hash,
    api_key_revoke,
    organization_get_or_create,
    signal_create,
)
from tests.conftest import Tenant, signal_form

pytestmark = pytest.mark.django_db
REQUEST_ID = "audit-test-request-1"
PUBLIC = "https://93.184.215.14/hooks"
ADMIN = "/admin/signals_app"
ENDPOINTS = "/admin/events_app/webhookendpoint"


@dataclass
class Expected:
    """What the one new entry of `action` must hold. `changes` is compared whole unless
    `changes_include` is set (then those fields only)."""

    action: str
    organization: str
    changes: dict[str, list[Any]] | None = None
    changes_include: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class World:
    tenant: Tenant
    tmp_path: Path
    admin: Client
    api: Client

    @property
    def organization(self) -> Organization:
        return self.tenant.organization

    def api_call(self, method: str, path: str, body: Any = None) -> Any:
        return self.api.generic(
            method,
            path,
            "" if body is None else json.dumps(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {self.tenant.raw_key}", "X-Request-ID": REQUEST_ID},
        )

    def admin_post(self, path: str, data: dict[str, Any]) -> Any:
        response = self.admin.post(path, data, headers={"X-Request-ID": REQUEST_ID})
        assert response.status_code == 302, _form_errors(response)
        return response

    def endpoint(self) -> WebhookEndpoint:
        return endpoint_create(organization=self.organization, url=PUBLIC, events=["*"]).endpoint


def _form_errors(response: Any) -> Any:
    context = getattr(response, "context", None) or {}
    form = context.get("adminform")
    return form.form.errors if form is not None else response.content[:500]


@pytest.fixture
def world(tenant: Tenant, tmp_path: Path) -> World:
    root = get_user_model().objects.create_superuser("root", password="pw-123456")
    admin = Client()
    admin.force_login(root)
    return World(tenant=tenant, tmp_path=tmp_path, admin=admin, api=Client())


# --- Admin ------------------------------------------------------------------------------------
def admin_organization_created(w: World) -> Expected:
    w.admin_post(f"{ADMIN}/organization/add/", {"slug": "initech", "name": "Initech"})
    return Expected(
        "organization.created", "initech", {"slug": [None, "initech"], "name": [None, "Initech"]}
    )


def admin_organization_updated(w: World) -> Expected:
    url = f"{ADMIN}/organization/{w.organization.pk}/change/"
    w.admin_post(url, {"slug": "acme", "name": "Acme Corp"})
    return Expected("organization.updated", "acme", {"name": ["acme", "Acme Corp"]})


def admin_organization_deleted(w: World) -> Expected:
    # One that owns nothing: the admin refuses to delete an organization with API keys or
    # signals (their admins allow no deletion, and Django checks every object it would take).
    empty, _ = organization_get_or_create(slug="initech", name="Initech")
    w.admin_post(f"{ADMIN}/organization/{empty.pk}/delete/", {"post": "yes"})
    assert not Organization.objects.filter(slug="initech").exists()
    return Expected(
        "organization.deleted", "initech", {"slug": ["initech", None], "name": ["Initech", None]}
    )


def _alice() -> Any:
    return get_user_model().objects.create_user("alice", password="pw-123456", is_staff=True)


def admin_membership_created(w: World) -> Expected:
    alice = _alice()
    w.admin_post(
        f"{ADMIN}/organizationmembership/add/",
        {"user": alice.pk, "organization": w.organization.pk},
    )
    return Expected(
        "membership.created", "acme", {"user": [None, "alice"], "organization": [None, "acme"]}
    )


def admin_membership_updated(w: World) -> Expected:
    membership = OrganizationMembership.objects.create(user=_alice(), organization=w.organization)
    globex, _ = organization_get_or_create(slug="globex")
    w.admin_post(
        f"{ADMIN}/organizationmembership/{membership.pk}/change/",
        {"user": membership.user_id, "organization": globex.pk},
    )
    return Expected("membership.updated", "globex", {"organization": ["acme", "globex"]})


def admin_membership_deleted(w: World) -> Expected:
    membership = OrganizationMembership.objects.create(user=_alice(), organization=w.organization)
    w.admin_post(f"{ADMIN}/organizationmembership/{membership.pk}/delete/", {"post": "yes"})
    return Expected(
        "membership.deleted", "acme", {"user": ["alice", None], "organization": ["acme", None]}
    )


def admin_membership_deleted_by_deleting_its_user(w: World) -> Expected:
    # The user's deletion cascades to the membership, which no service deletes.
    membership = OrganizationMembership.objects.create(user=_alice(), organization=w.organization)
    w.admin_post(f"/admin/auth/user/{membership.user_id}/delete/", {"post": "yes"})
    assert not OrganizationMembership.objects.exists()
    return Expected(
        "membership.deleted", "acme", {"user": ["alice", None], "organization": ["acme", None]}
    )


def _signal_form(w: World, **overrides: Any) -> dict[str, Any]:
    return signal_form(w.organization, **({"enforcement": "reject", "redact": "[]"} | overrides))


def admin_signal_created(w: World) -> Expected:
    w.admin_post(f"{ADMIN}/signal/add/", _signal_form(w, name="Docs viewed", slug="docs-viewed"))
    return Expected(
        "signal.created",
        "acme",
        changes_include={
            "slug": [None, "docs-viewed"],
            "name": [None, "Docs viewed"],
            "type": [None, "event"],
            "enforcement": [None, "reject"],
        },
    )


def admin_signal_updated(w: World) -> Expected:
    # The governance settings: enforcement and redaction rules are diffed like any field.
    signal = w.tenant.signal("docs-viewed")
    rules = [{"path": "/email", "mode": "hash"}]
    form = _signal_form(
        w, name=signal.name, slug=signal.slug, enforcement="flag", redact=json.dumps(rules)
    )
    w.admin_post(f"{ADMIN}/signal/{signal.pk}/change/", form)
    return Expected(
        "signal.updated", "acme", {"enforcement": ["reject", "flag"], "redact": [[], rules]}
    )


def admin_schema_version_created(w: World) -> Expected:
    signal = w.tenant.signal("docs-viewed")
    form = _signal_form(w, name=signal.name, slug=signal.slug, new_schema='{"type": "object"}')
    w.admin_post(f"{ADMIN}/signal/{signal.pk}/change/", form)
    return Expected("schema_version.created", "acme", {"version": [None, 1]})


def admin_api_key_created(w: World) -> Expected:
    w.admin_post(
        f"{ADMIN}/apikey/add/",
        {"organization": w.organization.pk, "name": "ci", "scope_choices": ["events:read"]},
    )
    return Expected(
        "api_key.created",
        "acme",
        changes_include={"name": [None, "ci"], "scopes": [None, ["events:read"]]},
    )


def admin_api_key_updated(w: World) -> Expected:
    w.admin_post(f"{ADMIN}/apikey/{w.tenant.api_key.pk}/change/", {"name": "renamed"})
    return Expected("api_key.updated", "acme", {"name": ["acme key", "renamed"]})


def admin_api_key_revoked(w: World) -> Expected:
    w.admin_post(f"{ADMIN}/apikey/{w.tenant.api_key.pk}/revoke/", {"post": "yes"})
    revoked_at = ApiKey.objects.get(pk=w.tenant.api_key.pk).revoked_at
    assert revoked_at is not None
    return Expected(
        "api_key.revoked",
        "acme",
        {"revoked_at": [None, revoked_at.isoformat().replace("+00:00", "Z")]},
    )


def admin_webhook_endpoint_created(w: World) -> Expected:
    form = {"organization": w.organization.pk, "url": PUBLIC, "events": ["*"], "enabled": "on"}
    w.admin_post(f"{ENDPOINTS}/add/", form)
    return Expected(
        "webhook_endpoint.created",
        "acme",
        changes_include={
            "url": [None, PUBLIC],
            "events": [None, ["*"]],
            "enabled": [None, True],
            "secret": [SECRET_MASK, SECRET_MASK],
        },
    )


def admin_webhook_endpoint_updated(w: World) -> Expected:
    endpoint = w.endpoint()
    form = {"url": PUBLIC, "events": ["*"], "description": "CRM sync", "enabled": "on"}
    w.admin_post(f"{ENDPOINTS}/{endpoint.pk}/change/", form)
    return Expected("webhook_endpoint.updated", "acme", {"description": ["", "CRM sync"]})


def admin_webhook_endpoint_deleted(w: World) -> Expected:
    endpoint = w.endpoint()
    w.admin_post(f"{ENDPOINTS}/{endpoint.pk}/delete/", {"post": "yes"})
    assert not WebhookEndpoint.objects.exists()
    return Expected("webhook_endpoint.deleted", "acme", changes_include={"url": [PUBLIC, None]})


def admin_webhook_endpoint_secret_rotated(w: World) -> Expected:
    endpoint = w.endpoint()
    w.admin_post(f"{ENDPOINTS}/{endpoint.pk}/rotate-secret/", {"post": "yes"})
    return Expected(
        "webhook_endpoint.secret_rotated", "acme", {"secret": [SECRET_MASK, SECRET_MASK]}
    )


# --- Commands ---------------------------------------------------------------------------------
def command_organization_created(w: World) -> Expected:
    call_command(
        "create_organization", "initech", "--name", "Initech", stdout=_quiet(), stderr=_quiet()
    )
    return Expected(
        "organization.created", "initech", {"slug": [None, "initech"], "name": [None, "Initech"]}
    )


def command_organization_updated(w: World) -> Expected:
    call_command(
        "create_organization", "acme", "--name", "Acme Corp", stdout=_quiet(), stderr=_quiet()
    )
    return Expected("organization.updated", "acme", {"name": ["acme", "Acme Corp"]})


def command_api_key_created(w: World) -> Expected:
    call_command("create_api_key", "--organization", "acme", "--name", "ci", stdout=_quiet())
    return Expected("api_key.created", "acme", changes_include={"name": [None, "ci"]})


def command_api_key_revoked(w: World) -> Expected:
    call_command("revoke_api_key", w.tenant.api_key.prefix, stdout=_quiet())
    return Expected("api_key.revoked", "acme", changes_include={})


def command_api_key_reinstated(w: World) -> Expected:
    call_command("bootstrap_demo", "--allow-production", stdout=_quiet())
    api_key_revoke(api_key=ApiKey.objects.get(key_hash=api_key_hash(DEMO_API_KEY)))
    call_command("bootstrap_demo", "--allow-production", stdout=_quiet())
    return Expected("api_key.reinstated", "demo", changes_include={})


SYNC_FILE = """
organization: acme
signals:
  - slug: docs-viewed
    name: Docs viewed
    type: event
    enforcement: {enforcement}
    redact: {redact}
    schemas:
      - version: 1
        schema: {{type: object}}
"""


def _sync(w: World, **values: str) -> None:
    path = w.tmp_path / "signals.yaml"
    path.write_text(SYNC_FILE.format(**({"enforcement": "reject", "redact": "[]"} | values)))
    call_command("sync_signals", str(path), stdout=_quiet())


def command_signal_created(w: World) -> Expected:
    _sync(w)
    return Expected(
        "signal.created",
        "acme",
        changes_include={"slug": [None, "docs-viewed"], "name": [None, "Docs viewed"]},
    )


def command_signal_updated(w: World) -> Expected:
    _sync(w)
    _sync(w, enforcement="flag", redact="[{path: /card/number, mode: drop}]")
    return Expected(
        "signal.updated",
        "acme",
        {
            "enforcement": ["reject", "flag"],
            "redact": [[], [{"path": "/card/number", "mode": "drop"}]],
        },
    )


def command_schema_version_created(w: World) -> Expected:
    _sync(w)
    return Expected("schema_version.created", "acme", {"version": [None, 1]})


def _quiet() -> Any:
    import io

    return io.StringIO()


# --- API (webhook endpoints) ------------------------------------------------------------------
def _api_endpoint(w: World) -> str:
    response = w.api_call("POST", "/v1/webhook-endpoints", {"url": PUBLIC, "events": ["*"]})
    assert response.status_code == 201, response.content
    return str(response.json()["data"]["id"])


def api_webhook_endpoint_created(w: World) -> Expected:
    _api_endpoint(w)
    return Expected(
        "webhook_endpoint.created",
        "acme",
        changes_include={"url": [None, PUBLIC], "secret": [SECRET_MASK, SECRET_MASK]},
    )


def api_webhook_endpoint_updated(w: World) -> Expected:
    endpoint_id = _api_endpoint(w)
    body = {"events": ["event.completed"], "enabled": False}
    assert w.api_call("PATCH", f"/v1/webhook-endpoints/{endpoint_id}", body).status_code == 200
    return Expected(
        "webhook_endpoint.updated",
        "acme",
        {"events": [["*"], ["event.completed"]], "enabled": [True, False]},
    )


def api_webhook_endpoint_deleted(w: World) -> Expected:
    endpoint_id = _api_endpoint(w)
    assert w.api_call("DELETE", f"/v1/webhook-endpoints/{endpoint_id}").status_code == 200
    return Expected("webhook_endpoint.deleted", "acme", changes_include={"url": [PUBLIC, None]})


def api_webhook_endpoint_secret_rotated(w: World) -> Expected:
    endpoint_id = _api_endpoint(w)
    path = f"/v1/webhook-endpoints/{endpoint_id}/rotate-secret"
    assert w.api_call("POST", path).status_code == 200
    return Expected(
        "webhook_endpoint.secret_rotated", "acme", {"secret": [SECRET_MASK, SECRET_MASK]}
    )


ADMIN_CASES = [
    admin_organization_created,
    admin_organization_updated,
    admin_organization_deleted,
    admin_membership_created,
    admin_membership_updated,
    admin_membership_deleted,
    admin_membership_deleted_by_deleting_its_user,
    admin_signal_created,
    admin_signal_updated,
    admin_schema_version_created,
    admin_api_key_created,
    admin_api_key_updated,
    admin_api_key_revoked,
    admin_webhook_endpoint_created,
    admin_webhook_endpoint_updated,
    admin_webhook_endpoint_deleted,
    admin_webhook_endpoint_secret_rotated,
]
COMMAND_CASES = {
    command_organization_created: "create_organization",
    command_organization_updated: "create_organization",
    command_api_key_created: "create_api_key",
    command_api_key_revoked: "revoke_api_key",
    command_api_key_reinstated: "bootstrap_demo",
    command_signal_created: "sync_signals",
    command_signal_updated: "sync_signals",
    command_schema_version_created: "sync_signals",
}
API_CASES = [
    api_webhook_endpoint_created,
    api_webhook_endpoint_updated,
    api_webhook_endpoint_deleted,
    api_webhook_endpoint_secret_rotated,
]


def _the_new_entry(before: int, action: str) -> AuditEntry:
    new = list(AuditEntry.objects.filter(pk__gt=before, action=action))
    assert len(new) == 1, [(e.action, e.changes) for e in AuditEntry.objects.filter(pk__gt=before)]
    return new[0]


def _check(entry: AuditEntry, expected: Expected) -> None:
    assert entry.action == expected.action
    assert entry.organization_slug == expected.organization
    organization = Organization.objects.filter(slug=expected.organization).first()
    if organization is not None:
        assert entry.organization_pk == organization.pk
    else:  # deleted: the entry keeps the id it had
        assert entry.organization_pk is not None
    if expected.changes is not None:
        assert entry.changes == expected.changes
    for name, pair in expected.changes_include.items():
        assert entry.changes.get(name) == pair, (name, entry.changes)
    assert entry.object_type == expected.action.split(".")[0]
    assert entry.object_id and entry.object_repr


def _baseline() -> int:
    return AuditEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


@pytest.mark.parametrize("case", ADMIN_CASES, ids=lambda case: case.__name__)
def test_a_change_made_in_the_admin_is_recorded_with_the_user_and_the_request_id(
    world: World, case: Callable[[World], Expected]
) -> None:
    before = _baseline()
    expected = case(world)
    entry = _the_new_entry(before, expected.action)
    _check(entry, expected)
    assert (entry.actor_kind, entry.actor) == ("user", "root")
    assert entry.request_id == REQUEST_ID


@pytest.mark.parametrize("case", list(COMMAND_CASES), ids=lambda case: case.__name__)
def test_a_change_made_by_a_command_is_recorded_with_the_commands_name(
    world: World, case: Callable[[World], Expected]
) -> None:
    before = _baseline()
    expected = case(world)
    entry = _the_new_entry(before, expected.action)
    _check(entry, expected)
    assert (entry.actor_kind, entry.actor) == ("command", COMMAND_CASES[case])
    assert entry.request_id == ""


@pytest.mark.parametrize("case", API_CASES, ids=lambda case: case.__name__)
def test_a_change_made_through_the_api_is_recorded_with_the_keys_prefix_and_the_request_id(
    world: World, case: Callable[[World], Expected]
) -> None:
    before = _baseline()
    expected = case(world)
    entry = _the_new_entry(before, expected.action)
    _check(entry, expected)
    assert (entry.actor_kind, entry.actor) == ("api_key", world.tenant.api_key.prefix)
    assert entry.request_id == REQUEST_ID


# Every action the services record on a person's behalf (the system's own is below).
ACTIONS = {
    "organization.created",
    "organization.updated",
    "organization.deleted",
    "membership.created",
    "membership.updated",
    "membership.deleted",
    "signal.created",
    "signal.updated",
    "schema_version.created",
    "api_key.created",
    "api_key.updated",
    "api_key.revoked",
    "api_key.reinstated",
    "webhook_endpoint.created",
    "webhook_endpoint.updated",
    "webhook_endpoint.deleted",
    "webhook_endpoint.secret_rotated",
}


def test_the_tables_make_every_action_and_the_admin_every_one_it_can() -> None:
    ways = [*ADMIN_CASES, *COMMAND_CASES, *API_CASES]
    names = [case.__name__.split("_", 1)[1].removesuffix("_by_deleting_its_user") for case in ways]
    assert {_action_of(name) for name in names} == ACTIONS
    # Only bootstrap_demo reinstates a key: no admin page or API does.
    admin_made = {_action_of(case.__name__.split("_", 1)[1]) for case in ADMIN_CASES}
    assert ACTIONS - admin_made == {"api_key.reinstated"}


def _action_of(case_name: str) -> str:
    for kind in ("organization", "membership", "signal", "schema_version", "api_key"):
        if case_name.startswith(kind + "_"):
            return f"{kind}.{case_name[len(kind) + 1 :]}"
    return f"webhook_endpoint.{case_name[len('webhook_endpoint_') :]}"


def test_a_failing_endpoint_disabled_by_the_sender_is_recorded_as_the_systems_change(
    world: World,
) -> None:
    endpoint = world.endpoint()
    now = timezone.now()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=now - timedelta(days=3))
    endpoint.refresh_from_db()
    before = _baseline()
    assert endpoint_disable(endpoint, failing_before=now - timedelta(days=1), reason="dead")
    entry = _the_new_entry(before, "webhook_endpoint.disabled")
    assert (entry.actor_kind, entry.actor, entry.organization_slug) == ("system", "", "acme")
    assert entry.changes == {"enabled": [True, False], "disabled_reason": ["", "dead"]}
    # Done already: nothing changes, nothing is recorded.
    assert not endpoint_disable(endpoint, failing_before=now, reason="dead")
    assert AuditEntry.objects.filter(action="webhook_endpoint.disabled").count() == 1


def test_an_unchanged_save_records_nothing(world: World) -> None:
    signal = world.tenant.signal("docs-viewed")
    before = _baseline()
    form = _signal_form(world, name=signal.name, slug=signal.slug)
    world.admin_post(f"{ADMIN}/signal/{signal.pk}/change/", form)
    call_command("create_organization", "acme", stdout=_quiet(), stderr=_quiet())
    assert not AuditEntry.objects.filter(pk__gt=before).exists()
    assert Signal.objects.get(pk=signal.pk).enforcement == "reject"


def test_an_endpoint_left_without_signals_by_a_signal_deletion_is_disabled_on_the_record(
    world: World,
) -> None:
    # Signals are deleted only with their organization's other objects (the admin refuses),
    # through Django's cascade: the endpoint's change is recorded in that transaction.
    signal = signal_create(organization=world.organization, name="Old", type="event", slug="old")
    signal_create(organization=world.organization, name="Keep", type="event", slug="keep")
    narrowed = endpoint_create(
        organization=world.organization, url=PUBLIC, events=["*"], signals=["old", "keep"]
    ).endpoint
    emptied = endpoint_create(
        organization=world.organization, url=PUBLIC, events=["*"], signals=["old"]
    ).endpoint
    before = _baseline()

    signal.delete()

    updated = _the_new_entry(before, "webhook_endpoint.updated")
    assert updated.object_id == narrowed.public_id
    assert updated.changes == {"signals": [["keep", "old"], ["keep"]]}
    disabled = _the_new_entry(before, "webhook_endpoint.disabled")
    assert disabled.object_id == emptied.public_id
    assert disabled.changes["signals"] == [["old"], []]
    assert disabled.changes["enabled"] == [True, False]

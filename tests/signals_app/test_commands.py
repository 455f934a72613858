"""The management commands of SPEC section 4, run as an operator or a script runs them."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import re
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count
from django.utils import timezone

from bigmind.errors import Unauthorized
from events_app.ingest.auth import api_key_authenticate
from signals_app.management.commands.bootstrap_demo import DEMO_API_KEY
from signals_app.models import ApiKey, ApiScope, Organization, SchemaVersion, Signal
from signals_app.services import api_key_create, schema_version_create
from tests.conftest import Tenant


def run(*args: str, **options: Any) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def control_plane() -> dict[str, Any]:
    """Every row sync_signals could touch, with its timestamps, to prove nothing changed."""
    return {
        "organizations": list(Organization.objects.order_by("pk").values()),
        "signals": list(Signal.objects.order_by("pk").values()),
        "versions": list(SchemaVersion.objects.order_by("pk").values()),
    }


# --- create_organization ------------------------------------------------------------------------
def test_create_organization_creates_it_and_prints_its_slug(db: None) -> None:
    out, err = run("create_organization", "acme", "--name", "Acme Inc")
    assert out == "acme\n"
    assert "created" in err
    organization = Organization.objects.get(slug="acme")
    assert organization.name == "Acme Inc"


def test_create_organization_names_it_after_its_slug_by_default(db: None) -> None:
    run("create_organization", "acme")
    assert Organization.objects.get(slug="acme").name == "acme"


def test_create_organization_twice_leaves_one_organization_and_says_it_exists(db: None) -> None:
    run("create_organization", "acme")
    out, err = run("create_organization", "acme")
    assert out == "acme\n"
    assert "exists" in err
    assert Organization.objects.filter(slug="acme").count() == 1


@pytest.mark.parametrize("slug", ["Acme", "acme corp", "acme!", ""])
def test_create_organization_refuses_a_slug_that_is_not_url_safe(db: None, slug: str) -> None:
    with pytest.raises(CommandError):
        run("create_organization", slug)
    assert not Organization.objects.exists()


# --- create_api_key -----------------------------------------------------------------------------
def test_create_api_key_prints_only_the_key_on_one_line(tenant: Tenant) -> None:
    out, err = run("create_api_key", "--organization", "acme", "--name", "ci")
    lines = out.splitlines()
    assert len(lines) == 1
    assert out == lines[0] + "\n"
    assert lines[0].startswith("sk_")
    assert len(lines[0]) >= 40
    assert lines[0].strip() == lines[0]
    assert err == ""


def test_create_api_key_stores_only_the_sha256_of_the_key(tenant: Tenant) -> None:
    out, _ = run("create_api_key", "--organization", "acme", "--name", "ci")
    raw = out.strip()
    api_key = ApiKey.objects.get(name="ci")
    assert api_key.organization == tenant.organization
    assert api_key.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw.startswith(api_key.prefix)
    assert len(api_key.prefix) < len(raw) // 2
    row = ApiKey.objects.filter(pk=api_key.pk).values().get()
    assert not [name for name, value in row.items() if raw in str(value)]


def test_create_api_key_makes_a_key_that_authenticates_for_its_organization(tenant: Tenant) -> None:
    out, _ = run("create_api_key", "--organization", "acme")
    client = api_key_authenticate(raw_key=out.strip())
    assert client.organization_id == tenant.organization.pk
    assert (
        client.api_key_id
        == ApiKey.objects.get(key_hash=hashlib.sha256(out.strip().encode()).hexdigest()).pk
    )


def test_create_api_key_makes_a_different_key_each_time(tenant: Tenant) -> None:
    keys = {run("create_api_key", "--organization", "acme")[0] for _ in range(3)}
    assert len(keys) == 3


def test_create_api_key_refuses_an_unknown_organization(db: None) -> None:
    with pytest.raises(CommandError, match="ghost"):
        run("create_api_key", "--organization", "ghost")
    assert not ApiKey.objects.exists()


def test_create_api_key_without_limits_has_every_scope_every_signal_and_no_expiry(
    tenant: Tenant,
) -> None:
    run("create_api_key", "--organization", "acme", "--name", "full")
    key = ApiKey.objects.get(name="full")
    assert key.scopes == list(ApiScope.values)
    assert key.signals is None and key.expires_at is None


def test_create_api_key_sets_scopes_signals_and_expiry(tenant: Tenant) -> None:
    tenant.signal("page-viewed")
    tenant.signal("api-calls", type="metric")
    before = timezone.now()
    out, _ = run(
        "create_api_key",
        "--organization",
        "acme",
        "--name",
        "limited",
        "--scopes",
        "records:read, events:write",
        "--signals",
        "page-viewed,api-calls",
        "--expires-in-days",
        "30",
    )
    key = ApiKey.objects.get(name="limited")
    assert key.scopes == ["events:write", "records:read"]  # in the scopes' own order
    assert key.signals == ["api-calls", "page-viewed"]
    assert key.expires_at is not None
    assert before + timedelta(days=30) <= key.expires_at <= timezone.now() + timedelta(days=30)
    client = api_key_authenticate(raw_key=out.strip())
    assert client.scopes == {"events:write", "records:read"}
    assert client.signals == {"api-calls", "page-viewed"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--scopes", "events:write,events:delete"], "Unknown scope: events:delete"),
        (["--scopes", ""], "at least one scope"),
        (["--scopes", " , "], "at least one scope"),
        (["--signals", "page-viewed,ghost"], "No such signal in organization acme: ghost"),
        (["--signals", ""], "at least one signal"),
        (["--expires-in-days", "0"], "--expires-in-days must be a whole number from 1"),
        (["--expires-in-days", "-3"], "--expires-in-days must be a whole number from 1"),
        (["--expires-in-days", "99999999"], "--expires-in-days must be a whole number from 1"),
    ],
)
def test_create_api_key_refuses_bad_limits_and_creates_nothing(
    tenant: Tenant, options: list[str], message: str
) -> None:
    tenant.signal("page-viewed")
    keys = ApiKey.objects.count()
    with pytest.raises(CommandError, match=re.escape(message)):
        run("create_api_key", "--organization", "acme", *options)
    assert ApiKey.objects.count() == keys


def test_create_api_key_refuses_another_organizations_signal(
    tenant: Tenant, make_tenant: Any
) -> None:
    make_tenant("globex").signal("globex-only")
    with pytest.raises(CommandError, match="No such signal in organization acme: globex-only"):
        run("create_api_key", "--organization", "acme", "--signals", "globex-only")
    assert not ApiKey.objects.filter(organization=tenant.organization, name="").exists()


# --- revoke_api_key -----------------------------------------------------------------------------
def test_revoke_api_key_by_prefix_revokes_it(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    api_key_authenticate(raw_key=tenant.raw_key)  # cached as valid
    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("revoke_api_key", tenant.api_key.prefix)
    assert tenant.api_key.prefix in out
    assert "revoked" in out
    tenant.api_key.refresh_from_db()
    assert tenant.api_key.revoked_at is not None
    with pytest.raises(Unauthorized):
        api_key_authenticate(raw_key=tenant.raw_key)


def test_revoke_api_key_by_full_key_revokes_it(
    tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    api_key_authenticate(raw_key=tenant.raw_key)
    with django_capture_on_commit_callbacks(execute=True):
        out, _ = run("revoke_api_key", tenant.raw_key)
    assert tenant.raw_key not in out
    tenant.api_key.refresh_from_db()
    assert tenant.api_key.revoked_at is not None
    with pytest.raises(Unauthorized):
        api_key_authenticate(raw_key=tenant.raw_key)


def test_revoke_api_key_leaves_the_other_keys_alone(make_tenant: Callable[[str], Tenant]) -> None:
    acme, globex = make_tenant("acme"), make_tenant("globex")
    run("revoke_api_key", acme.raw_key)
    assert api_key_authenticate(raw_key=globex.raw_key).organization_id == globex.organization.pk
    assert list(ApiKey.objects.filter(revoked_at__isnull=False)) == [acme.api_key]


def test_revoke_api_key_twice_says_it_was_already_revoked(tenant: Tenant) -> None:
    run("revoke_api_key", tenant.api_key.prefix)
    revoked_at = ApiKey.objects.get(pk=tenant.api_key.pk).revoked_at
    out, _ = run("revoke_api_key", tenant.api_key.prefix)
    assert "already revoked" in out
    assert ApiKey.objects.get(pk=tenant.api_key.pk).revoked_at == revoked_at


def test_revoke_api_key_refuses_a_prefix_shared_by_two_keys(tenant: Tenant) -> None:
    api_key_create(organization=tenant.organization, raw_key="sk_SamePfx1" + "a" * 30)
    api_key_create(organization=tenant.organization, raw_key="sk_SamePfx1" + "b" * 30)
    with pytest.raises(CommandError, match="full key"):
        run("revoke_api_key", "sk_SamePfx1")
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()


def test_revoke_api_key_by_full_key_works_when_the_prefix_is_shared(tenant: Tenant) -> None:
    api_key_create(organization=tenant.organization, raw_key="sk_SamePfx1" + "a" * 30)
    second, _ = api_key_create(organization=tenant.organization, raw_key="sk_SamePfx1" + "b" * 30)
    run("revoke_api_key", "sk_SamePfx1" + "b" * 30)
    assert list(ApiKey.objects.filter(revoked_at__isnull=False)) == [second]


@pytest.mark.parametrize("name", ["sk_NoSuchKy", "sk_short", "sk_" + "z" * 40, "nonsense"])
def test_revoke_api_key_refuses_a_prefix_or_key_that_matches_nothing(
    tenant: Tenant, name: str
) -> None:
    with pytest.raises(CommandError):
        run("revoke_api_key", name)
    assert not ApiKey.objects.filter(revoked_at__isnull=False).exists()


# --- sync_signals -------------------------------------------------------------------------------
# Exactly the shape SPEC section 4 shows, comments included.
SPEC_YAML = """\
organization: acme                 # slug; created if missing
signals:
  - slug: api-calls
    name: API calls
    type: metric                   # event | metric | state
    description: Calls to the public API
    ai_instructions: A rising trend means expansion potential.
    rate_limit_per_minute: 1000    # optional override of the type default
    active: true                   # optional, default true
    compatibility: backward        # optional: none | backward | forward | full
    aggregation: sum               # metric only: sum | count | avg | min | max
    period: day                    # metric only: hour | day | week | month
    value_field: value             # metric only, default "value"
    schemas:                       # optional; explicit, numbered from 1
      - version: 1
        schema: {type: object, required: [value], properties: {value: {type: number}}}
"""

V1 = {"type": "object", "required": ["value"], "properties": {"value": {"type": "number"}}}
# A backward-compatible step (api-calls is `backward`). Adding a constrained property to this
# open schema would not be: old data may already hold anything under that name.
V2 = {
    "type": "object",
    "required": ["value"],
    "properties": {"value": {"type": "number", "description": "Calls in the period"}},
}


def document() -> dict[str, Any]:
    """The spec's document plus one signal of each other type."""
    return {
        "organization": "acme",
        "signals": [
            {
                "slug": "api-calls",
                "name": "API calls",
                "type": "metric",
                "description": "Calls to the public API",
                "ai_instructions": "A rising trend means expansion potential.",
                "rate_limit_per_minute": 1000,
                "active": True,
                "compatibility": "backward",
                "aggregation": "sum",
                "period": "day",
                "value_field": "value",
                "schemas": [{"version": 1, "schema": copy.deepcopy(V1)}],
            },
            {"slug": "page-view", "name": "Page view", "type": "event"},
            {
                "slug": "health",
                "name": "Health",
                "type": "state",
                "schemas": [{"version": 1, "schema": {"type": "object", "required": ["state"]}}],
            },
        ],
    }


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., str]:
    def write(doc: Any, name: str = "signals.json") -> str:
        path = tmp_path / name
        if isinstance(doc, str):
            path.write_text(doc, encoding="utf-8")
        elif name.endswith(".json"):
            path.write_text(json.dumps(doc), encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return str(path)

    return write


def sync(path: str) -> list[str]:
    out, _ = run("sync_signals", path)
    return out.splitlines()


def test_sync_signals_applies_the_yaml_example_of_the_spec(
    db: None, write: Callable[..., str]
) -> None:
    lines = sync(write(SPEC_YAML, "signals.yaml"))
    assert lines == ["organization created", "created api-calls", "added schema api-calls v1"]
    signal = Signal.objects.get(organization__slug="acme", slug="api-calls")
    assert {
        name: getattr(signal, name)
        for name in (
            "name",
            "type",
            "description",
            "ai_instructions",
            "rate_limit_per_minute",
            "active",
            "compatibility",
            "aggregation",
            "period",
            "value_field",
        )
    } == {
        "name": "API calls",
        "type": "metric",
        "description": "Calls to the public API",
        "ai_instructions": "A rising trend means expansion potential.",
        "rate_limit_per_minute": 1000,
        "active": True,
        "compatibility": "backward",
        "aggregation": "sum",
        "period": "day",
        "value_field": "value",
    }
    assert [(v.version, v.schema) for v in signal.schema_versions.all()] == [(1, V1)]


def test_sync_signals_applies_a_json_file_of_the_same_shape(
    db: None, write: Callable[..., str]
) -> None:
    lines = sync(write(document(), "signals.json"))
    assert lines == [
        "organization created",
        "created api-calls",
        "created page-view",
        "created health",
        "added schema api-calls v1",
        "added schema health v1",
    ]
    assert sorted(Signal.objects.filter(organization__slug="acme").values_list("slug", "type")) == [
        ("api-calls", "metric"),
        ("health", "state"),
        ("page-view", "event"),
    ]
    page_view = Signal.objects.get(slug="page-view")
    assert (page_view.active, page_view.compatibility, page_view.rate_limit_per_minute) == (
        True,
        "none",
        None,
    )
    assert not page_view.schema_versions.exists()


def test_sync_signals_reads_yaml_from_stdin(db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(SPEC_YAML))
    assert "created api-calls" in sync("-")
    assert Signal.objects.filter(slug="api-calls").exists()


def test_sync_signals_uses_an_existing_organization(
    tenant: Tenant, write: Callable[..., str]
) -> None:
    lines = sync(write(document()))
    assert "organization created" not in lines
    assert Organization.objects.count() == 1
    assert Signal.objects.filter(organization=tenant.organization).count() == 3


@pytest.mark.parametrize("name", ["signals.yaml", "signals.json"])
def test_sync_signals_a_second_time_changes_nothing_and_says_unchanged(
    db: None, write: Callable[..., str], name: str
) -> None:
    path = write(document(), name)
    sync(path)
    before = control_plane()
    assert sync(path) == ["unchanged api-calls", "unchanged page-view", "unchanged health"]
    after = control_plane()
    assert [{k: v for k, v in row.items() if k != "updated_at"} for row in after["signals"]] == [
        {k: v for k, v in row.items() if k != "updated_at"} for row in before["signals"]
    ]
    assert after["versions"] == before["versions"]
    assert after["organizations"] == before["organizations"]


def test_sync_signals_a_second_time_does_not_touch_unchanged_signals(
    db: None, write: Callable[..., str]
) -> None:
    path = write(document())
    sync(path)
    before = control_plane()
    sync(path)
    assert control_plane() == before


def test_sync_signals_updates_changed_settings(db: None, write: Callable[..., str]) -> None:
    doc = document()
    sync(write(doc))
    doc["signals"][0].update(
        description="Calls, all of them", rate_limit_per_minute=50, period="week"
    )
    doc["signals"][1].update(active=False, ai_instructions="Ignore bots.")
    lines = sync(write(doc))
    assert lines == ["updated api-calls", "updated page-view", "unchanged health"]
    api_calls = Signal.objects.get(slug="api-calls")
    assert (api_calls.description, api_calls.rate_limit_per_minute, api_calls.period) == (
        "Calls, all of them",
        50,
        "week",
    )
    page_view = Signal.objects.get(slug="page-view")
    assert (page_view.active, page_view.ai_instructions) == (False, "Ignore bots.")
    assert api_calls.schema_versions.count() == 1


def test_sync_signals_resets_a_setting_the_file_no_longer_gives_to_its_default(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    doc["signals"][1].update(active=False, rate_limit_per_minute=7, description="Pages")
    sync(write(doc))
    for name in ("active", "rate_limit_per_minute", "description"):
        del doc["signals"][1][name]
    assert "updated page-view" in sync(write(doc))
    page_view = Signal.objects.get(slug="page-view")
    assert (page_view.active, page_view.rate_limit_per_minute, page_view.description) == (
        True,
        None,
        "",
    )


def test_sync_signals_adds_a_new_schema_version(db: None, write: Callable[..., str]) -> None:
    doc = document()
    sync(write(doc))
    doc["signals"][0]["schemas"].append({"version": 2, "schema": V2})
    lines = sync(write(doc))
    assert "added schema api-calls v2" in lines
    assert "added schema api-calls v1" not in lines
    versions = SchemaVersion.objects.filter(signal__slug="api-calls").order_by("version")
    assert [(v.version, v.schema) for v in versions] == [(1, V1), (2, V2)]


def test_sync_signals_adds_a_schema_to_a_signal_that_had_none(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    sync(write(doc))
    doc["signals"][1]["schemas"] = [{"version": 1, "schema": {"type": "object"}}]
    assert "added schema page-view v1" in sync(write(doc))


def test_sync_signals_refuses_to_alter_an_existing_schema_version_and_changes_nothing(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    sync(write(doc))
    before = control_plane()
    # Everything the file would change comes before the offending signal, so it would have
    # been written already if the command were not all-or-nothing.
    doc["signals"].insert(0, {"slug": "brand-new", "name": "Brand new", "type": "event"})
    doc["signals"][2].update(description="changed")  # page-view
    doc["signals"][3]["schemas"].append({"version": 2, "schema": {"type": "object"}})  # health
    altered = copy.deepcopy(V1)
    altered["properties"]["value"]["type"] = "integer"
    api_calls = doc["signals"].pop(1)
    api_calls["schemas"][0]["schema"] = altered
    api_calls["description"] = "changed too"
    doc["signals"].append(api_calls)
    with pytest.raises(CommandError, match=r"api-calls.*version 1"):
        sync(write(doc))
    assert control_plane() == before
    assert not Signal.objects.filter(slug="brand-new").exists()
    assert Signal.objects.get(slug="page-view").description == ""


def test_sync_signals_refuses_an_invalid_schema_without_creating_the_organization(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    doc["signals"][0]["schemas"] = [{"version": 1, "schema": {"type": "objekt"}}]
    with pytest.raises(CommandError, match="draft 2020-12"):
        sync(write(doc))
    assert control_plane() == {"organizations": [], "signals": [], "versions": []}


def test_sync_signals_refuses_an_invalid_schema_and_changes_nothing(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    sync(write(doc))
    before = control_plane()
    doc["signals"][1]["description"] = "changed"
    doc["signals"][2]["schemas"].append(
        {"version": 2, "schema": {"type": "object", "required": "state"}}
    )
    with pytest.raises(CommandError):
        sync(write(doc))
    assert control_plane() == before


def test_sync_signals_refuses_a_schema_with_a_remote_reference(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    doc["signals"][0]["schemas"][0]["schema"] = {"$ref": "https://example.com/schema.json"}
    with pytest.raises(CommandError, match="local references"):
        sync(write(doc))
    assert not Organization.objects.exists()


@pytest.mark.parametrize("missing", ["aggregation", "period"])
def test_sync_signals_refuses_a_metric_without_aggregation_or_period(
    db: None, write: Callable[..., str], missing: str
) -> None:
    doc = document()
    del doc["signals"][0][missing]
    with pytest.raises(CommandError, match=missing):
        sync(write(doc))
    assert control_plane() == {"organizations": [], "signals": [], "versions": []}


@pytest.mark.parametrize(
    "versions",
    [[1, 3], [2], [1, 2, 2], [0, 1], ["1"]],
    ids=["gap", "no-version-1", "repeated", "zero", "string"],
)
def test_sync_signals_refuses_schema_versions_not_numbered_1_2_3(
    db: None, write: Callable[..., str], versions: list[Any]
) -> None:
    doc = document()
    doc["signals"][0]["schemas"] = [{"version": n, "schema": V1} for n in versions]
    with pytest.raises(CommandError, match="numbered"):
        sync(write(doc))
    assert control_plane() == {"organizations": [], "signals": [], "versions": []}


def test_sync_signals_refuses_a_file_that_skips_a_version_the_database_has(
    db: None, write: Callable[..., str]
) -> None:
    doc = document()
    sync(write(doc))
    before = control_plane()
    doc["signals"][0]["schemas"] = [{"version": 2, "schema": V2}]
    with pytest.raises(CommandError):
        sync(write(doc))
    assert control_plane() == before


def test_sync_signals_refuses_a_version_the_database_does_not_have_next(
    db: None, write: Callable[..., str]
) -> None:
    # Version 2 was added outside the file (in the admin, say); the file's version 2 is another.
    doc = document()
    sync(write(doc))
    schema_version_create(signal=Signal.objects.get(slug="api-calls"), schema={"type": "object"})
    before = control_plane()
    doc["signals"][0]["schemas"].append({"version": 2, "schema": V2})
    with pytest.raises(CommandError, match="version 2"):
        sync(write(doc))
    assert control_plane() == before


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"agregation": "sum"}, "unknown fields"),
        ({"type": "gauge"}, "type"),
        ({"compatibility": "sideways"}, "compatibility"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"slug": "Not A Slug"}, "slug"),
        ({"schemas": {"version": 1}}, "list"),
    ],
)
def test_sync_signals_refuses_a_bad_signal_and_changes_nothing(
    db: None, write: Callable[..., str], change: dict[str, Any], match: str
) -> None:
    doc = document()
    doc["signals"][2].update(change)
    with pytest.raises(CommandError, match=match):
        sync(write(doc))
    assert control_plane() == {"organizations": [], "signals": [], "versions": []}


def test_sync_signals_refuses_a_slug_listed_twice(db: None, write: Callable[..., str]) -> None:
    doc = document()
    doc["signals"].append(copy.deepcopy(doc["signals"][1]))
    with pytest.raises(CommandError, match="twice"):
        sync(write(doc))


@pytest.mark.parametrize(
    "text",
    [
        "- just\n- a list\n",
        "organization: [unclosed\n",
        "signals: []\n",
        "organization: acme\nextra: 1\n",
    ],
    ids=["list", "broken-yaml", "no-organization", "unknown-top-level-field"],
)
def test_sync_signals_refuses_a_file_that_is_not_a_signals_document(
    db: None, write: Callable[..., str], text: str
) -> None:
    with pytest.raises(CommandError):
        sync(write(text, "signals.yaml"))
    assert not Organization.objects.exists()


def test_sync_signals_refuses_broken_json(db: None, write: Callable[..., str]) -> None:
    with pytest.raises(CommandError, match="not valid"):
        sync(write('{"organization": "acme", ', "signals.json"))


def test_sync_signals_refuses_a_file_that_does_not_exist(db: None, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="Cannot read"):
        sync(str(tmp_path / "missing.yaml"))


# --- bootstrap_demo -----------------------------------------------------------------------------
def test_bootstrap_demo_refuses_to_run_with_debug_off(db: None, settings: Any) -> None:
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        run("bootstrap_demo")
    assert not Organization.objects.exists()
    assert not ApiKey.objects.exists()
    assert not get_user_model().objects.exists()


def test_bootstrap_demo_runs_with_debug_off_when_production_is_allowed(
    db: None, settings: Any
) -> None:
    settings.DEBUG = False
    run("bootstrap_demo", "--allow-production")
    assert Organization.objects.filter(slug="demo").exists()


def test_bootstrap_demo_twice_leaves_one_of_everything(
    db: None, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.DEBUG = True
    with django_capture_on_commit_callbacks(execute=True):
        run("bootstrap_demo")
        out, _ = run("bootstrap_demo")
    assert DEMO_API_KEY in out
    assert list(Organization.objects.values_list("slug", flat=True)) == ["demo"]
    demo = Organization.objects.get(slug="demo")
    by_type = dict(
        Signal.objects.filter(organization=demo).values_list("type").annotate(n=Count("id"))
    )
    assert by_type == {"event": 1, "metric": 1, "state": 1}
    assert SchemaVersion.objects.filter(signal__organization=demo).count() == 2
    keys = ApiKey.objects.filter(organization=demo)
    assert keys.count() == 1
    assert keys.get().revoked_at is None
    assert api_key_authenticate(raw_key=DEMO_API_KEY).organization_id == demo.pk
    admin = get_user_model().objects.get()
    assert admin.is_staff and admin.is_superuser and admin.is_active
    assert admin.check_password("admin")


def test_bootstrap_demo_makes_the_demo_signals_usable_for_ingest(db: None, settings: Any) -> None:
    settings.DEBUG = True
    run("bootstrap_demo")
    metric = Signal.objects.get(organization__slug="demo", type="metric")
    assert (metric.aggregation, metric.period, metric.value_field) == ("sum", "day", "value")
    assert all(signal.active for signal in Signal.objects.all())


def test_bootstrap_demo_reinstates_a_revoked_demo_key_in_the_database(
    db: None, settings: Any
) -> None:
    settings.DEBUG = True
    run("bootstrap_demo")
    run("revoke_api_key", DEMO_API_KEY)
    run("bootstrap_demo")
    assert ApiKey.objects.get().revoked_at is None


def test_bootstrap_demo_reinstates_a_revoked_demo_key_for_authentication(
    db: None, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.DEBUG = True
    with django_capture_on_commit_callbacks(execute=True):
        run("bootstrap_demo")
        run("revoke_api_key", DEMO_API_KEY)
    with pytest.raises(Unauthorized):
        api_key_authenticate(raw_key=DEMO_API_KEY)  # caches the key as revoked
    with django_capture_on_commit_callbacks(execute=True):
        run("bootstrap_demo")
    assert (
        api_key_authenticate(raw_key=DEMO_API_KEY).organization_id == Organization.objects.get().pk
    )


# --- sync_signals: YAML that JSON cannot hold ------------------------------------------------
def _sync(tmp_path: Path, text: str) -> str:
    path = tmp_path / "signals.yaml"
    path.write_text(text, encoding="utf-8")
    from io import StringIO

    out = StringIO()
    call_command("sync_signals", str(path), stdout=out)
    return out.getvalue()


def test_sync_refuses_yaml_values_json_cannot_hold(db, tmp_path: Path) -> None:
    text = "organization: acme\nsignals:\n  - slug: s\n    type: event\n    schemas:\n      - version: 1\n        schema: {default: 2024-01-01}\n"
    with pytest.raises(CommandError, match="quote dates"):
        _sync(tmp_path, text)


def test_sync_with_integer_keys_is_stable_on_a_second_run(db, tmp_path: Path) -> None:
    text = "organization: acme\nsignals:\n  - slug: s\n    type: event\n    schemas:\n      - version: 1\n        schema: {properties: {404: {type: string}}}\n"
    _sync(tmp_path, text)
    assert "unchanged s" in _sync(tmp_path, text)


def test_sync_takes_a_null_description_as_empty(db, tmp_path: Path) -> None:
    _sync(
        tmp_path,
        "organization: acme\nsignals:\n  - slug: s\n    type: event\n    description: null\n",
    )
    assert Signal.objects.get(slug="s").description == ""

"""A signal's governance settings (enforcement, redaction rules): how they are checked and set,
by the services, `sync_signals` and the admin alike."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client

from bigmind.errors import BadRequest
from signals_app.models import Organization, Signal
from signals_app.redaction_rules import json_pointer_tokens, redaction_rules_check
from signals_app.selectors import (
    ApiKeyRef,
    api_key_cache_key,
    lookups,
    signal_get_active_ref,
)
from signals_app.services import signal_create, signal_update
from tests.conftest import ApiClient, Tenant, signal_form


# --- the rules -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("pointer", "tokens"),
    [
        ("/email", ["email"]),
        ("/card/number", ["card", "number"]),
        ("/items/0", ["items", "0"]),
        ("/a~1b", ["a/b"]),
        ("/m~0n", ["m~n"]),
        ("/~01", ["~1"]),  # ~0 decoded after ~1: "~01" is "~" then "1", not "/"
        ("/", [""]),
    ],
)
def test_a_json_pointer_is_split_and_unescaped_as_rfc_6901_says(
    pointer: str, tokens: list[str]
) -> None:
    assert json_pointer_tokens(pointer) == tokens


def test_rules_are_normalised_to_path_and_mode() -> None:
    rules = [{"mode": "hash", "path": "/email"}, {"path": "/card/number", "mode": "drop"}]
    assert redaction_rules_check(rules) == [
        {"path": "/email", "mode": "hash"},
        {"path": "/card/number", "mode": "drop"},
    ]
    assert redaction_rules_check(None) == []


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"path": "/email", "mode": "hash"}, "redact must be a list"),
        ([{"path": "/email"}], "redact[0] must be an object with exactly path and mode"),
        ([{"path": "/e", "mode": "hash", "x": 1}], "exactly path and mode"),
        (["/email"], "redact[0] must be an object"),
        ([{"path": "email", "mode": "hash"}], "redact[0].path is not a JSON Pointer"),
        ([{"path": "", "mode": "hash"}], "redact[0].path must be a JSON Pointer of 1 to 500"),
        ([{"path": "/" + "a" * 500, "mode": "hash"}], "of 1 to 500 characters"),
        ([{"path": 5, "mode": "hash"}], "redact[0].path must be a JSON Pointer"),
        ([{"path": "/a~2", "mode": "hash"}], "'~' must be written ~0"),
        # Removing the valid escapes first would leave "~1" here and let it through.
        ([{"path": "/a~~01", "mode": "hash"}], "'~' must be written ~0"),
        ([{"path": "/a~", "mode": "hash"}], "'~' must be written ~0"),
        ([{"path": "/a\x00", "mode": "hash"}], "must not contain NUL"),
        ([{"path": "/a", "mode": "mask"}], "redact[0].mode must be one of drop, hash: 'mask'"),
        (
            [{"path": "/a", "mode": "drop"}, {"path": "/a", "mode": "hash"}],
            "redact[1].path /a is named twice",
        ),
        ([{"path": f"/f{i}", "mode": "drop"} for i in range(51)], "at most 50 rules"),
    ],
)
def test_a_malformed_rule_is_refused_naming_its_position(rules: Any, message: str) -> None:
    with pytest.raises(BadRequest) as caught:
        redaction_rules_check(rules)
    assert message in caught.value.message


# --- the services ----------------------------------------------------------------------------
@pytest.fixture
def org(db: None) -> Organization:
    return Organization.objects.create(slug="acme", name="Acme")


def test_a_signal_is_made_in_reject_mode_without_rules_by_default(org: Organization) -> None:
    signal = signal_create(organization=org, name="Signup", type="event")
    assert (signal.enforcement, signal.redact) == ("reject", [])


def test_an_unknown_enforcement_mode_is_refused(org: Organization) -> None:
    with pytest.raises(BadRequest, match="enforcement must be one of reject, flag: 'warn'"):
        signal_create(organization=org, name="Signup", type="event", enforcement="warn")


def test_the_cached_reference_carries_the_settings_and_follows_a_change(
    org: Organization, django_capture_on_commit_callbacks: Any
) -> None:
    signal = signal_create(organization=org, name="Signup", type="event", slug="signup")
    assert signal_get_active_ref(organization_id=org.pk, slug="signup").enforcement == "reject"
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(
            signal=signal, enforcement="flag", redact=[{"path": "/email", "mode": "hash"}]
        )
    ref = signal_get_active_ref(organization_id=org.pk, slug="signup")
    assert ref is not None
    assert (ref.enforcement, ref.redact) == ("flag", (("/email", "hash"),))


# --- sync_signals ----------------------------------------------------------------------------
def sync(tmp_path: Path, signals: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump({"organization": "acme", "signals": signals}), "utf-8")
    out = io.StringIO()
    call_command("sync_signals", str(path), stdout=out)
    return out.getvalue().splitlines()


def test_sync_signals_sets_enforcement_and_redaction_and_a_file_without_them_resets_them(
    db: None, tmp_path: Path
) -> None:
    governed = {
        "slug": "signup",
        "type": "event",
        "enforcement": "flag",
        "redact": [{"path": "/email", "mode": "hash"}, {"path": "/card/number", "mode": "drop"}],
    }
    assert sync(tmp_path, [governed]) == ["organization created", "created signup"]
    signal = Signal.objects.get(slug="signup")
    assert signal.enforcement == "flag"
    assert signal.redact == governed["redact"]

    assert sync(tmp_path, [governed]) == ["unchanged signup"]
    # The file is the source of truth: leaving the settings out means their defaults.
    assert sync(tmp_path, [{"slug": "signup", "type": "event"}]) == ["updated signup"]
    signal.refresh_from_db()
    assert (signal.enforcement, signal.redact) == ("reject", [])


def test_sync_signals_refuses_a_bad_rule_and_changes_nothing(db: None, tmp_path: Path) -> None:
    bad = {"slug": "signup", "type": "event", "redact": [{"path": "/email", "mode": "mask"}]}
    with pytest.raises(CommandError, match=r"redact\[0\]\.mode must be one of drop, hash"):
        sync(tmp_path, [bad])
    assert not Organization.objects.exists()


# --- the admin -------------------------------------------------------------------------------
def test_staff_set_enforcement_and_rules_in_the_signal_form(
    staff: Client, org: Organization
) -> None:
    rules = [{"path": "/email", "mode": "hash"}]
    response = staff.post(
        "/admin/signals_app/signal/add/",
        signal_form(org, enforcement="flag", redact=json.dumps(rules)),
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    signal = Signal.objects.get()
    assert (signal.enforcement, signal.redact) == ("flag", rules)

    page = staff.get(f"/admin/signals_app/signal/{signal.pk}/change/").content.decode()
    assert "Governance" in page
    assert "/email" in page


def test_the_signal_form_shows_a_bad_rule_beside_the_rules_field(
    staff: Client, org: Organization
) -> None:
    response = staff.post(
        "/admin/signals_app/signal/add/",
        signal_form(org, redact=json.dumps([{"path": "email", "mode": "hash"}])),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "redact[0].path is not a JSON Pointer into data" in errors["redact"][0]
    assert not Signal.objects.exists()


def test_a_form_posted_without_the_settings_keeps_the_signals_own(
    staff: Client, org: Organization
) -> None:
    rules = [{"path": "/email", "mode": "drop"}]
    signal = signal_create(
        organization=org, name="Signup", type="event", enforcement="flag", redact=rules
    )
    form = signal_form(org, name="Signup", slug=signal.slug)
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    signal.refresh_from_db()
    assert (signal.enforcement, signal.redact) == ("flag", rules)


# --- a deploy --------------------------------------------------------------------------------
def test_a_key_cached_by_the_release_before_scopes_keeps_full_access(
    tenant: Tenant, api: ApiClient
) -> None:
    # What the previous release cached: a ref pickled without the fields added since, which a
    # new process would read as their defaults (no scope at all) if it shared the key name.
    old = ApiKeyRef(id=tenant.api_key.pk, organization_id=tenant.organization.pk, revoked=False)
    for added in ("scopes", "signals", "expires_at"):
        del old.__dict__[added]
    lookups.fill(f"apikey:{tenant.api_key.key_hash}", pickle.loads(pickle.dumps(old)), 300)  # noqa: S301

    response = api.client.get("/v1/signals", headers={"Authorization": f"Bearer {api.raw_key}"})

    assert response.status_code == 200, response.content
    assert api_key_cache_key(tenant.api_key.key_hash) != f"apikey:{tenant.api_key.key_hash}"

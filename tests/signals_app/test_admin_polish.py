"""Issue #12, admin items 7 and 9 for the signals app: the site is branded Bigmind Signals,
labels and help texts read as written by a person, one date style, errors beside their field,
an API key shown once by POST/redirect/GET, a Revoke button, a status filter, and plurals."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.db import models
from django.test import Client
from django.utils import timezone

from signals_app.models import ApiKey, Organization, OrganizationMembership, SchemaVersion, Signal
from signals_app.services import schema_version_create
from tests.conftest import KEY_FORM, Tenant, signal_form
from tests.signals_app.test_admin_permissions import staff_user
from tests.signals_app.test_admin_ux import store_event

ADD_SIGNAL = "/admin/signals_app/signal/add/"
KEYS = "/admin/signals_app/apikey/"
SCHEMA = {"type": "object", "properties": {"page": {"type": "string"}}}
ROOT = Path(__file__).resolve().parents[2]


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {k: list(v) for k, v in response.context["adminform"].form.errors.items()}


# --- Branding ---------------------------------------------------------------------------------
def test_the_admin_is_branded_bigmind_signals_and_view_site_is_the_dashboard(
    staff: Client,
) -> None:
    page = staff.get("/admin/").content.decode()
    assert "Django administration" not in page and "Django site admin" not in page
    assert re.search(r'<div id="site-name"><a href="/admin/">Bigmind Signals</a>', page)
    assert "<title>Administration | Bigmind Signals</title>" in page
    assert '<a href="/admin/dashboard/">View site</a>' in page
    # The index is led by the dashboard, before the app list.
    assert page.index('id="bigmind-dashboard"') < page.index('class="app-signals_app')
    assert 'href="/admin/dashboard/">Open the dashboard</a>' in page


def test_the_sections_are_named_signals_and_events(staff: Client) -> None:
    page = staff.get("/admin/").content.decode()
    assert "control plane" not in page and "data plane" not in page
    assert re.search(r'<a href="/admin/signals_app/" class="section"[^>]*>Signals</a>', page)
    assert re.search(r'<a href="/admin/events_app/" class="section"[^>]*>Events</a>', page)


# --- Labels and help texts --------------------------------------------------------------------
@pytest.mark.parametrize("app_label", ["signals_app", "events_app"])
def test_no_label_or_help_text_shows_markdown_or_a_lowercased_acronym(app_label: str) -> None:
    for model in apps.get_app_config(app_label).get_models():
        for field in model._meta.get_fields():
            if not isinstance(field, models.Field):
                continue
            where = f"{model.__name__}.{field.name}"
            assert "`" not in str(field.help_text), where
            label = str(field.verbose_name)
            # Django capitalises the first letter only: "ai instructions" -> "Ai instructions".
            assert not re.search(r"\b(ai|api|id|crm|url|json)\b", label), f"{where}: {label!r}"


def test_the_signal_form_labels_and_help_texts(staff: Client, tenant: Tenant) -> None:
    page = staff.get(ADD_SIGNAL).content.decode()
    assert ">AI instructions:</label>" in page
    assert "Ai instructions" not in page
    help_texts = re.findall(r'<div class="help"[^>]*>\s*<div>(.*?)</div>', page, re.S)
    assert help_texts, "no help texts found"
    assert not [text for text in help_texts if "`" in text]
    assert "<code>data</code>" in page


# --- Forms --------------------------------------------------------------------------------------
def test_add_schema_version_is_an_empty_box(staff: Client, tenant: Tenant) -> None:
    signal = tenant.signal("docs", schema=SCHEMA)
    for url in (ADD_SIGNAL, f"/admin/signals_app/signal/{signal.pk}/change/"):
        page = staff.get(url).content.decode()
        box = re.search(r'<textarea name="new_schema"[^>]*>(.*?)</textarea>', page, re.S)
        assert box is not None, url
        assert box.group(1).strip() == "", (url, box.group(1))


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"type": "metric", "period": "day"},
            "aggregation",
            "A metric signal needs an aggregation.",
        ),
        ({"type": "metric", "aggregation": "sum"}, "period", "A metric signal needs a period."),
        ({"type": "event", "period": "day"}, "period", "Applies to metric signals only."),
        ({"rate_limit_per_minute": "0"}, "rate_limit_per_minute", "greater than or equal to 1"),
    ],
    ids=["metric-without-aggregation", "metric-without-period", "event-with-period", "zero-limit"],
)
def test_a_settings_error_is_beside_its_field_and_no_constraint_name_shows(
    staff: Client, tenant: Tenant, overrides: dict, field: str, message: str
) -> None:
    response = staff.post(ADD_SIGNAL, signal_form(tenant.organization, **overrides))
    errors = form_errors(response)
    assert list(errors) == [field], errors  # nothing at the top of the form
    assert message in errors[field][0]
    page = response.content.decode()
    assert "Constraint" not in page and "is violated" not in page
    assert Signal.objects.count() == 0


def test_every_check_constraint_has_its_own_message() -> None:
    # The last line of defence: a constraint reached by model validation reads as a sentence.
    for app_label in ("signals_app", "events_app"):
        for model in apps.get_app_config(app_label).get_models():
            for constraint in model._meta.constraints:
                if isinstance(constraint, models.CheckConstraint) and app_label == "signals_app":
                    message = constraint.get_violation_error_message()
                    assert "is violated" not in message, constraint.name


# --- API keys: shown once, by POST/redirect/GET -----------------------------------------------
def created_page(staff: Client, organization: Organization, name: str = "backend") -> Any:
    response = staff.post(
        f"{KEYS}add/", {"organization": organization.pk, "name": name, **KEY_FORM}
    )
    assert response.status_code == 302, response.content.decode()[:500]
    return response


def test_the_new_key_is_shown_once_on_a_redirected_page(staff: Client, tenant: Tenant) -> None:
    before = ApiKey.objects.count()
    response = created_page(staff, tenant.organization)
    key = ApiKey.objects.get(name="backend")
    assert response["Location"] == f"{KEYS}{key.pk}/created/"
    assert "sk_" not in response.content.decode()
    # Waiting for that page: sealed in the session, its pad in a cookie for that page only.
    sealed = staff.session["bigmind_new_api_keys"][str(key.pk)]
    pad = response.cookies["bigmind_new_api_key_pad"]
    assert pad["path"] == f"{KEYS}{key.pk}/created/"
    assert pad["httponly"] and pad["samesite"] == "Strict"
    assert key.prefix not in sealed and key.prefix not in pad.value

    first = staff.get(response["Location"])
    assert first.status_code == 200
    assert "no-store" in first["Cache-Control"]
    raw = re.search(r'id="new-api-key"[^>]*value="(sk_[A-Za-z0-9_\-]+)"', first.content.decode())
    assert raw is not None and raw.group(1).startswith(key.prefix)
    assert "bigmind_new_api_keys" not in staff.session  # taken out as it was shown

    # A reload: no secret, nothing created.
    for _ in range(2):
        again = staff.get(response["Location"])
        assert again.status_code == 200
        page = again.content.decode()
        assert raw.group(1) not in page
        assert 'id="new-api-key"' not in page
        assert "cannot be shown again" in page
    assert ApiKey.objects.count() == before + 1
    assert not staff.cookies["bigmind_new_api_key_pad"].value  # deleted


def test_the_session_alone_does_not_show_the_key(staff: Client, tenant: Tenant) -> None:
    response = created_page(staff, tenant.organization)
    del staff.cookies["bigmind_new_api_key_pad"]  # say, the session used from elsewhere
    page = staff.get(response["Location"]).content.decode()
    assert 'id="new-api-key"' not in page and "cannot be shown again" in page
    assert "bigmind_new_api_keys" not in staff.session  # and it is gone


def test_the_created_page_of_another_organizations_key_is_not_found(
    tenant: Tenant, make_tenant: Any, client: Client
) -> None:
    other = make_tenant("globex")
    client.force_login(staff_user("scoped", tenant.organization))
    assert client.get(f"{KEYS}{other.api_key.pk}/created/").status_code == 404
    assert client.get(f"{KEYS}{other.api_key.pk}/revoke/").status_code == 404
    assert client.post(f"{KEYS}{other.api_key.pk}/revoke/", {"post": "yes"}).status_code == 404
    other.api_key.refresh_from_db()
    assert other.api_key.revoked_at is None


def test_a_key_is_revoked_from_its_own_page_after_a_confirmation(
    staff: Client, tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    key = tenant.api_key
    change = staff.get(f"{KEYS}{key.pk}/change/").content.decode()
    assert f'href="{KEYS}{key.pk}/revoke/">Revoke</a>' in change

    confirm = staff.get(f"{KEYS}{key.pk}/revoke/")
    assert confirm.status_code == 200
    page = confirm.content.decode()
    assert "Revoke this API key?" in page and key.prefix in page
    assert 'name="post" value="yes"' in page and 'name="action"' not in page
    key.refresh_from_db()
    assert key.revoked_at is None  # a GET revokes nothing

    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(f"{KEYS}{key.pk}/revoke/", {"post": "yes"}, follow=True)
    assert response.redirect_chain[-1][0] == f"{KEYS}{key.pk}/change/"
    key.refresh_from_db()
    assert key.revoked_at is not None
    page = response.content.decode()
    assert f"Revoked the API key {key}." in page
    assert f"{key.pk}/revoke/" not in page  # no button on a revoked key
    assert "Revoked." in staff.get(f"{KEYS}{key.pk}/history/").content.decode()


def test_a_user_who_may_only_view_keys_gets_no_revoke_button(
    tenant: Tenant, client: Client
) -> None:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    OrganizationMembership.objects.create(user=user, organization=tenant.organization)
    client.force_login(user)
    key = tenant.api_key
    assert "/revoke/" not in client.get(f"{KEYS}{key.pk}/change/").content.decode()
    assert client.post(f"{KEYS}{key.pk}/revoke/", {"post": "yes"}).status_code == 403
    # Nor the list's action.
    assert "revoke_keys" not in client.get(KEYS).content.decode()
    client.post(KEYS, {"action": "revoke_keys", "_selected_action": [key.pk], "post": "yes"})
    key.refresh_from_db()
    assert key.revoked_at is None


def test_the_status_filter_lists_active_or_revoked_keys(
    staff: Client, tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    active = tenant.api_key
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(
            f"{KEYS}add/", {"organization": tenant.organization.pk, "name": "old", **KEY_FORM}
        )
        revoked = ApiKey.objects.get(name="old")
        staff.post(f"{KEYS}{revoked.pk}/revoke/", {"post": "yes"})

    page = staff.get(KEYS).content.decode()
    assert "By status" in page and "By revoked" not in page
    assert "Empty" not in page and "Not empty" not in page
    listed_active = staff.get(f"{KEYS}?status=active").context["cl"].result_list
    listed_revoked = staff.get(f"{KEYS}?status=revoked").context["cl"].result_list
    assert [k.pk for k in listed_active] == [active.pk]
    assert [k.pk for k in listed_revoked] == [revoked.pk]


@pytest.mark.parametrize(
    ("count", "message"), [(1, "Revoked 1 API key."), (2, "Revoked 2 API keys.")]
)
def test_the_revoke_action_says_key_or_keys(
    staff: Client, tenant: Tenant, count: int, message: str
) -> None:
    for i in range(count - 1):
        staff.post(
            f"{KEYS}add/", {"organization": tenant.organization.pk, "name": f"k{i}", **KEY_FORM}
        )
    keys = list(ApiKey.objects.values_list("pk", flat=True))
    assert len(keys) == count
    response = staff.post(
        KEYS, {"action": "revoke_keys", "_selected_action": keys, "post": "yes"}, follow=True
    )
    page = response.content.decode()
    assert message in page
    assert "(s)" not in page


def test_no_message_of_the_signals_admin_writes_a_plural_as_s_in_brackets() -> None:
    sources = [
        *(ROOT / "signals_app" / "admin").rglob("*.py"),
        *(ROOT / "templates/admin/signals_app").rglob("*.html"),
    ]
    for source in sources:
        assert "(s)" not in source.read_text(), source


# --- One date style -----------------------------------------------------------------------------
DATE_STYLE = re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC\b")
OTHER_STYLES = re.compile(r"\b(a\.m\.|p\.m\.|noon|midnight)|\d\d:\d\d:\d\d\.\d+|\+00:00")


def test_the_signals_pages_write_dates_one_way(
    staff: Client, tenant: Tenant, django_capture_on_commit_callbacks: Any
) -> None:
    signal = tenant.signal("docs", schema=SCHEMA)
    schema_version_create(signal=signal, schema={**SCHEMA, "required": ["page"]})
    store_event(tenant, signal, timezone.now())  # the list's "Last event"
    key = tenant.api_key
    staff.post(
        f"{KEYS}add/", {"organization": tenant.organization.pk, "name": "to-revoke", **KEY_FORM}
    )
    revoked = ApiKey.objects.get(name="to-revoke")
    with django_capture_on_commit_callbacks(execute=True):
        staff.post(f"{KEYS}{revoked.pk}/revoke/", {"post": "yes"})
    pages = [
        "/admin/signals_app/organization/",
        "/admin/signals_app/signal/",
        f"/admin/signals_app/signal/{signal.pk}/change/",
        f"/admin/signals_app/signal/{signal.pk}/versions/2/diff/",
        KEYS,
        f"{KEYS}{key.pk}/change/",
        f"{KEYS}{revoked.pk}/change/",
        f"{KEYS}{revoked.pk}/revoke/",
        f"{KEYS}{key.pk}/revoke/",
    ]
    for url in pages:
        response = staff.get(url)
        assert response.status_code == 200, url
        page = response.content.decode()
        assert DATE_STYLE.search(page), url
        assert not OTHER_STYLES.search(page), (url, OTHER_STYLES.search(page))
    assert SchemaVersion.objects.filter(signal=signal).count() == 2

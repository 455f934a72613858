"""The admin through Django's test client: signals with schema versions, keys shown once."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from events_app.ingest.auth import api_key_authenticate
from signals_app.models import ApiKey, ApiScope, Organization, SchemaVersion, Signal
from signals_app.selectors import lookups
from signals_app.services import api_key_hash, signal_create
from tests.conftest import KEY_FORM, SEED_REQUEST, ApiClient, Tenant, signal_form


@pytest.fixture
def org(db) -> Organization:
    return Organization.objects.create(slug="acme", name="Acme")


def test_the_admin_requires_staff(db) -> None:
    assert Client().get("/admin/signals_app/signal/").status_code == 302
    user = get_user_model().objects.create_user("plain", password="pw-123456")
    client = Client()
    client.force_login(user)
    assert client.get("/admin/signals_app/signal/").status_code == 302


def test_staff_create_a_signal_with_a_slug_made_from_the_name_and_a_first_schema(
    staff: Client, org: Organization
) -> None:
    schema = {"type": "object", "required": ["page"]}
    response = staff.post(
        "/admin/signals_app/signal/add/", signal_form(org, new_schema=json.dumps(schema))
    )
    assert response.status_code == 302, response.content.decode()[:2000]

    signal = Signal.objects.get()
    assert signal.slug == "visited-documentation-page"
    assert re.fullmatch(r"sig_[A-Za-z0-9]{8}", signal.public_id)
    assert list(SchemaVersion.objects.values_list("version", "schema")) == [(1, schema)]


def test_a_new_schema_on_edit_becomes_the_next_version(staff: Client, org: Organization) -> None:
    staff.post("/admin/signals_app/signal/add/", signal_form(org, new_schema='{"type": "object"}'))
    signal = Signal.objects.get()
    form = signal_form(org, slug=signal.slug, new_schema='{"type": "object", "required": ["a"]}')
    form["schema_versions-TOTAL_FORMS"] = form["schema_versions-INITIAL_FORMS"] = "1"
    form["schema_versions-0-id"] = str(signal.schema_versions.get().pk)
    form["schema_versions-0-signal"] = str(signal.pk)
    response = staff.post(f"/admin/signals_app/signal/{signal.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert list(signal.schema_versions.order_by("version").values_list("version", flat=True)) == [
        1,
        2,
    ]
    assert signal.schema_versions.get(version=1).schema == {"type": "object"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"new_schema": "{not json"}, "Enter a valid JSON"),
        ({"new_schema": '{"type": "strange"}'}, "Not a valid JSON Schema"),
        ({"new_schema": '{"$ref": "https://example.com/s.json"}'}, "Only local references"),
        ({"slug": "Has Spaces"}, "slug"),
        ({"type": "metric"}, "A metric signal needs an aggregation."),
        ({"aggregation": "sum"}, "Applies to metric signals only."),
        ({"rate_limit_per_minute": "0"}, "greater than or equal to 1"),
    ],
)
def test_bad_input_is_a_form_error_and_saves_nothing(
    staff: Client, org: Organization, overrides: dict, message: str
) -> None:
    response = staff.post("/admin/signals_app/signal/add/", signal_form(org, **overrides))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert Signal.objects.count() == 0
    assert SchemaVersion.objects.count() == 0


def test_a_duplicate_slug_in_the_organization_is_a_form_error(
    staff: Client, org: Organization
) -> None:
    staff.post("/admin/signals_app/signal/add/", signal_form(org, slug="docs"))
    response = staff.post("/admin/signals_app/signal/add/", signal_form(org, slug="docs"))
    assert response.status_code == 200
    assert Signal.objects.count() == 1


def test_a_new_api_key_is_shown_once_and_only_its_hash_is_stored(
    staff: Client, org: Organization
) -> None:
    response = staff.post(
        "/admin/signals_app/apikey/add/",
        {"organization": org.pk, "name": "backend", **KEY_FORM},
        follow=True,
    )
    assert response.status_code == 200
    assert response.redirect_chain[-1][0].endswith("/created/")  # POST/redirect/GET
    page = response.content.decode()
    raw = re.search(r'value="(sk_[A-Za-z0-9_\-]+)"', page).group(1)
    assert "shown only once" in page
    assert "no-store" in response["Cache-Control"]

    key = ApiKey.objects.get()
    assert key.key_hash == api_key_hash(raw)
    assert raw not in json.dumps(list(ApiKey.objects.values()), default=str)
    assert api_key_authenticate(raw_key=raw).organization_id == org.pk
    # The list and change pages never show it again.
    assert raw not in staff.get("/admin/signals_app/apikey/").content.decode()
    assert raw not in staff.get(f"/admin/signals_app/apikey/{key.pk}/change/").content.decode()


def test_staff_create_a_key_with_scopes_an_allow_list_and_an_expiry(
    staff: Client, org: Organization
) -> None:
    signal_create(organization=org, name="Page viewed", slug="page-viewed", type="event")
    signal_create(organization=org, name="Signup", slug="signup", type="event")
    form = staff.get("/admin/signals_app/apikey/add/").content.decode()
    # Every scope offered as a checkbox, all ticked at first.
    for scope in ApiScope.values:
        assert re.search(rf'<input[^>]*value="{scope}"[^>]*checked', form), scope
    assert "Signal allow-list" in form
    response = staff.post(
        "/admin/signals_app/apikey/add/",
        {
            "organization": org.pk,
            "name": "reader",
            "scope_choices": ["events:read", "signals:read"],
            "signal_allow_list": "signup, page-viewed",
            "expires_at_0": "2099-01-02",
            "expires_at_1": "03:04:05",
        },
        follow=True,
    )
    assert response.redirect_chain[-1][0].endswith("/created/")
    raw = re.search(r'value="(sk_[A-Za-z0-9_\-]+)"', response.content.decode()).group(1)
    key = ApiKey.objects.get(name="reader")
    assert key.scopes == ["events:read", "signals:read"]
    assert key.signals == ["page-viewed", "signup"]
    assert key.expires_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC)
    client = api_key_authenticate(raw_key=raw)
    assert client.scopes == {"events:read", "signals:read"}
    # The key's page shows its limits, read-only; the list has scopes and expiry columns.
    page = staff.get(f"/admin/signals_app/apikey/{key.pk}/change/").content.decode()
    assert "events:read, signals:read" in page
    assert "page-viewed, signup" in page
    assert "2099" in page
    assert 'name="scope_choices"' not in page and 'name="expires_at_0"' not in page
    listing = staff.get("/admin/signals_app/apikey/").content.decode()
    assert "events:read, signals:read" in listing and "Expires 2099-01-02" in listing


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scope_choices": []}, "Choose at least one scope."),
        ({"signal_allow_list": "page-viewed, ghost"}, "No such signal in organization"),
        (
            {"expires_at_0": "2001-01-01", "expires_at_1": "00:00:00"},
            "The expiry time must be in the future",
        ),
    ],
)
def test_the_key_form_refuses_bad_limits_and_creates_nothing(
    staff: Client, org: Organization, changes: dict, message: str
) -> None:
    signal_create(organization=org, name="Page viewed", slug="page-viewed", type="event")
    data = {"organization": org.pk, "name": "bad", **KEY_FORM, **changes}
    response = staff.post("/admin/signals_app/apikey/add/", data)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ApiKey.objects.exists()


def test_the_revoke_action_revokes_and_the_key_stops_working(
    staff: Client, org: Organization, django_capture_on_commit_callbacks
) -> None:
    staff.post(
        "/admin/signals_app/apikey/add/", {"organization": org.pk, "name": "backend", **KEY_FORM}
    )
    key = ApiKey.objects.get()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            "/admin/signals_app/apikey/",
            # "post": the confirmation page's "Yes, revoke them".
            {"action": "revoke_keys", "_selected_action": [key.pk], "post": "yes"},
        )
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None


def test_event_pages_render(staff: Client, org: Organization) -> None:
    assert staff.get("/admin/events_app/event/").status_code == 200
    assert staff.get("/admin/events_app/crmrecord/").status_code == 200
    assert staff.get("/admin/").status_code == 200


# --- Signal changes -------------------------------------------------------------------------
def _change_form(signal: Signal, **overrides: object) -> dict:
    current = {"name": signal.name, "slug": signal.slug, "type": signal.type}
    return signal_form(signal.organization, **(current | overrides))


def test_renaming_a_slug_in_the_admin_retires_the_old_slug_at_once(
    staff: Client, api: ApiClient, tenant: Tenant, django_capture_on_commit_callbacks
) -> None:
    signal = tenant.signal("old-slug")
    assert api.post("/v1/events", {**SEED_REQUEST, "signal": "old-slug"}).status_code == 202
    with django_capture_on_commit_callbacks(execute=True):
        response = staff.post(
            f"/admin/signals_app/signal/{signal.pk}/change/", _change_form(signal, slug="new-slug")
        )
    assert response.status_code == 302
    lookups.clear_local()
    assert api.post("/v1/events", {**SEED_REQUEST, "signal": "old-slug"}).status_code == 404
    assert api.post("/v1/events", {**SEED_REQUEST, "signal": "new-slug"}).status_code == 202


def test_renaming_to_a_taken_slug_or_emptying_it_is_a_form_error(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("one")
    tenant.signal("two")
    for slug, message in (("two", "exists already"), ("", "cannot be emptied")):
        response = staff.post(
            f"/admin/signals_app/signal/{signal.pk}/change/", _change_form(signal, slug=slug)
        )
        assert response.status_code == 200
        assert message in response.content.decode()
    assert Signal.objects.get(pk=signal.pk).slug == "one"


def test_signals_cannot_be_deleted_in_the_admin(staff: Client, tenant: Tenant) -> None:
    signal = tenant.signal("keep")
    assert staff.get(f"/admin/signals_app/signal/{signal.pk}/delete/").status_code == 403


def test_changing_a_metric_to_an_event_in_the_admin_drops_the_metric_settings(
    staff: Client, tenant: Tenant
) -> None:
    signal = tenant.signal("calls", type="metric")
    response = staff.post(
        f"/admin/signals_app/signal/{signal.pk}/change/",
        _change_form(signal, type="event", aggregation="", period="", value_field=""),
    )
    assert response.status_code == 302, response.content.decode()[:1500]
    signal.refresh_from_db()
    assert (signal.type, signal.aggregation, signal.period, signal.value_field) == (
        "event",
        "",
        "",
        "",
    )

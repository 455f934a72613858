"""The admin as a person uses it: headless Chromium on the live server, a screenshot per page.

Selectors go by field names, labels and visible text rather than layout, since the admin's
templates keep changing around these flows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from signals_app.models import ApiKey, SchemaVersion, Signal
from tests.conftest import SEED_REQUEST

try:
    from playwright.sync_api import expect
except ImportError:  # conftest.py skips these tests (or fails them under BIGMIND_REQUIRE_BROWSER)
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SEATS_V1 = {
    "type": "object",
    "required": ["seats"],
    "properties": {"seats": {"type": "integer", "minimum": 0}, "plan": {"type": "string"}},
}
# Under "backward" a new version must accept the data the latest one accepted: a new required
# property does not.
SEATS_V2_INCOMPATIBLE = {
    "type": "object",
    "required": ["seats", "region"],
    "properties": {
        "seats": {"type": "integer", "minimum": 0},
        "plan": {"type": "string"},
        "region": {"type": "string"},
    },
}


def _submit(page: Any, name: str) -> None:
    """Click the admin's submit button `name` (_save, _continue...) and wait for the answer."""
    with page.expect_navigation():
        page.locator(f"[type=submit][name={name}]").first.click()


def _post_event(live_server: Any, raw_key: str, body: dict) -> requests.Response:
    # "Connection: close": a kept-alive socket would keep a live-server thread, and with it a
    # database connection, open past the session, and PostgreSQL then cannot drop the test DB.
    return requests.post(
        f"{live_server.url}/v1/events",
        headers={"Authorization": f"Bearer {raw_key}", "Connection": "close"},
        json=body,
        timeout=10,
    )


def _success(page: Any) -> Any:
    return page.locator(".messagelist .success")


def test_a_signal_is_created_versioned_tried_and_refuses_an_incompatible_version(
    page: Any, log_in: Callable[[], None], shoot: Callable[[str], Path]
) -> None:
    log_in()

    # An organization, through its admin page.
    page.goto("/admin/signals_app/organization/add/")
    page.locator("input[name=slug]").fill("browser-co")
    page.locator("input[name=name]").fill("Browser Co")
    shoot("organization-add")
    _submit(page, "_save")
    expect(_success(page)).to_be_visible()

    # A metric signal: the slug is made from the name as it is typed, and the metric-only
    # settings appear only once the type is metric.
    page.goto("/admin/signals_app/signal/add/")
    assert page.evaluate("typeof window.django !== 'undefined' && !!window.django.jQuery"), (
        "the admin's JavaScript did not load"
    )
    page.locator("select[name=organization]").select_option(label="browser-co")
    page.locator("input[name=name]").press_sequentially("Seats used")
    expect(page.locator("input[name=slug]")).to_have_value("seats-used")
    expect(page.locator("select[name=aggregation]")).to_be_hidden()
    expect(page.locator("select[name=period]")).to_be_hidden()
    shoot("signal-add-event-type")
    page.locator("select[name=type]").select_option("metric")
    expect(page.locator("select[name=aggregation]")).to_be_visible()
    expect(page.locator("select[name=period]")).to_be_visible()
    page.locator("select[name=aggregation]").select_option("max")
    page.locator("select[name=period]").select_option("day")
    page.locator("input[name=value_field]").fill("seats")
    page.locator("select[name=compatibility]").select_option("backward")
    shoot("signal-add-metric-type")
    _submit(page, "_continue")
    expect(_success(page)).to_be_visible()
    signal = Signal.objects.get(organization__slug="browser-co", slug="seats-used")
    assert (signal.type, signal.aggregation, signal.period, signal.compatibility) == (
        "metric",
        "max",
        "day",
        "backward",
    )
    change_url = f"/admin/signals_app/signal/{signal.pk}/change/"
    assert page.url.endswith(change_url)
    shoot("signal-saved")

    # Schema version 1 through "Add schema version".
    expect(page.get_by_label("Add schema version")).to_be_visible()
    page.locator("textarea[name=new_schema]").fill(json.dumps(SEATS_V1, indent=2))
    _submit(page, "_continue")
    expect(_success(page).filter(has_text="schema version 1")).to_be_visible()
    assert list(signal.schema_versions.values_list("version", flat=True)) == [1]
    shoot("schema-v1-added")

    # Its diff (everything is new in v1), then "Try a payload".
    page.get_by_role("link", name="Diff", exact=True).first.click()
    page.wait_for_url(re.compile(rf"/signal/{signal.pk}/versions/1/diff/"))
    expect(page.get_by_text('"seats"').first).to_be_visible()
    shoot("schema-v1-diff")

    page.goto(change_url)
    page.get_by_role("link", name="Try a payload").first.click()
    page.wait_for_url(re.compile(rf"/signal/{signal.pk}/try/"))
    payload = page.locator("textarea[name=payload]")
    check = page.locator("form", has=payload).locator("[type=submit]").first
    shoot("try-payload")

    payload.fill('{"seats": "ten", "plan": "team"}')
    with page.expect_navigation():
        check.click()
    expect(page.get_by_text(re.compile(r"Not valid against schema v1"))).to_be_visible()
    violation = page.locator("tr", has=page.get_by_text("$.seats", exact=True))
    expect(violation).to_contain_text("is not of type 'integer'")
    shoot("try-payload-invalid")

    page.locator("textarea[name=payload]").fill('{"seats": 12, "plan": "team"}')
    with page.expect_navigation():
        page.locator("form", has=page.locator("textarea[name=payload]")).locator(
            "[type=submit]"
        ).first.click()
    expect(page.get_by_text(re.compile(r"^Valid\b"))).to_be_visible()
    shoot("try-payload-valid")

    # An incompatible version 2 is refused next to the field, with the reasons, and not saved.
    page.goto(change_url)
    page.locator("textarea[name=new_schema]").fill(json.dumps(SEATS_V2_INCOMPATIBLE, indent=2))
    _submit(page, "_continue")
    field_row = page.locator(".form-row", has=page.locator("textarea[name=new_schema]"))
    errors = field_row.locator(".errorlist")
    expect(errors).to_be_visible()
    expect(errors).to_contain_text("region")
    expect(errors).to_contain_text(re.compile("backward", re.IGNORECASE))
    expect(_success(page)).to_have_count(0)
    shoot("schema-v2-refused")
    assert not SchemaVersion.objects.filter(signal=signal, version=2).exists()
    assert list(signal.schema_versions.values_list("version", flat=True)) == [1]

    page.goto(change_url)
    expect(page.locator("a[href$='/versions/2/diff/']")).to_have_count(0)
    expect(page.locator("a[href$='/versions/1/diff/']").first).to_be_visible()
    shoot("signal-still-v1")


def test_an_api_key_is_shown_once_and_then_revoked(
    page: Any,
    log_in: Callable[[], None],
    shoot: Callable[[str], Path],
    make_tenant: Any,
    live_server: Any,
) -> None:
    make_tenant("browser-keys")
    log_in()

    page.goto("/admin/signals_app/apikey/add/")
    page.locator("select[name=organization]").select_option(label="browser-keys")
    page.locator("input[name=name]").fill("Browser CI key")
    shoot("apikey-add")
    _submit(page, "_save")

    shown = page.locator("#new-api-key")
    expect(shown).to_be_visible()
    raw = shown.input_value()
    api_key = ApiKey.objects.get(organization__slug="browser-keys", name="Browser CI key")
    assert raw.startswith(api_key.prefix) and len(raw) > len(api_key.prefix) + 16
    expect(page.get_by_text(re.compile("shown only once", re.IGNORECASE))).to_be_visible()
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == raw
    shoot("apikey-created-shown-once")

    # The key works, and no later page shows it again.
    response = _post_event(live_server, raw, {**SEED_REQUEST, "signal": "no-such-signal"})
    assert response.status_code == 404, response.text  # authenticated: the signal is unknown

    with page.expect_navigation():
        page.get_by_role("link", name=re.compile("copied", re.IGNORECASE)).click()
    assert "/admin/signals_app/apikey/" in page.url
    assert raw not in page.content()
    page.reload()
    assert raw not in page.content()
    shoot("apikey-list")
    page.goto(f"/admin/signals_app/apikey/{api_key.pk}/change/")
    assert raw not in page.content()
    expect(page.get_by_text(api_key.prefix).first).to_be_visible()
    shoot("apikey-change")

    # Revoke through the changelist action, confirming if the action asks first.
    page.goto("/admin/signals_app/apikey/")
    page.locator(f"input[name=_selected_action][value='{api_key.pk}']").check()
    page.locator("select[name=action]").select_option("revoke_keys")
    shoot("apikey-revoke-selected")
    with page.expect_navigation():
        page.locator(
            "#changelist-form [type=submit][name=index], .actions [type=submit]"
        ).first.click()
    if page.locator("#changelist-form").count() == 0:
        # A confirmation page: nothing is revoked until it is confirmed.
        expect(page.get_by_text(api_key.prefix).first).to_be_visible()
        shoot("apikey-revoke-confirm")
        api_key.refresh_from_db()
        assert api_key.revoked_at is None
        confirm = page.locator("#content form [type=submit]:not([name=index])").first
        with page.expect_navigation():
            confirm.click()
    expect(_success(page).filter(has_text=re.compile("revoked", re.IGNORECASE))).to_be_visible()
    shoot("apikey-revoked")
    api_key.refresh_from_db()
    assert api_key.revoked_at is not None
    assert raw not in page.content()


def test_the_dashboard_draws_the_organizations_signals(
    page: Any,
    log_in: Callable[[], None],
    shoot: Callable[[str], Path],
    make_tenant: Any,
    live_server: Any,
) -> None:
    tenant = make_tenant("browser-dash")
    tenant.signal("visited-documentation-page")
    log_in()
    response = _post_event(live_server, tenant.raw_key, SEED_REQUEST)
    assert response.status_code == 202, response.text

    page.goto("/admin/dashboard/")
    shoot("dashboard-index")
    with page.expect_navigation():
        page.get_by_role("link", name="browser-dash", exact=True).click()
    assert page.url.endswith("/admin/dashboard/browser-dash/")
    row = page.locator("tr", has=page.get_by_text("visited-documentation-page", exact=True)).first
    expect(row.locator("svg").first).to_be_visible()
    expect(row.locator(".ingested-24h")).to_have_text("1")
    assert page.locator("svg").count() >= 2  # per hour and per day
    shoot("dashboard-organization")

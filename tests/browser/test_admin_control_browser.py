"""Issue #12 (admin items 7, 8 and 9) for the signals app, in headless Chromium: the branding,
every signals_app list at 1400x1000 with the sidebar open and no horizontal overflow, errors
beside their field, an API key shown once (a reload creates nothing) and revoked from its page.
Each step leaves a screenshot (tests/browser/conftest.py, `shoot`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from signals_app.models import ApiKey, Organization, OrganizationMembership, Signal
from signals_app.services import api_key_create, schema_version_create, signal_create
from tests.signals_app.test_admin_ux import store_event

try:
    from playwright.sync_api import expect
except ImportError:  # conftest.py skips these tests (or fails them under BIGMIND_REQUIRE_BROWSER)
    expect = None  # type: ignore[assignment]

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDE = {"width": 1400, "height": 1000}

# What each list is measured with: every column at its widest plausible value.
LONG_NAME = "Customer visited the pricing page after reading the documentation " * 3
LONG_SLUG = "customer_visited_the_pricing_page_after_reading_the_documentation_and_more"
LONG_ORG_SLUG = "a-very-long-organization-slug-for-an-enterprise-customer-account"
SIGNALS_LISTS = [
    "/admin/signals_app/organization/",
    "/admin/signals_app/organizationmembership/",
    "/admin/signals_app/signal/",
    "/admin/signals_app/apikey/",
]


def _submit(page: Any, name: str) -> None:
    with page.expect_navigation():
        page.locator(f"[type=submit][name={name}]").first.click()


def _long_rows() -> Organization:
    organization = Organization.objects.create(slug=LONG_ORG_SLUG[:64], name=LONG_NAME[:200])
    Organization.objects.create(slug="short", name="Short")
    for i, kind in enumerate(("event", "metric", "state")):
        settings = {"aggregation": "sum", "period": "day"} if kind == "metric" else {}
        signal = signal_create(
            organization=organization,
            name=LONG_NAME[:200],
            slug=f"{LONG_SLUG[:96]}_{i}",
            type=kind,
            rate_limit_per_minute=1000,
            **settings,
        )
        schema_version_create(signal=signal, schema={"type": "object", "description": LONG_NAME})
    # store_event reads only the tenant's organization.
    event_signal = Signal.objects.get(type="event")
    store_event(SimpleNamespace(organization=organization), event_signal, timezone.now())  # type: ignore[arg-type]
    for i in range(3):
        api_key_create(organization=organization, name=f"{LONG_NAME[:190]} {i}")
    user = get_user_model().objects.create_user(
        f"{'someone.with.a.very.long.address' * 4}"[:150], email="x" * 60 + "@example.com"
    )
    OrganizationMembership.objects.create(user=user, organization=organization)
    return organization


def _overflow(page: Any) -> dict[str, list[int]]:
    """scrollWidth against clientWidth of the page and of the results table's container."""
    return page.evaluate(
        """() => {
            const measure = (el) => el ? [el.scrollWidth, el.clientWidth] : null;
            return {
                page: measure(document.documentElement),
                results: measure(document.querySelector('#changelist .results')),
                content: measure(document.querySelector('#content')),
            };
        }"""
    )


def test_the_site_is_branded_and_view_site_opens_the_dashboard(
    page: Any, log_in: Callable[[], None], shoot: Callable[[str], Path]
) -> None:
    page.set_viewport_size(WIDE)
    log_in()
    expect(page.locator("#site-name")).to_have_text("Bigmind Signals")
    assert "Django" not in page.locator("#header").inner_text()
    assert page.title() == "Administration | Bigmind Signals"
    expect(page.locator(".app-signals_app caption")).to_have_text("Signals")
    expect(page.locator(".app-events_app caption")).to_have_text("Events")
    expect(page.get_by_text("control plane")).to_have_count(0)
    dashboard = page.locator("#bigmind-dashboard")
    expect(dashboard).to_be_visible()
    # Above the app list: the first thing on the page.
    assert dashboard.bounding_box()["y"] < page.locator(".app-signals_app").bounding_box()["y"]
    shoot("index")

    with page.expect_navigation():
        page.get_by_role("link", name="View site").click()
    assert page.url.endswith("/admin/dashboard/")
    shoot("view-site-is-the-dashboard")
    page.goto("/admin/")
    with page.expect_navigation():
        dashboard.get_by_role("link", name="Open the dashboard").click()
    assert page.url.endswith("/admin/dashboard/")


def test_every_signals_list_fits_1400px_with_the_sidebar_open(
    page: Any, log_in: Callable[[], None], shoot: Callable[[str], Path]
) -> None:
    _long_rows()
    page.set_viewport_size(WIDE)
    log_in()
    for url in SIGNALS_LISTS:
        page.goto(url)
        expect(page.locator("#nav-sidebar")).to_be_visible()
        expect(page.locator("#result_list tbody tr").first).to_be_visible()
        name = url.strip("/").split("/")[-1]
        shoot(f"list-{name}")
        _assert_fits(page, url)

    # A signal's page: its versions' schemas (a long line each) scroll inside their own box.
    signal = Signal.objects.filter(slug__startswith=LONG_SLUG[:20]).first()
    assert signal is not None
    page.goto(f"/admin/signals_app/signal/{signal.pk}/change/")
    expect(page.locator("pre.bigmind-schema").first).to_be_visible()
    shoot("signal-change-long-schema")
    _assert_fits(page, "signal change page")


def _assert_fits(page: Any, where: str) -> None:
    for part, size in _overflow(page).items():
        if size is not None:
            scroll, client = size
            assert scroll <= client, f"{where}: {part} overflows ({scroll} > {client})"


def test_a_metric_signal_without_aggregation_is_refused_beside_the_field(
    page: Any, log_in: Callable[[], None], shoot: Callable[[str], Path], make_tenant: Any
) -> None:
    make_tenant("browser-forms")
    page.set_viewport_size(WIDE)
    log_in()
    page.goto("/admin/signals_app/signal/add/")
    expect(page.locator("textarea[name=new_schema]")).to_have_value("")
    expect(page.locator("label[for=id_ai_instructions]")).to_have_text("AI instructions:")
    page.locator("select[name=organization]").select_option(label="browser-forms")
    page.locator("input[name=name]").fill("API calls")
    page.locator("select[name=type]").select_option("metric")
    page.locator("select[name=period]").select_option("day")
    _submit(page, "_save")
    row = page.locator(".form-row", has=page.locator("select[name=aggregation]"))
    expect(row.locator(".errorlist")).to_have_text("A metric signal needs an aggregation.")
    expect(page.locator(".errorlist.nonfield")).to_have_count(0)
    expect(page.get_by_text(re.compile("Constraint|is violated"))).to_have_count(0)
    shoot("metric-error-beside-aggregation")
    assert not Signal.objects.filter(slug="api-calls").exists()

    page.locator("select[name=aggregation]").select_option("sum")
    _submit(page, "_continue")
    signal = Signal.objects.get(slug="api-calls")
    assert page.url.endswith(f"/signal/{signal.pk}/change/")
    expect(page.locator("textarea[name=new_schema]")).to_have_value("")  # not "null"
    shoot("metric-saved-empty-schema-box")


def test_a_reload_of_the_key_created_page_creates_no_key_and_shows_no_secret(
    page: Any, log_in: Callable[[], None], shoot: Callable[[str], Path], make_tenant: Any
) -> None:
    make_tenant("browser-prg")
    page.set_viewport_size(WIDE)
    log_in()
    before = ApiKey.objects.count()
    page.goto("/admin/signals_app/apikey/add/")
    page.locator("select[name=organization]").select_option(label="browser-prg")
    page.locator("input[name=name]").fill("Reloaded key")
    _submit(page, "_save")
    key = ApiKey.objects.get(name="Reloaded key")
    assert page.url.endswith(f"/apikey/{key.pk}/created/")  # redirected after the POST
    raw = page.locator("#new-api-key").input_value()
    assert raw.startswith(key.prefix)
    shoot("key-shown-once")

    page.reload()  # a GET: the browser has no form to post again
    assert page.url.endswith(f"/apikey/{key.pk}/created/")
    expect(page.locator("#new-api-key")).to_have_count(0)
    expect(page.locator("#api-key-shown-already")).to_be_visible()
    assert raw not in page.content()
    shoot("key-created-page-reloaded")
    page.go_back()
    page.go_forward()
    assert raw not in page.content()
    assert ApiKey.objects.count() == before + 1

    # Revoked from its own page, after a confirmation.
    page.goto(f"/admin/signals_app/apikey/{key.pk}/change/")
    with page.expect_navigation():
        page.get_by_role("link", name="Revoke", exact=True).click()
    shoot("revoke-confirmation")
    key.refresh_from_db()
    assert key.revoked_at is None
    with page.expect_navigation():
        page.get_by_role("button", name="Yes, revoke it").click()
    assert page.url.endswith(f"/apikey/{key.pk}/change/")
    expect(page.locator(".messagelist .success")).to_contain_text("Revoked the API key")
    expect(page.get_by_role("link", name="Revoke", exact=True)).to_have_count(0)
    shoot("revoked")
    key.refresh_from_db()
    assert key.revoked_at is not None

    # The list's filter reads as a status.
    page.goto("/admin/signals_app/apikey/")
    filters = page.locator("#changelist-filter")
    expect(filters).to_contain_text("By status")
    expect(filters).not_to_contain_text("Not empty")
    with page.expect_navigation():
        filters.get_by_role("link", name="Revoked", exact=True).click()
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    expect(page.locator("#result_list tbody")).to_contain_text("Reloaded key")
    shoot("status-filter-revoked")

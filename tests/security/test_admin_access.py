"""The admin requires staff, and staff limited to one organization never see another's objects.

Every URL comes from `admin.site.get_urls()` (each model admin's own URLs included, custom pages
such as try-a-payload and the schema diff among them) and from the dashboard's URLconf mounted in
bigmind/urls.py, so a page added later is covered without being listed here; a URL parameter or a
model admin this module cannot fill or classify fails the test instead of being skipped.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from bigmind.admin_tenancy import OrganizationScopedAdmin
from events_app.models import WebhookDelivery, WebhookEndpoint
from signals_app.models import Organization, OrganizationMembership, Signal
from tests.security.conftest import Org, fingerprint

ADMIN_PREFIX = "/admin/"
LOGIN = "/admin/login/"
# Model admins that own no organization's data, and who may use them.
NOT_TENANT_OWNED = {
    get_user_model(): "superusers and staff given auth permissions (never scoped staff)",
    Group: "superusers and staff given auth permissions (never scoped staff)",
    OrganizationMembership: "superusers only",
}


@dataclass(frozen=True)
class AdminUrl:
    route: str  # the pattern, for messages
    model: type[models.Model] | None  # the model admin it belongs to, if any
    name: str | None
    params: tuple[str, ...]

    def url(self, objects: dict[type[models.Model], Any], *, missing: bool = False) -> str:
        """The concrete URL, at `objects`' object of this URL's model (or at one never made)."""
        values: dict[str, str] = {}
        if self.name == "view_on_site":  # /admin/r/<content type>/<object id>/: a signal
            values["object_id"] = "2000000000" if missing else str(objects[Signal].pk)
        for param in self.params:
            if param in values:
                continue
            if param in ("object_id", "id"):
                obj = objects[self.model]
                pk = obj.pk
                if missing:
                    pk = uuid.UUID(int=1) if isinstance(pk, uuid.UUID) else 2_000_000_000
                values[param] = str(pk)
            elif param == "version":
                values[param] = "1"
            elif param == "content_type_id":
                values[param] = str(ContentType.objects.get_for_model(Signal).pk)
            elif param == "slug":  # the dashboard's organization page
                values[param] = "never-an-org" if missing else objects[Organization].slug
            elif param == "app_label":
                values[param] = "signals_app"
            elif param == "url":  # the admin's catch-all
                values[param] = "no-such-admin-page/"
            else:
                raise AssertionError(f"{self.route}: no value for URL parameter {param!r}")
        url = self.route
        for param, value in values.items():
            url = re.sub(r"\(\?P<" + param + r">[^)]*\)", value, url)  # re_path groups first
            url = re.sub(r"<(?:\w+:)?" + param + ">", value, url)
        url = url.replace("^", "").replace("$", "")
        assert "<" not in url and "(" not in url, url
        return url


def admin_urls() -> Iterator[AdminUrl]:
    """Every admin and dashboard URL pattern, with the model admin each belongs to."""
    models_by_prefix = {
        f"{model._meta.app_label}/{model._meta.model_name}/": model
        for model in admin.site._registry
    }

    def walk(patterns: list[Any], prefix: str, model: Any) -> Iterator[AdminUrl]:
        for pattern in patterns:
            route = str(pattern.pattern)
            if isinstance(pattern, URLResolver):
                yield from walk(
                    pattern.url_patterns, prefix + route, models_by_prefix.get(route, model)
                )
                continue
            assert isinstance(pattern, URLPattern)
            regex = pattern.pattern.regex
            params = tuple(regex.groupindex)
            yield AdminUrl(prefix + route, model, pattern.name, params)

    yield from walk(admin.site.get_urls(), ADMIN_PREFIX, None)
    dashboard = [p for p in get_resolver().url_patterns if str(p.pattern) == "admin/dashboard/"]
    assert len(dashboard) == 1
    yield from walk(dashboard[0].url_patterns, "/admin/dashboard/", None)


def sample_objects(org: Org) -> dict[type[models.Model], Any]:
    """One object of the organization for every registered model admin."""
    objects: dict[type[models.Model], Any] = {type(o): o for o in org.world.objects().values()}
    objects[Signal] = org.only_signal  # it has a schema version: the diff page has a v1
    user = get_user_model().objects.create_user(f"{org.slug}-someone", password="pw-123456")
    objects[get_user_model()] = user
    objects[Group] = Group.objects.get_or_create(name=f"{org.slug}-group")[0]
    objects[OrganizationMembership] = OrganizationMembership.objects.create(
        user=user, organization=org.tenant.organization
    )
    missing = set(admin.site._registry) - set(objects)
    assert not missing, f"no sample object for the model admins of {missing}"
    return objects


def staff(username: str, organization: Organization | None, **flags: Any) -> Client:
    """A staff user with every permission on the project's models, limited to `organization`."""
    user = get_user_model().objects.create_user(
        username, password="pw-123456", is_staff=True, **flags
    )
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label__in=["signals_app", "events_app"])
    )
    if organization is not None:
        OrganizationMembership.objects.create(user=user, organization=organization)
    client = Client()
    client.force_login(user)
    return client


def fetch(client: Client, method: str, url: str) -> Any:
    """The answer at the end of any redirects (`<id>/` redirects to `<id>/change/` unchecked,
    the same for every id, so what counts is where it leads)."""
    if method == "GET":
        return client.get(url, follow=True)
    return client.post(url, {"post": "yes"}, follow=True)


def leaked(response: Any, org: Org, url: str) -> set[str]:
    page = response.content.decode("utf-8", errors="replace")
    return {m for m in org.markers() if m in page and m not in url}


# --- Visitors who are not staff ---------------------------------------------------------------
def test_the_admin_url_list_is_complete(acme: Org) -> None:
    urls = list(admin_urls())
    names = {u.name for u in urls}
    # The custom pages and the dashboard are there, so the enumeration reaches them.
    for name in ("signals_app_signal_try", "signals_app_signal_diff", "index", "organization"):
        assert name in names, name
    for model in admin.site._registry:
        assert any(u.model is model for u in urls), model
    objects = sample_objects(acme)
    assert all(u.url(objects).startswith(ADMIN_PREFIX) for u in urls)


@pytest.mark.parametrize("who", ["anonymous", "active non-staff", "inactive staff"])
def test_every_admin_url_sends_non_staff_to_the_login_and_shows_nothing(
    who: str, acme: Org
) -> None:
    objects = sample_objects(acme)
    client = Client()
    if who != "anonymous":
        user = get_user_model().objects.create_user(
            "visitor", password="pw-123456", is_staff=(who == "inactive staff")
        )
        if who == "inactive staff":
            user.is_superuser = True
            user.is_active = False
            user.save()
        client.force_login(user)
    before = fingerprint(acme)
    checked = 0
    for admin_url in admin_urls():
        url = admin_url.url(objects)
        for method in ("GET", "POST"):
            response = client.generic(method, url, "post=yes&name=x")
            where = f"{who}: {method} {url}"
            assert not leaked(response, acme, url), where
            if admin_url.name == "login":
                assert response.status_code in (200, 302), where
                continue
            assert response.status_code == 302, (where, response.status_code)
            location = response["Location"]
            if admin_url.name == "logout":
                assert location in (ADMIN_PREFIX, LOGIN) or location.startswith(LOGIN), where
            else:
                assert location.startswith(f"{LOGIN}?next="), (where, location)
            checked += 1
    assert checked > 50
    assert fingerprint(acme) == before


# --- Staff limited to another organization ----------------------------------------------------
def test_every_model_admin_is_scoped_or_known_to_hold_no_tenant_data() -> None:
    for model, model_admin in admin.site._registry.items():
        assert isinstance(model_admin, OrganizationScopedAdmin) or model in NOT_TENANT_OWNED, model


def _object_urls(model: type[models.Model]) -> list[AdminUrl]:
    return [u for u in admin_urls() if u.model is model and "object_id" in u.params]


def test_scoped_staff_never_reach_another_organizations_objects_on_any_admin_page(
    acme: Org, globex: Org
) -> None:
    theirs = sample_objects(acme)
    own = sample_objects(globex)
    scoped = staff("globex-staff", globex.tenant.organization)
    root = Client()
    root.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw"))
    before = fingerprint(acme)
    for model, _model_admin in admin.site._registry.items():
        urls = [u for u in admin_urls() if u.model is model]
        assert urls, model
        for admin_url in urls:
            for method in ("GET", "POST"):
                foreign = admin_url.url(theirs)
                response = fetch(scoped, method, foreign)
                where = f"{method} {foreign}"
                assert response.status_code < 500, where
                assert not leaked(response, acme, foreign), where
                if model in NOT_TENANT_OWNED:
                    assert response.status_code == 403, (where, response.status_code)
                    continue
                if "object_id" not in admin_url.params:
                    continue  # lists and add forms: checked below
                # Another organization's object answers as one that does not exist...
                missing = fetch(scoped, method, admin_url.url(theirs, missing=True))
                assert response.status_code == missing.status_code, where
                assert response.status_code in (403, 404), (where, response.status_code)
                if method == "GET":
                    # ...while their own object is there (a page, or refused by permission:
                    # scoped staff change no organization and delete no key or signal).
                    mine = admin_url.url(own)
                    assert fetch(scoped, "GET", mine).status_code in (200, 403), mine
                    assert fetch(root, "GET", mine).status_code in (200, 403), mine
        if model in NOT_TENANT_OWNED:
            continue
        listing = f"{ADMIN_PREFIX}{model._meta.app_label}/{model._meta.model_name}/"
        for query in ("", f"?q={acme.only_signal.slug}", f"?q={acme.ingested_event_id}"):
            response = scoped.get(listing + query)
            assert response.status_code == 200, listing + query
            rows = list(response.context["cl"].result_list)
            assert theirs[model] not in rows, listing + query
            assert not leaked(response, acme, listing + query), listing + query
        assert theirs[model] in root.get(listing).context["cl"].result_list, listing
        add = scoped.get(f"{listing}add/")
        assert add.status_code in (200, 403) and not leaked(add, acme, listing)
    assert fingerprint(acme) == before


def test_scoped_staff_cannot_reach_another_organization_through_shared_admin_pages(
    acme: Org, globex: Org
) -> None:
    scoped = staff("globex-staff", globex.tenant.organization)
    signal_ct = ContentType.objects.get_for_model(Signal).pk
    pages = {
        "dashboard": "/admin/dashboard/",
        "their dashboard": f"/admin/dashboard/{acme.slug}/",
        "index": ADMIN_PREFIX,
        "app list": f"{ADMIN_PREFIX}events_app/",
        "view on site": f"{ADMIN_PREFIX}r/{signal_ct}/{acme.only_signal.pk}/",
        "autocomplete": f"{ADMIN_PREFIX}autocomplete/?app_label=events_app&model_name=event"
        f"&field_name=signal&term={acme.only_signal.slug}",
        "raw id popup": f"{ADMIN_PREFIX}events_app/crmrecord/?_popup=1&_to_field=id"
        f"&q={acme.slug.upper()}",
    }
    for name, url in pages.items():
        response = scoped.get(url)
        assert response.status_code in (200, 302, 403, 404), (name, response.status_code)
        assert not leaked(response, acme, url), name
    assert scoped.get(pages["their dashboard"]).status_code == 404
    assert scoped.get(f"/admin/dashboard/{globex.slug}/").status_code == 200


def test_scoped_staff_reach_only_their_own_webhook_endpoints_signals_and_deliveries(
    acme: Org, globex: Org, django_capture_on_commit_callbacks: Any
) -> None:
    scoped = staff("globex-staff", globex.tenant.organization)
    endpoints = f"{ADMIN_PREFIX}events_app/webhookendpoint/"
    deliveries = f"{ADMIN_PREFIX}events_app/webhookdelivery/"
    theirs_endpoint = acme.world.webhook_endpoint
    theirs_delivery = acme.world.webhook_delivery
    before = fingerprint(acme)

    add = scoped.get(f"{endpoints}add/")
    assert add.status_code == 200 and not leaked(add, acme, endpoints)
    offered = set(add.context["adminform"].form.fields["signals"].queryset)
    assert offered and {s.organization for s in offered} == {globex.tenant.organization}
    # Forged: another organization, or another organization's signal.
    for forged in (
        {"organization": acme.tenant.organization.pk},
        {"organization": globex.tenant.organization.pk, "signals": [acme.only_signal.pk]},
    ):
        response = scoped.post(
            f"{endpoints}add/",
            {"url": "https://93.184.215.14/x", "events": ["*"], "enabled": "on", **forged},
        )
        assert response.status_code == 200, forged  # the form again, with the error
        assert response.context["adminform"].form.errors, forged
    assert not WebhookEndpoint.objects.filter(url="https://93.184.215.14/x").exists()

    # Forged list actions: the other organization's rows are dropped from the selection.
    pings = set(WebhookDelivery.objects.filter(type="ping").values_list("pk", flat=True))
    theirs_before = WebhookDelivery.objects.get(pk=theirs_delivery.pk)
    with django_capture_on_commit_callbacks(execute=False):
        scoped.post(
            endpoints, {"action": "send_test_events", "_selected_action": [theirs_endpoint.pk]}
        )
        scoped.post(
            deliveries,
            {"action": "retry_deliveries", "_selected_action": [str(theirs_delivery.pk)]},
        )
    assert set(WebhookDelivery.objects.filter(type="ping").values_list("pk", flat=True)) == pings
    theirs_after = WebhookDelivery.objects.get(pk=theirs_delivery.pk)
    assert (theirs_after.status, theirs_after.next_attempt_at) == (
        theirs_before.status,
        theirs_before.next_attempt_at,
    )
    listing = scoped.get(deliveries)
    assert set(listing.context["cl"].result_list) == set(
        WebhookDelivery.objects.filter(organization=globex.tenant.organization)
    )
    assert globex.world.webhook_delivery in listing.context["cl"].result_list
    assert not leaked(listing, acme, deliveries)  # the endpoint filter names theirs only
    assert scoped.get(f"{deliveries}?endpoint={theirs_endpoint.pk}").context["cl"].result_count == 0
    assert fingerprint(acme) == before

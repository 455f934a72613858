"""The dashboard's pages: the organization chooser and one organization's numbers and charts.
Staff only (admin_view, in urls.py), and only the organizations the user may see."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from bigmind.admin_tenancy import admin_organizations
from events_app.dashboard.charts import chart_of, chart_svg
from events_app.dashboard.selectors import LATENCY_SAMPLE_SIZE, dashboard_get

ORGANIZATION_LIST_LIMIT = 500


def _require_event_view_permission(request: HttpRequest) -> None:
    # admin_view has already required an active staff user; the numbers are events' numbers.
    if not request.user.has_perm("events_app.view_event"):
        raise PermissionDenied


def dashboard_index_view(request: HttpRequest) -> HttpResponse:
    _require_event_view_permission(request)
    # Only the organizations the user may see (a staff user limited to one: that one).
    organizations = list(
        admin_organizations(request)
        .order_by("slug")
        .only("slug", "name")[: ORGANIZATION_LIST_LIMIT + 1]
    )
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "organizations": organizations[:ORGANIZATION_LIST_LIMIT],
        "more_organizations": len(organizations) > ORGANIZATION_LIST_LIMIT,
        "limit": ORGANIZATION_LIST_LIMIT,
    }
    return render(request, "admin/dashboard.html", context)


def dashboard_organization_view(request: HttpRequest, slug: str) -> HttpResponse:
    _require_event_view_permission(request)
    # Another organization's page is "not found", like one that does not exist.
    organization = get_object_or_404(admin_organizations(request), slug=slug)
    dashboard = dashboard_get(organization=organization)
    rows = [
        {
            "signal": signal,
            "charts": [
                chart_svg(chart_of(signal.hourly, hourly=True), name=signal.name),
                chart_svg(chart_of(signal.daily, hourly=False), name=signal.name),
            ],
        }
        for signal in dashboard.signals
    ]
    context = {
        **admin.site.each_context(request),
        "title": f"Dashboard: {organization.name or organization.slug}",
        "organization": organization,
        "dashboard": dashboard,
        "rows": rows,
        "latency_sample_limit": f"{LATENCY_SAMPLE_SIZE:,}",
    }
    return render(request, "admin/dashboard.html", context)

"""The admin site as Bigmind Signals: its name in the header, the title and the index, and
"View site" leading to the events dashboard (the site's own front page) rather than back to
the admin index."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import HttpRequest
from django.urls import reverse_lazy

SITE_NAME = "Bigmind Signals"


class BigmindAdminSite(admin.AdminSite):
    site_header = SITE_NAME
    site_title = SITE_NAME
    index_title = "Administration"
    # Lazy: the URLconf is not loaded yet when the site is made.
    site_url = reverse_lazy("dashboard:index")  # type: ignore[assignment]

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        if not request.user.has_perm("events_app.view_event"):
            # The dashboard would refuse them (403): no "View site" link to it.
            context["site_url"] = None
        return context


class BigmindAdminConfig(AdminConfig):
    """django.contrib.admin with BigmindAdminSite as `admin.site` (INSTALLED_APPS)."""

    default_site = "bigmind.admin_site.BigmindAdminSite"

"""The dashboard's routes, mounted at admin/dashboard/ (namespace "dashboard")."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, path

from events_app.dashboard.views import dashboard_index_view, dashboard_organization_view

# Mounted at admin/dashboard/ in bigmind/urls.py, before admin.site.urls (whose catch-all
# would answer first). admin_view: staff only, anyone else goes to the admin login.
urlpatterns: list[URLPattern] = [
    path("", admin.site.admin_view(dashboard_index_view), name="index"),
    path("<slug:slug>/", admin.site.admin_view(dashboard_organization_view), name="organization"),
]

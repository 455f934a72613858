"""The admin of organizations and of the memberships that limit staff users to one."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from bigmind.admin_tenancy import OrganizationScopedAdmin, admin_scope
from bigmind.errors import ApplicationError
from signals_app import organizations
from signals_app.admin.display import SIGNALS_ADMIN_CSS, clipped
from signals_app.models import Organization, OrganizationMembership


@admin.register(Organization)
class OrganizationAdmin(OrganizationScopedAdmin):
    list_display = ("slug", "short_name", "created_at")

    class Media:
        css = SIGNALS_ADMIN_CSS

    search_fields = ("slug", "name")
    organization_lookup = "pk"

    @admin.display(description="Name", ordering="name")
    def short_name(self, obj: Organization) -> str:
        return clipped(obj.name)

    # Scoped staff see their own organization, read-only; only superusers add or change them.
    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        return admin_scope(request).everything and super().has_add_permission(request, *args)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin_scope(request).everything and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return admin_scope(request).everything and super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Organization, form: Any, change: bool) -> None:
        # The services `create_organization` uses, which record the change in the audit log;
        # the form has checked the slug is free.
        try:
            if change:
                saved = organizations.organization_update(
                    organization=obj, slug=obj.slug, name=obj.name
                )
            else:
                saved, _ = organizations.organization_get_or_create(slug=obj.slug, name=obj.name)
        except ApplicationError as exc:
            raise forms.ValidationError(exc.message) from exc
        obj.pk = saved.pk
        obj.__dict__.update(saved.__dict__)

    def delete_model(self, request: HttpRequest, obj: Organization) -> None:
        organizations.organization_delete(organization=obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Organization]) -> None:
        # One by one (not Django's bulk delete): each deletion is its own audit entry.
        for organization in queryset:
            organizations.organization_delete(organization=organization)


@admin.register(OrganizationMembership)
class OrganizationMembershipAdmin(admin.ModelAdmin):
    """Who is limited to which organization. Superusers only: a membership is a permission."""

    list_display = ("user", "organization", "created_at")
    list_select_related = ("user", "organization")
    list_filter = ("organization",)
    search_fields = ("user__username", "user__email", "organization__slug")
    raw_id_fields = ("user",)

    class Media:
        css = SIGNALS_ADMIN_CSS

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.has_module_permission(request)

    # Through the services: each change is recorded in the audit log.
    def save_model(
        self, request: HttpRequest, obj: OrganizationMembership, form: Any, change: bool
    ) -> None:
        organizations.membership_save(membership=obj)

    def delete_model(self, request: HttpRequest, obj: OrganizationMembership) -> None:
        organizations.membership_delete(membership=obj)

    def delete_queryset(
        self, request: HttpRequest, queryset: QuerySet[OrganizationMembership]
    ) -> None:
        for membership in queryset.select_related("user", "organization"):
            organizations.membership_delete(membership=membership)

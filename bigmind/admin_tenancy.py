"""Admin tenancy: which organizations a staff user reaches in the admin, and a ModelAdmin cut
to them (docs/operations.md, "Staff and organizations"). Every app's admin and the dashboard
build on it.

The kernel imports no app, so the two models this needs are named in settings, as Django names
the user model in AUTH_USER_MODEL, and looked up with `apps.get_model` when first used:
BIGMIND_ADMIN_TENANT_MODEL (the organizations) and BIGMIND_ADMIN_MEMBERSHIP_MODEL (which user
is limited to which one: its fields `user` and `organization`). Preferred to the reverse
relation on `request.user` (`user.organization_membership`): that spells the membership's
`related_name` here all the same, raises when a user has none, and still gives no way to the
organization model itself, which `admin_organizations` and the form fields need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import Http404, HttpRequest

from bigmind.replicas import ReplicaListAdmin


def tenant_model() -> type[models.Model]:
    """The organization model (BIGMIND_ADMIN_TENANT_MODEL)."""
    return apps.get_model(settings.BIGMIND_ADMIN_TENANT_MODEL)


def membership_model() -> type[models.Model]:
    """The model limiting a staff user to one organization (BIGMIND_ADMIN_MEMBERSHIP_MODEL)."""
    return apps.get_model(settings.BIGMIND_ADMIN_MEMBERSHIP_MODEL)


@dataclass(frozen=True)
class AdminScope:
    """The organizations a staff user reaches in the admin (docs/operations.md, "Staff and
    organizations"): superusers every one; other staff only their membership's organization,
    and none at all without a membership."""

    everything: bool
    organization_id: int | None = None

    @property
    def restricted(self) -> bool:
        return not self.everything


_SCOPE_ATTRIBUTE = "_bigmind_admin_scope"


def admin_scope(request: HttpRequest) -> AdminScope:
    """The request user's scope; one query per request at most (kept on the request)."""
    scope: AdminScope | None = getattr(request, _SCOPE_ATTRIBUTE, None)
    if scope is not None:
        return scope
    user = request.user
    if user.is_active and user.is_superuser:
        scope = AdminScope(everything=True)
    else:
        organization_id = None
        if user.is_authenticated:
            organization_id = (
                membership_model()
                ._default_manager.filter(user_id=user.pk)
                .values_list("organization_id", flat=True)
                .first()
            )
        scope = AdminScope(everything=False, organization_id=organization_id)
    setattr(request, _SCOPE_ATTRIBUTE, scope)
    return scope


_ModelT = TypeVar("_ModelT", bound=models.Model)


def admin_scope_filter(
    queryset: QuerySet[_ModelT], *, request: HttpRequest, lookup: str
) -> QuerySet[_ModelT]:
    """`queryset` cut to the user's organization; `lookup` leads from its model to the
    organization's id (`organization`, `signal__organization`, `pk` for Organization itself)."""
    scope = admin_scope(request)
    if scope.everything:
        return queryset
    if scope.organization_id is None:
        return queryset.none()
    return queryset.filter(**{lookup: scope.organization_id})


def admin_organizations(request: HttpRequest) -> QuerySet[Any]:
    """The organizations the user may see (the dashboard's chooser and pages use it too)."""
    return admin_scope_filter(tenant_model()._default_manager.all(), request=request, lookup="pk")


# Tried in order on a model's own foreign keys to find its way to the organization.
_ORGANIZATION_PATHS = (
    "organization",
    "signal__organization",
    "crm_record__organization",
    "event__organization",
)


def organization_lookup_of(model: type[models.Model]) -> str | None:
    if model is tenant_model():
        return "pk"
    own = {field.name for field in model._meta.fields}
    return next((p for p in _ORGANIZATION_PATHS if p.split("__")[0] in own), None)


class OrganizationScopedAdmin(ReplicaListAdmin):
    """A ModelAdmin for an organization-owned model, cut to the user's AdminScope; its list
    page reads from a read replica when there is one (bigmind/replicas.py).

    Lists, change pages, actions, history and deletes all read `get_queryset`, so an object of
    another organization is simply not there: its pages answer 404 (like a missing one), and a
    forged action selection drops it. Foreign-key choices in forms are cut the same way, so a
    scoped user cannot pick (nor post) another organization or its signals.
    """

    # From the model to the organization's id.
    organization_lookup = "organization"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return admin_scope_filter(
            super().get_queryset(request), request=request, lookup=self.organization_lookup
        )

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> Any:
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            # Django would redirect to the index saying it does not exist; a plain 404 is the
            # same answer for a missing object and another organization's.
            raise Http404(f"No {self.opts.verbose_name} with this id")
        return obj

    def get_list_filter(self, request: HttpRequest) -> Any:
        filters = super().get_list_filter(request)
        if admin_scope(request).everything:
            return filters
        # Django's organization filter lists every organization, whatever the queryset.
        return tuple(f for f in filters if f != "organization")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        scope = admin_scope(request)
        lookup = organization_lookup_of(db_field.related_model)
        if scope.restricted and lookup is not None and "queryset" not in kwargs:
            related = db_field.related_model._default_manager.all()
            kwargs["queryset"] = admin_scope_filter(related, request=request, lookup=lookup)
            if db_field.related_model is tenant_model():
                kwargs["empty_label"] = None  # their one organization, preselected
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_add_permission(self, request: HttpRequest, *args: Any) -> bool:
        scope = admin_scope(request)
        if scope.restricted and scope.organization_id is None:
            return False  # nothing they add could belong to an organization they may see
        return super().has_add_permission(request, *args)

    def scoped_organization(self, request: HttpRequest, chosen: Any) -> Any:
        """The organization a new object goes to: the chosen one, which for a scoped user can
        only be their own (the form offers nothing else; this holds even if it did)."""
        scope = admin_scope(request)
        if scope.restricted and chosen.pk != scope.organization_id:
            raise PermissionDenied
        return chosen

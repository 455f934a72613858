"""Writes of organizations and of the memberships that limit staff users to one: created,
changed and deleted, each with its audit entry (signals_app/audit.py) in the same transaction.
`signals_app.services` re-exports `organization_get_or_create`, which most callers know it by."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils.text import slugify

from bigmind.errors import BadRequest, Conflict
from signals_app.audit import audit_diff, audit_record
from signals_app.models import Organization, OrganizationMembership
from signals_app.selectors import api_key_cache_invalidate, signal_cache_invalidate


# --- Organizations ----------------------------------------------------------------------------
def _organization_slug_check(slug: str) -> str:
    clean = slugify(slug)
    if not clean or clean != slug:
        raise BadRequest(
            f"Organization slug must be lowercase letters, digits and hyphens: {slug!r}"
        )
    return slug


def organization_get_or_create(*, slug: str, name: str | None = None) -> tuple[Organization, bool]:
    _organization_slug_check(slug)
    with transaction.atomic():
        organization, created = Organization.objects.get_or_create(
            slug=slug, defaults={"name": name or slug}
        )
        if created:
            audit_record(
                action="organization.created",
                organization=organization,
                object_type="organization",
                object_id=organization.pk,
                object_repr=organization.slug,
                changes=audit_diff({}, {"slug": organization.slug, "name": organization.name}),
            )
        elif name and organization.name != name:
            organization = organization_update(organization=organization, name=name)
    return organization, created


def organization_update(*, organization: Organization, **changes: Any) -> Organization:
    """Rename an organization or change its slug (the admin's change page). Compares against
    the stored row: a ModelForm has already written the new values onto `organization`."""
    unknown = set(changes) - {"slug", "name"}
    if unknown:
        raise BadRequest(f"Unknown organization fields: {', '.join(sorted(unknown))}")
    if "slug" in changes:
        _organization_slug_check(changes["slug"])
    if "name" in changes and (not isinstance(changes["name"], str) or not changes["name"]):
        raise BadRequest("An organization needs a name")
    try:
        with transaction.atomic():
            stored = Organization.objects.select_for_update().get(pk=organization.pk)
            before = {"slug": stored.slug, "name": stored.name}
            for field_name, value in changes.items():
                setattr(stored, field_name, value)
            diff = audit_diff(before, {"slug": stored.slug, "name": stored.name})
            if diff:
                stored.save(update_fields=list(diff))
                audit_record(
                    action="organization.updated",
                    organization=stored,
                    object_type="organization",
                    object_id=stored.pk,
                    object_repr=stored.slug,
                    changes=diff,
                )
    except IntegrityError as exc:
        raise Conflict(f"An organization with slug {changes.get('slug')!r} exists already") from exc
    return stored


def organization_delete(*, organization: Organization) -> None:
    """Delete an organization with everything it owns (signals, keys, events, endpoints...).

    The entry keeps the organization's id and slug as text, so it outlives it."""
    with transaction.atomic():
        key_hashes = list(organization.api_keys.values_list("key_hash", flat=True))
        slugs = list(organization.signals.values_list("slug", flat=True))
        org_id, slug = organization.pk, organization.slug
        audit_record(
            action="organization.deleted",
            organization=organization,
            object_type="organization",
            object_id=org_id,
            object_repr=slug,
            changes=audit_diff(
                {"slug": slug, "name": organization.name}, {"slug": None, "name": None}
            ),
        )
        organization.delete()

    def invalidate() -> None:
        # Its keys must stop working now, not when their cached lookups expire.
        for key_hash in key_hashes:
            api_key_cache_invalidate(key_hash=key_hash)
        for signal_slug in slugs:
            signal_cache_invalidate(organization_id=org_id, slug=signal_slug)

    transaction.on_commit(invalidate)


# --- Memberships (which staff user is limited to which organization) ---------------------------
def _membership_fields(membership: OrganizationMembership) -> dict[str, Any]:
    return {"user": membership.user.get_username(), "organization": membership.organization.slug}


def _membership_audit(action: str, membership: OrganizationMembership, diff: Any) -> None:
    audit_record(
        action=action,
        organization=membership.organization,
        object_type="membership",
        object_id=membership.pk,
        object_repr=str(membership),
        changes=diff,
    )


def membership_user_deleted(*, user: Any) -> None:
    """A user is being deleted: their membership goes with it (a cascade no service runs), so
    its entry is written here, in the deletion's transaction (Django's delete runs in one).
    Connected to the user model's pre_delete in SignalsAppConfig.ready."""
    membership = OrganizationMembership.objects.filter(user=user).select_related(
        "organization", "user"
    )
    for found in membership:
        diff = audit_diff(_membership_fields(found), {"user": None, "organization": None})
        _membership_audit("membership.deleted", found, diff)


def membership_save(*, membership: OrganizationMembership) -> OrganizationMembership:
    """Create or change a membership (the admin's form has set its user and organization)."""
    with transaction.atomic():
        stored = (
            OrganizationMembership.objects.select_related("user", "organization")
            .filter(pk=membership.pk)
            .first()
            if membership.pk
            else None
        )
        before = _membership_fields(stored) if stored is not None else {}
        membership.save()
        diff = audit_diff(before, _membership_fields(membership))
        if diff:
            _membership_audit(
                "membership.updated" if stored else "membership.created", membership, diff
            )
    return membership


def membership_delete(*, membership: OrganizationMembership) -> None:
    with transaction.atomic():
        diff = audit_diff(_membership_fields(membership), {"user": None, "organization": None})
        _membership_audit("membership.deleted", membership, diff)
        membership.delete()

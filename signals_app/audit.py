"""The audit log: every change to organizations, memberships, signals, schema versions, API keys
and webhook endpoints, recorded by the service that makes it, in the change's own transaction
(docs/governance.md, "Audit log").

Who made the change is not passed down through every service: it is read, when an entry is
written, from the context of the request or command that is running.

- A command (the control plane's commands derive from `_base.ControlPlaneCommand`) names
  itself with `audit_actor`.
- A web request is held by `AuditActorMiddleware` for the length of the request; its user is
  looked at only when an entry is written, so a request that changes nothing pays no query:
  an admin user (Django's session user) or an API client (the `ApiClient` DRF's key
  authentication put in `request.user`, recorded by its key's prefix).
- Anything else (a worker disabling a failing endpoint) is `system`.

Secrets never reach an entry: the services pass no secret's value, and `audit_record` masks
the fields that hold one (`SECRET_FIELDS`) whatever it is given, so an entry only says that
the secret changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from bigmind.logs import log_context
from signals_app.models import ApiKey, AuditActorKind, AuditEntry, Organization

# What an entry shows, old and new, for a field that holds a secret.
SECRET_MASK = "[secret]"  # noqa: S105 - a placeholder shown instead of one
# Fields whose values are secrets (or derived from one): an API key's hash, the raw key, a
# webhook endpoint's signing secret and the encrypted copies of it and its predecessors.
SECRET_FIELDS = frozenset({"key_hash", "raw_key", "secret", "secret_encrypted", "previous_secrets"})

_actor: ContextVar[tuple[str, str] | None] = ContextVar("bigmind_audit_actor", default=None)
_request: ContextVar[HttpRequest | None] = ContextVar("bigmind_audit_request", default=None)


@contextmanager
def audit_actor(kind: str, name: str) -> Iterator[None]:
    """Changes made inside are recorded as made by this actor (a command, by its name)."""
    token = _actor.set((kind, name))
    try:
        yield
    finally:
        _actor.reset(token)


class AuditActorMiddleware:
    """Holds the request while it is handled, so that an entry written by a service can name
    the request's user or API key. Reset at the end: a thread serves many requests."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(token)


def audit_current_actor() -> tuple[str, str]:
    """(actor kind, actor) for an entry written now."""
    explicit = _actor.get()
    if explicit is not None:
        return explicit
    request = _request.get()
    # DRF's authentication sets the API client on the HttpRequest; the admin has Django's
    # (lazy) session user there. Read from __dict__: a request with neither has no user.
    user = request.__dict__.get("user") if request is not None else None
    if user is not None:
        api_key_id = getattr(user, "api_key_id", None)
        if api_key_id is not None:
            # The prefix is not in the cached key lookup; one query, for a change only.
            prefix = ApiKey.objects.filter(pk=api_key_id).values_list("prefix", flat=True).first()
            return AuditActorKind.API_KEY, prefix or f"#{api_key_id}"
        if getattr(user, "is_authenticated", False):
            return AuditActorKind.USER, user.get_username()
    return AuditActorKind.SYSTEM, ""


def _plain(value: Any) -> Any:
    """A JSON value: times as ISO 8601 UTC text to the microsecond (DjangoJSONEncoder would cut
    them to milliseconds, making a time differ from the stored one)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def audit_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{field: [old, new]} for each field of `new` whose value differs from `old`'s (a field
    missing from `old` counts as None: a creation is a diff against nothing, leaving out the
    fields it leaves empty)."""
    changes: dict[str, list[Any]] = {}
    for name, value in new.items():
        before, after = _plain(old.get(name)), _plain(value)
        if name not in old and after in ("", [], {}):
            continue  # a created object's empty settings say nothing
        if before != after:
            changes[name] = [before, after]
    return changes


def audit_record(
    *,
    action: str,
    organization: Organization | None,
    object_type: str,
    object_id: Any = "",
    object_repr: str = "",
    changes: Mapping[str, list[Any]] | None = None,
) -> AuditEntry:
    """Write one entry. Called by the service that makes the change, inside its transaction,
    so that the change and its entry are committed (or rolled back) together."""
    if not transaction.get_connection().in_atomic_block:
        # A programming error: an entry committed on its own could outlive a failed change.
        raise RuntimeError(f"audit_record({action!r}) must run in the change's transaction")
    kind, actor = audit_current_actor()
    masked = {
        name: [SECRET_MASK, SECRET_MASK] if name in SECRET_FIELDS else [_plain(v) for v in pair]
        for name, pair in (changes or {}).items()
    }
    return AuditEntry.objects.create(
        actor_kind=kind,
        actor=actor[:150],
        organization_pk=organization.pk if organization is not None else None,
        organization_slug=organization.slug if organization is not None else "",
        action=action,
        object_type=object_type,
        object_id=str(object_id)[:64],
        object_repr=object_repr[:200],
        changes=masked,
        request_id=str((log_context() or {}).get("request_id") or "")[:128],
    )


# --- Reading it --------------------------------------------------------------------------------
def audit_entries_list(
    *, organization_slug: str | None = None, since: datetime | None = None
) -> QuerySet[AuditEntry]:
    """Entries oldest first, optionally of one organization and from a time on.

    The organization is named by its slug: an existing one's entries are found by its id (those
    written before a rename carry the old slug); a deleted one's by the slug it had."""
    entries = AuditEntry.objects.order_by("at", "id")
    if organization_slug is not None:
        pk = Organization.objects.filter(slug=organization_slug).values_list("pk", flat=True)
        existing = pk.first()
        if existing is not None:
            entries = entries.filter(organization_pk=existing)
        else:
            entries = entries.filter(organization_slug=organization_slug)
    if since is not None:
        entries = entries.filter(at__gte=since)
    return entries


def audit_entry_as_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.pk,
        "at": entry.at.isoformat().replace("+00:00", "Z"),
        "actor_kind": entry.actor_kind,
        "actor": entry.actor,
        "organization_id": entry.organization_pk,
        "organization": entry.organization_slug or None,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "object": entry.object_repr,
        "changes": entry.changes,
        "request_id": entry.request_id or None,
    }

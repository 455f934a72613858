"""Webhook endpoints: created, changed, rotated, and the secrets that sign for them now.

The admin and the API (as they land, issue #14) call these, so the rules live once: the URL rule
of addresses.py, event types from WebhookEventType (or "*"), signals by slug from the
organization's own signals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from bigmind.errors import ApplicationError
from events_app.models import WebhookEndpoint, WebhookEventType
from events_app.webhooks.addresses import UnsafeUrl, url_check
from events_app.webhooks.secrets import secret_decrypt, secret_encrypt, secret_new
from signals_app.audit import audit_diff, audit_record
from signals_app.models import Organization, Signal
from signals_app.services import base62

ID_PREFIX = "we_"
# Sent by the test call only; an endpoint cannot subscribe to it.
SUBSCRIBABLE = sorted(t.value for t in WebhookEventType if t != WebhookEventType.PING)
# How long the secret before a rotation keeps signing beside the new one.
ROTATION_OVERLAP = timedelta(hours=24)
MAX_SIGNALS = 100


class InvalidEndpoint(ApplicationError):
    status_code = 400
    code = "invalid_webhook_endpoint"


@dataclass(frozen=True)
class Created:
    endpoint: WebhookEndpoint
    secret: str  # shown once, in the answer that creates or rotates it


def _problem(field: str, message: str) -> InvalidEndpoint:
    return InvalidEndpoint(f"{field}: {message}", details=[{"field": field, "message": message}])


def _url(url: Any) -> str:
    if not isinstance(url, str) or not url:
        raise _problem("url", "a non-empty string is required")
    try:
        return url_check(url, allow_private=settings.BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS)
    except UnsafeUrl as error:
        raise _problem("url", str(error)) from None


def _event_types(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _problem("events", 'a non-empty list of event types, or ["*"]')
    if value == ["*"]:
        return value
    unknown = sorted(set(value) - set(SUBSCRIBABLE))
    if unknown:
        raise _problem("events", f"unknown event types {unknown}; one of {SUBSCRIBABLE} or *")
    return sorted(set(value))


def _signals(organization: Organization, value: Any) -> list[int]:
    """Signal slugs (as the API and the admin take them) to the ids the endpoint keeps."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _problem("signals", "a list of signal slugs (empty for all)")
    if len(value) > MAX_SIGNALS:
        # One query parameter per slug: SQLite caps them, and no filter needs this many.
        raise _problem("signals", f"at most {MAX_SIGNALS} signal slugs")
    wanted = sorted(set(value))
    known = dict(
        Signal.objects.filter(organization=organization, slug__in=wanted).values_list("slug", "pk")
    )
    missing = [slug for slug in wanted if slug not in known]
    if missing:
        raise _problem("signals", f"no such signal in this organization: {missing}")
    return sorted(known[slug] for slug in wanted)


def signal_slugs(endpoint: WebhookEndpoint) -> list[str]:
    """The slugs of the signals the endpoint filters on, as they are now."""
    return sorted(Signal.objects.filter(pk__in=endpoint.signal_ids).values_list("slug", flat=True))


def _description(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 500:
        raise _problem("description", "a string of at most 500 characters")
    return value


def _enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _problem("enabled", "true or false")
    return value


def _audited(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint's fields as its audit entries show them: never a secret."""
    return {
        "url": endpoint.url,
        "events": endpoint.event_types,
        "signals": signal_slugs(endpoint),
        "description": endpoint.description,
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
    }


def _audit(action: str, endpoint: WebhookEndpoint, changes: dict[str, list[Any]]) -> None:
    audit_record(
        action=f"webhook_endpoint.{action}",
        organization=endpoint.organization,
        object_type="webhook_endpoint",
        object_id=endpoint.public_id,
        object_repr=endpoint.url,
        changes=changes,
    )


def endpoint_create(
    *,
    organization: Organization,
    url: Any,
    events: Any,
    signals: Any = None,
    description: Any = None,
    enabled: Any = True,
) -> Created:
    secret = secret_new()
    with transaction.atomic():
        endpoint = WebhookEndpoint.objects.create(
            public_id=ID_PREFIX + base62(12),
            organization=organization,
            url=_url(url),
            description=_description(description),
            event_types=_event_types(events),
            signal_ids=_signals(organization, signals),
            enabled=_enabled(enabled),
            secret_encrypted=secret_encrypt(secret),
        )
        # The secret only as "set" (audit_record masks it): never its value.
        _audit("created", endpoint, audit_diff({}, _audited(endpoint)) | {"secret": ["", ""]})
    return Created(endpoint=endpoint, secret=secret)


def endpoint_update(endpoint: WebhookEndpoint, **changes: Any) -> WebhookEndpoint:
    """Change the given fields (url, events, signals, description, enabled). Enabling an
    endpoint that was disabled for failing clears the reason and the failure run."""
    before = _audited(endpoint)
    fields = ["updated_at"]
    if "url" in changes:
        endpoint.url = _url(changes["url"])
        fields.append("url")
    if "events" in changes:
        endpoint.event_types = _event_types(changes["events"])
        fields.append("event_types")
    if "signals" in changes:
        endpoint.signal_ids = _signals(endpoint.organization, changes["signals"])
        fields.append("signal_ids")
    if "description" in changes:
        endpoint.description = _description(changes["description"])
        fields.append("description")
    if "enabled" in changes:
        enabled = _enabled(changes["enabled"])
        if enabled and not endpoint.enabled:
            # Only a real re-enable restarts the failure clock: a client sending the whole
            # object back with `enabled: true` must not keep a dead endpoint alive.
            endpoint.disabled_reason = ""
            endpoint.failing_since = None
            fields += ["disabled_reason", "failing_since"]
        endpoint.enabled = enabled
        fields.append("enabled")
    with transaction.atomic():
        endpoint.save(update_fields=fields)
        diff = audit_diff(before, _audited(endpoint))
        if diff:
            _audit("updated", endpoint, diff)
    return endpoint


def endpoint_delete(endpoint: WebhookEndpoint) -> None:
    """The endpoint and its deliveries (the ORM deletes them: their foreign key has no database
    constraint, see WebhookDelivery). One written meanwhile is dropped by the sweep."""
    with transaction.atomic():
        before = _audited(endpoint)
        _audit("deleted", endpoint, audit_diff(before, dict.fromkeys(before)))
        endpoint.delete()


def endpoint_rotate_secret(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> Created:
    """A new secret; the current one keeps signing beside it for ROTATION_OVERLAP, as do earlier
    ones still within theirs."""
    now = now or timezone.now()
    secret = secret_new()
    with transaction.atomic():
        locked = WebhookEndpoint.objects.select_for_update().get(pk=endpoint.pk)
        live = [p for p in locked.previous_secrets if _expires(p) > now]
        locked.previous_secrets = [
            {"secret": locked.secret_encrypted, "expires_at": (now + ROTATION_OVERLAP).isoformat()},
            *live,
        ]
        locked.secret_encrypted = secret_encrypt(secret)
        locked.save(update_fields=["previous_secrets", "secret_encrypted", "updated_at"])
        # That it changed, never what to (audit_record masks the field's values).
        _audit("secret_rotated", locked, {"secret": ["", ""]})
    return Created(endpoint=locked, secret=secret)


def endpoint_disable(endpoint: WebhookEndpoint, *, failing_before: datetime, reason: str) -> bool:
    """Disable an endpoint still enabled and failing since before `failing_before` (the sender,
    once every delivery has failed for long enough); recorded as a change by the system. False
    when another sender did it first, or it recovered or was re-enabled meanwhile."""
    with transaction.atomic():
        disabled = WebhookEndpoint.objects.filter(
            pk=endpoint.pk, enabled=True, failing_since__lte=failing_before
        ).update(enabled=False, disabled_reason=reason)
        if disabled:
            before = {"enabled": True, "disabled_reason": endpoint.disabled_reason}
            after = {"enabled": False, "disabled_reason": reason}
            _audit("disabled", endpoint, audit_diff(before, after))
    return bool(disabled)


def _expires(previous: dict[str, str]) -> datetime:
    return datetime.fromisoformat(previous["expires_at"])


def signing_secrets(endpoint: WebhookEndpoint, *, now: datetime | None = None) -> list[str]:
    """The live secrets, newest first: one `v1=` each in Bigmind-Signature."""
    now = now or timezone.now()
    live = [secret_decrypt(endpoint.secret_encrypted)]
    live += [secret_decrypt(p["secret"]) for p in endpoint.previous_secrets if _expires(p) > now]
    return live


def wants(endpoint: WebhookEndpoint, event_type: str, signal_id: int | None) -> bool:
    """Whether the endpoint subscribes to this type (and signal, when there is one)."""
    if not endpoint.enabled:
        return False
    if endpoint.event_types != ["*"] and event_type not in endpoint.event_types:
        return False
    return not (
        endpoint.signal_ids and signal_id is not None and signal_id not in endpoint.signal_ids
    )


def subscribed(
    endpoints: Sequence[WebhookEndpoint], event_type: str, signal_id: int | None
) -> list[WebhookEndpoint]:
    return [e for e in endpoints if wants(e, event_type, signal_id)]


def signal_deleted(*, signal_id: int, organization_id: int, slug: str) -> None:
    """A signal is gone: endpoints stop naming it. One whose filter named only deleted signals
    is disabled, with the reason, instead of being left with an empty filter (which means
    "every signal") or with ids that match nothing while the API shows none. (Connected to
    Signal's post_delete in EventsAppConfig.ready; signals_app does not know about endpoints.)"""
    for endpoint in WebhookEndpoint.objects.filter(organization_id=organization_id).exclude(
        signal_ids=[]
    ):
        if signal_id not in endpoint.signal_ids:
            continue
        before = _audited(endpoint)
        endpoint.signal_ids = [i for i in endpoint.signal_ids if i != signal_id]
        fields = ["signal_ids", "updated_at"]
        if not endpoint.signal_ids:
            endpoint.enabled = False
            endpoint.disabled_reason = (
                "Disabled: its signal filter named only signals that were deleted. Choose "
                "signals (or none, for all) and enable it again."
            )
            fields += ["enabled", "disabled_reason"]
        endpoint.save(update_fields=fields)
        # In the deletion's transaction, by whoever deleted the signal. Its row is gone already,
        # so its slug is put back into what the filter named before.
        before["signals"] = sorted([*before["signals"], slug])
        action = "disabled" if not endpoint.enabled else "updated"
        _audit(action, endpoint, audit_diff(before, _audited(endpoint)))

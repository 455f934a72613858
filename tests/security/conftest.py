"""Two organizations with one of everything, for the security suite (docs/security.md).

"acme" is the victim whose objects are probed, "globex" the other tenant whose key does the
probing. Every acme-only identifier carries the marker `acme` so that an answer to globex can be
searched for anything of acme's it should not hold (after removing what the request itself
echoes back, such as the slug in "Signal not found: <slug>").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.test import Client

from events_app.models import CrmRecord, Event, RejectedEvent, WebhookDelivery, WebhookEndpoint
from signals_app.models import AuditEntry, SchemaVersion, Signal
from tests.conftest import SEED_REQUEST, Tenant
from tests.signals_app.test_admin_permissions import World, build_world

ALL_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
# The same idempotency key in both organizations: each must be independent of the other.
SHARED_IDEMPOTENCY_KEY = "same-key-in-both-organizations"
# A CRM record id both organizations use: each sees only its own record under it.
SHARED_RECORD = ("account", "SHARED-0001")
DOCS_SCHEMA = {
    "type": "object",
    "required": ["page"],
    "properties": {"page": {"type": "string"}},
}


def send(
    client: Client,
    method: str,
    path: str,
    *,
    key: str | None,
    body: Any = None,
    query: dict[str, str] | None = None,
    **headers: str,
) -> Any:
    """One request through the whole stack with `Authorization: Bearer <key>` (if any)."""
    if key is not None:
        headers.setdefault("Authorization", f"Bearer {key}")
    data = "" if body is None else json.dumps(body)
    if query:
        from urllib.parse import urlencode

        path = f"{path}?{urlencode(query)}"
    return client.generic(method, path, data, content_type="application/json", headers=headers)


def ingest_payload(slug: str, **overrides: Any) -> dict[str, Any]:
    payload = json.loads(json.dumps(SEED_REQUEST))
    payload.update({"signal": slug, **overrides})
    return payload


@dataclass
class Org:
    """A tenant with data made through the real services and the real API."""

    tenant: Tenant
    world: World
    only_signal: Signal  # a slug only this organization has, with schema v1
    inactive_signal: Signal
    shared_signal: Signal  # a slug both organizations have
    ingested_event_id: str  # through POST /v1/events with SHARED_IDEMPOTENCY_KEY
    ingested_payload: dict[str, Any]
    shared_record_event_id: str
    rejection_ids: list[str] = field(default_factory=list)
    next_cursor_events: str | None = None
    next_cursor_rejections: str | None = None
    webhook_endpoint_ids: list[str] = field(default_factory=list)  # `we_…`, newest first
    webhook_delivery_ids: list[str] = field(default_factory=list)  # `whevt_…`
    next_cursor_webhook_endpoints: str | None = None

    @property
    def slug(self) -> str:
        return self.tenant.organization.slug

    @property
    def key(self) -> str:
        return self.tenant.raw_key

    def event_ids(self) -> set[str]:
        return {
            str(pk)
            for pk in Event.objects.filter(organization=self.tenant.organization).values_list(
                "pk", flat=True
            )
        }

    def markers(self) -> set[str]:
        """Strings that belong to this organization alone: none may reach the other tenant."""
        organization = self.tenant.organization
        found = {
            *self.event_ids(),
            *(
                str(pk)
                for pk in RejectedEvent.objects.filter(organization=organization).values_list(
                    "pk", flat=True
                )
            ),
            *Signal.objects.filter(organization=organization).values_list("public_id", flat=True),
            *CrmRecord.objects.filter(organization=organization)
            .exclude(external_id=SHARED_RECORD[1])
            .exclude(external_id="A1")  # build_world's record id, the same in both
            .values_list("external_id", flat=True),
            self.only_signal.slug,
            self.inactive_signal.slug,
            f"{self.slug}-ref-1",
            f"{self.slug}-secret-page",
            self.tenant.api_key.prefix,
            f"{self.slug}-hooks",
            *self.webhook_endpoint_ids,
            *self.webhook_delivery_ids,
            *(
                str(pk)
                for pk in WebhookDelivery.objects.filter(organization=organization).values_list(
                    "pk", flat=True
                )
            ),
            *WebhookEndpoint.objects.filter(organization=organization).values_list(
                "public_id", flat=True
            ),
            *(
                d.webhook_event_id
                for d in WebhookDelivery.objects.filter(organization=organization)
            ),
        }
        return {marker for marker in found if marker}


def build_org(make_tenant: Callable[[str], Tenant], slug: str) -> Org:
    tenant = make_tenant(slug)
    world = build_world(tenant)
    only = tenant.signal(f"{slug}-only-docs", schema=DOCS_SCHEMA)
    inactive = tenant.signal(f"{slug}-only-retired", active=False)
    shared = tenant.signal("shared-slug")
    client = Client()
    payload = ingest_payload(
        only.slug,
        identity={"type": "account", "id": f"{slug.upper()}-ONLY-1"},
        data={"page": f"{slug}-secret-page"},
        reference=f"{slug}-ref-1",
        idempotency_key=SHARED_IDEMPOTENCY_KEY,
    )
    response = send(client, "POST", "/v1/events", key=tenant.raw_key, body=payload)
    assert response.status_code == 202, response.content
    on_shared = send(
        client,
        "POST",
        "/v1/events",
        key=tenant.raw_key,
        body=ingest_payload(
            shared.slug,
            identity={"type": SHARED_RECORD[0], "id": SHARED_RECORD[1]},
            reference=f"{slug}-ref-shared",
        ),
    )
    assert on_shared.status_code == 202, on_shared.content
    org = Org(
        tenant=tenant,
        world=world,
        only_signal=only,
        inactive_signal=inactive,
        shared_signal=shared,
        ingested_event_id=response.json()["data"]["id"],
        ingested_payload=payload,
        shared_record_event_id=on_shared.json()["data"]["id"],
    )
    # Two refusals the API records as rejections: an unknown signal, a schema violation.
    for body in (
        ingest_payload(f"{slug}-no-such-signal"),
        ingest_payload(only.slug, data={"page": 1}, reference=f"{slug}-bad"),
    ):
        refused = send(client, "POST", "/v1/events", key=tenant.raw_key, body=body)
        assert refused.status_code in (400, 404), refused.content
    first = send(client, "GET", "/v1/events", key=tenant.raw_key, query={"limit": "1"})
    org.next_cursor_events = first.json()["next_cursor"]
    first = send(client, "GET", "/v1/rejections", key=tenant.raw_key, query={"limit": "1"})
    org.next_cursor_rejections = first.json()["next_cursor"]
    org.rejection_ids = [
        str(pk)
        for pk in RejectedEvent.objects.filter(organization=tenant.organization).values_list(
            "pk", flat=True
        )
    ]
    assert org.next_cursor_events and org.next_cursor_rejections
    assert len(org.rejection_ids) >= 2
    # Two webhook endpoints through the API (one filtered on the organization's own signal),
    # and a ping to the first: a delivery to probe.
    for body in (
        {"url": f"https://93.184.215.14/{slug}-hooks", "events": ["*"]},
        {"url": f"https://93.184.215.14/{slug}-hooks/2", "events": ["*"], "signals": [only.slug]},
    ):
        made = send(client, "POST", "/v1/webhook-endpoints", key=tenant.raw_key, body=body)
        assert made.status_code == 201, made.content
        org.webhook_endpoint_ids.insert(0, made.json()["data"]["id"])
    ping = send(
        client,
        "POST",
        f"/v1/webhook-endpoints/{org.webhook_endpoint_ids[-1]}/test",
        key=tenant.raw_key,
    )
    assert ping.status_code == 202, ping.content
    org.webhook_delivery_ids.append(ping.json()["data"]["id"])
    first = send(client, "GET", "/v1/webhook-endpoints", key=tenant.raw_key, query={"limit": "1"})
    org.next_cursor_webhook_endpoints = first.json()["next_cursor"]
    assert org.next_cursor_webhook_endpoints
    return org


@pytest.fixture
def acme(make_tenant: Callable[[str], Tenant]) -> Org:
    return build_org(make_tenant, "acme")


@pytest.fixture
def globex(make_tenant: Callable[[str], Tenant]) -> Org:
    return build_org(make_tenant, "globex")


def fingerprint(org: Org) -> dict[str, Any]:
    """Everything the organization owns, as values: equal before and after means untouched."""
    organization = org.tenant.organization

    def rows(queryset: Any) -> list[tuple[Any, ...]]:
        return sorted(map(repr, queryset.values_list()))

    return {
        "signals": rows(Signal.objects.filter(organization=organization)),
        "schemas": rows(SchemaVersion.objects.filter(signal__organization=organization)),
        "events": rows(Event.objects.filter(organization=organization)),
        "records": rows(CrmRecord.objects.filter(organization=organization)),
        "rejections": rows(RejectedEvent.objects.filter(organization=organization)),
        "keys": rows(organization.api_keys.all()),
        "webhook_endpoints": rows(WebhookEndpoint.objects.filter(organization=organization)),
        "webhook_deliveries": rows(WebhookDelivery.objects.filter(organization=organization)),
        # A refused attempt records no change either.
        "audit_log": rows(AuditEntry.objects.filter(organization_pk=organization.pk)),
    }

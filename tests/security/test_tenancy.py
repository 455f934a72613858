"""One organization's key never reads or writes another's signals, events, records or rejections.

The matrix is built from the URL resolver: every pattern under /v1/ must have a probe here (or be
listed as public), and every method a view implements must be the one its probe expects, so a new
endpoint or method fails `test_every_v1_endpoint_and_method_has_a_probe` until it is covered.

For each probe globex's key sends every method to acme's objects and to objects that do not
exist, and the two answers must be the same (status, headers, body with the echoed identifier
masked): no existence oracle. Nothing of acme's may appear in an answer to globex unless globex
sent it itself, and acme's data must be byte-for-byte unchanged afterwards.

Keys limited within their own organization (scopes, signal allow-lists, expiry) are the same
matrix's other axis: tests/security/test_scopes.py walks this module's resolver walk for scopes,
and tests/security/test_key_limits.py probes allow-lists with the same no-oracle comparisons.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from events_app.models import CrmRecord, Event, RejectedEvent, WebhookEndpoint
from tests.security.conftest import (
    ALL_METHODS,
    SHARED_IDEMPOTENCY_KEY,
    SHARED_RECORD,
    Org,
    fingerprint,
    ingest_payload,
    send,
)

MASK = "<IDENTIFIER>"
# Headers whose value differs between any two requests, whatever they asked for.
_VOLATILE_HEADERS = {"x-request-id", "content-length", "date"}


@dataclass(frozen=True)
class Probe:
    """A request aimed at the victim's object, and the same request at one that never existed.

    `ident` / `missing_ident` are what the answer may echo back (a slug, an id): masked before
    the two answers are compared.
    """

    path: str
    missing_path: str
    ident: str | None = None
    missing_ident: str | None = None
    query: dict[str, str] | None = None
    missing_query: dict[str, str] | None = None
    body: Any = None
    missing_body: Any = None


@dataclass(frozen=True)
class Endpoint:
    handlers: frozenset[str]  # the methods its view implements, besides HEAD and OPTIONS
    probes: Callable[[Org], list[Probe]]


MISSING_SLUG = "never-existed-docs"
MISSING_UUID = "0190a0a0-0000-7000-8000-000000000000"


def _slug_probe(path: str, victim_slug: str, **extra: Any) -> Probe:
    return Probe(
        path=path.format(victim_slug),
        missing_path=path.format(MISSING_SLUG),
        ident=victim_slug,
        missing_ident=MISSING_SLUG,
        **extra,
    )


def _ingest_probes(victim: Org) -> list[Probe]:
    """Bodies naming the victim's signals: ingest, validate and batch must all say not found."""
    probes = []
    for signal in (victim.only_signal, victim.inactive_signal):
        probes.append(
            Probe(
                path="",
                missing_path="",
                ident=signal.slug,
                missing_ident=MISSING_SLUG,
                body=ingest_payload(signal.slug, data={"page": "/x"}),
                missing_body=ingest_payload(MISSING_SLUG, data={"page": "/x"}),
            )
        )
    # The victim's exact request, idempotency key and all: never a replay of its event.
    replay = victim.ingested_payload
    probes.append(
        Probe(
            path="",
            missing_path="",
            ident=victim.only_signal.slug,
            missing_ident=MISSING_SLUG,
            body=replay,
            missing_body={**replay, "signal": MISSING_SLUG},
        )
    )
    return probes


def _with_path(path: str, probes: list[Probe], wrap: Callable[[Any], Any] = lambda b: b) -> list:
    return [
        Probe(
            path=path,
            missing_path=path,
            ident=p.ident,
            missing_ident=p.missing_ident,
            body=wrap(p.body),
            missing_body=wrap(p.missing_body),
        )
        for p in probes
    ]


def _event_collection_probes(victim: Org) -> list[Probe]:
    only = f"{victim.slug.upper()}-ONLY-1"
    filters = [
        ("signal", victim.only_signal.slug, MISSING_SLUG),
        ("identity_id", only, "NEVER-ONLY-1"),
        ("reference", f"{victim.slug}-ref-1", "never-ref-1"),
    ]
    listing = [
        Probe(
            path="/v1/events",
            missing_path="/v1/events",
            ident=value,
            missing_ident=missing,
            query={name: value},
            missing_query={name: missing},
        )
        for name, value, missing in filters
    ]
    # A cursor handed to the victim pages nothing for anyone else: refused like a forged one.
    listing.append(
        Probe(
            path="/v1/events",
            missing_path="/v1/events",
            query={"cursor": victim.next_cursor_events or ""},
            missing_query={"cursor": "forged.cursor:value"},
        )
    )
    return [*_with_path("/v1/events", _ingest_probes(victim)), *listing]


def _event_detail_probes(victim: Org) -> list[Probe]:
    ids = {victim.ingested_event_id, victim.shared_record_event_id, str(victim.world.event.pk)}
    return [
        Probe(
            path=f"/v1/events/{event_id}",
            missing_path=f"/v1/events/{MISSING_UUID}",
            ident=event_id,
            missing_ident=MISSING_UUID,
        )
        for event_id in sorted(ids)
    ]


def _rejection_probes(victim: Org) -> list[Probe]:
    rejected = RejectedEvent.objects.filter(organization=victim.tenant.organization)
    probes = [
        Probe(
            path="/v1/rejections",
            missing_path="/v1/rejections",
            ident=slug,
            missing_ident=MISSING_SLUG,
            query={"signal": slug},
            missing_query={"signal": MISSING_SLUG},
        )
        for slug in sorted(set(rejected.values_list("signal_slug", flat=True)))
        if slug.startswith(victim.slug)  # build_world's "nope" is the attacker's slug too
    ]
    probes.append(
        Probe(
            path="/v1/rejections",
            missing_path="/v1/rejections",
            query={"cursor": victim.next_cursor_rejections or ""},
            missing_query={"cursor": "forged.cursor:value"},
        )
    )
    return probes


def _signal_detail_probes(victim: Org) -> list[Probe]:
    signals = (victim.only_signal, victim.inactive_signal)
    return [
        *(_slug_probe("/v1/signals/{}", s.slug) for s in signals),
        # By public id too: slugs are the API's handle, but an id must not be one either.
        *(_slug_probe("/v1/signals/{}", s.public_id) for s in signals),
    ]


def _schema_version_probes(victim: Org) -> list[Probe]:
    return [
        _slug_probe(f"/v1/signals/{{}}/schemas/{version}", signal.slug)
        for signal in (victim.only_signal, victim.inactive_signal)
        for version in ("1", "latest", "2")
    ]


def _record_probes(victim: Org) -> list[Probe]:
    return [
        Probe(
            path=f"/v1/records/{record.type}/{record.external_id}",
            missing_path=f"/v1/records/{record.type}/NEVER-{record.pk}",
            ident=record.external_id,
            missing_ident=f"NEVER-{record.pk}",
        )
        for record in CrmRecord.objects.filter(organization=victim.tenant.organization)
        .exclude(external_id__in=[SHARED_RECORD[1], "A1"])  # ids the attacker has too
        .order_by("pk")
    ]


def _catch_all_probes(victim: Org) -> list[Probe]:
    return [
        _slug_probe("/v1/{}", victim.only_signal.slug),
        Probe(
            path=f"/v1/records/{victim.ingested_event_id}",
            missing_path=f"/v1/records/{MISSING_UUID}",
            ident=victim.ingested_event_id,
            missing_ident=MISSING_UUID,
        ),
    ]


def _trailing_slash_probes(victim: Org) -> list[Probe]:
    # A fixed route with a trailing slash (/v1/events/batch/) is a 404 whatever the body names.
    return [
        Probe(
            path="/v1/events/batch/",
            missing_path="/v1/events/batch/",
            ident=victim.only_signal.slug,
            missing_ident=MISSING_SLUG,
            body={"events": [{"signal": victim.only_signal.slug}]},
            missing_body={"events": [{"signal": MISSING_SLUG}]},
        )
    ]


MISSING_WEBHOOK_ENDPOINT = "we_000000000000"
MISSING_WEBHOOK_DELIVERY = "whevt_0190a0a000007000800000000000000a"


def _webhook_endpoint_list_probes(victim: Org) -> list[Probe]:
    path = "/v1/webhook-endpoints"
    return [
        # A cursor handed to the victim pages nothing for anyone else.
        Probe(
            path=path,
            missing_path=path,
            query={"cursor": victim.next_cursor_webhook_endpoints or ""},
            missing_query={"cursor": "forged.cursor:value"},
        ),
        # Creating an endpoint filtered on the victim's signal: that signal is not found.
        Probe(
            path=path,
            missing_path=path,
            ident=victim.only_signal.slug,
            missing_ident=MISSING_SLUG,
            body={
                "url": "https://93.184.215.14/x",
                "events": ["*"],
                "signals": [victim.only_signal.slug],
            },
            missing_body={
                "url": "https://93.184.215.14/x",
                "events": ["*"],
                "signals": [MISSING_SLUG],
            },
        ),
    ]


def _webhook_endpoint_probes(suffix: str) -> Callable[[Org], list[Probe]]:
    def probes(victim: Org) -> list[Probe]:
        # A body for PATCH (and whatever else takes one): it must change nothing of the victim's.
        body = {"enabled": False, "description": "taken over"}
        return [
            Probe(
                path=f"/v1/webhook-endpoints/{endpoint_id}{suffix}",
                missing_path=f"/v1/webhook-endpoints/{MISSING_WEBHOOK_ENDPOINT}{suffix}",
                ident=endpoint_id,
                missing_ident=MISSING_WEBHOOK_ENDPOINT,
                body=body,
                missing_body=body,
            )
            for endpoint_id in victim.webhook_endpoint_ids
        ]

    return probes


def _webhook_delivery_probes(victim: Org) -> list[Probe]:
    return [
        Probe(
            path=f"/v1/webhook-deliveries/{delivery_id}/retry",
            missing_path=f"/v1/webhook-deliveries/{MISSING_WEBHOOK_DELIVERY}/retry",
            ident=delivery_id,
            missing_ident=MISSING_WEBHOOK_DELIVERY,
        )
        for delivery_id in victim.webhook_delivery_ids
    ]


ENDPOINTS: dict[str, Endpoint] = {
    "event-ingest": Endpoint(frozenset({"get", "post"}), _event_collection_probes),
    "event-batch": Endpoint(
        frozenset({"post"}),
        lambda v: _with_path("/v1/events/batch", _ingest_probes(v), lambda b: {"events": [b]}),
    ),
    "event-validate": Endpoint(
        frozenset({"post"}), lambda v: _with_path("/v1/events/validate", _ingest_probes(v))
    ),
    "event-detail": Endpoint(frozenset({"get"}), _event_detail_probes),
    "rejection-list": Endpoint(frozenset({"get"}), _rejection_probes),
    # No object in the path: the list itself is checked in test_lists_hold_only_the_callers_rows.
    "signal-list": Endpoint(
        frozenset({"get"}), lambda v: [Probe(path="/v1/signals", missing_path="/v1/signals")]
    ),
    "signal-detail": Endpoint(frozenset({"get"}), _signal_detail_probes),
    "schema-version-detail": Endpoint(frozenset({"get"}), _schema_version_probes),
    "record-detail": Endpoint(frozenset({"get"}), _record_probes),
    "webhook-endpoint-list": Endpoint(frozenset({"get", "post"}), _webhook_endpoint_list_probes),
    "webhook-endpoint-detail": Endpoint(
        frozenset({"get", "patch", "delete"}), _webhook_endpoint_probes("")
    ),
    "webhook-endpoint-rotate-secret": Endpoint(
        frozenset({"post"}), _webhook_endpoint_probes("/rotate-secret")
    ),
    "webhook-endpoint-test": Endpoint(frozenset({"post"}), _webhook_endpoint_probes("/test")),
    "webhook-delivery-list": Endpoint(frozenset({"get"}), _webhook_endpoint_probes("/deliveries")),
    "webhook-delivery-retry": Endpoint(frozenset({"post"}), _webhook_delivery_probes),
    "^.*$": Endpoint(frozenset({"*"}), _catch_all_probes),
    "trailing-slash": Endpoint(frozenset({"*"}), _trailing_slash_probes),
}
# The OpenAPI description and its docs page need no key and hold no tenant data.
PUBLIC = {
    "openapi-json": "/v1/openapi.json",
    "openapi-yaml": "/v1/openapi.yaml",
    "api-docs": "/v1/docs",
}


def v1_patterns() -> Iterator[URLPattern]:
    """Every URL pattern mounted under /v1/, includes flattened."""

    def walk(patterns: list[Any]) -> Iterator[URLPattern]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from walk(pattern.url_patterns)
            else:
                yield pattern

    mounted = [
        p
        for p in get_resolver().url_patterns
        if isinstance(p, URLResolver) and str(p.pattern) == "v1/"
    ]
    assert len(mounted) == 1, "expected one include() at v1/"
    yield from walk(mounted[0].url_patterns)


def pattern_key(pattern: URLPattern) -> str:
    return pattern.name or str(pattern.pattern)


def view_handlers(pattern: URLPattern) -> frozenset[str]:
    view_class = getattr(pattern.callback, "view_class", None)
    if view_class is None:
        return frozenset({"*"})  # a plain function view answers every method alike
    return frozenset(
        method
        for method in view_class.http_method_names
        if method not in ("head", "options") and hasattr(view_class, method)
    )


def test_every_v1_endpoint_and_method_has_a_probe() -> None:
    found = {pattern_key(p): view_handlers(p) for p in v1_patterns()}
    uncovered = set(found) - set(ENDPOINTS) - set(PUBLIC)
    assert not uncovered, f"/v1 endpoints with no tenancy probe in {__name__}: {uncovered}"
    assert not (set(ENDPOINTS) | set(PUBLIC)) - set(found), "probes for endpoints that are gone"
    for key, endpoint in ENDPOINTS.items():
        assert found[key] == endpoint.handlers, (
            f"{key} now handles {sorted(found[key])}; extend its probe for the new methods"
        )


# --- Comparing answers ------------------------------------------------------------------------
def masked(response: Any, ident: str | None) -> str:
    text = response.content.decode("utf-8", errors="replace")
    if ident:
        text = text.replace(ident, MASK)
        # JSON may escape what the path carried ('/' is not escaped by json.dumps, but be safe).
        text = text.replace(json.dumps(ident)[1:-1], MASK)
    return text


def stable_headers(response: Any) -> dict[str, str]:
    return {
        name.lower(): value
        for name, value in response.headers.items()
        if name.lower() not in _VOLATILE_HEADERS
    }


def sent_text(path: str, query: Any, body: Any) -> str:
    return f"{path} {json.dumps(query)} {json.dumps(body)}"


def assert_no_oracle(attacker: Org, victim: Org, probe: Probe, method: str, key: str) -> None:
    client = Client()
    foreign = send(client, method, probe.path, key=key, body=probe.body, query=probe.query)
    missing = send(
        client,
        method,
        probe.missing_path,
        key=key,
        body=probe.missing_body,
        query=probe.missing_query,
    )
    where = f"{method} {probe.path} {probe.query or ''}"
    assert foreign.status_code < 500, (where, foreign.content[:500])
    assert foreign.status_code == missing.status_code, (where, foreign.content, missing.content)
    foreign_text = masked(foreign, probe.ident)
    assert foreign_text == masked(missing, probe.missing_ident), (where, foreign_text)
    assert stable_headers(foreign) == stable_headers(missing), where
    own = sent_text(probe.path, probe.query, probe.body)
    leaked = {m for m in victim.markers() if m in foreign_text and m not in own}
    assert not leaked, f"{where}: {leaked} of {victim.slug} in {foreign_text[:500]}"
    if 200 <= foreign.status_code < 300 and method not in ("HEAD", "OPTIONS"):
        # A success may only be about the attacker's own objects (a list, its own data).
        assert not (victim.event_ids() & set(_ids_in(foreign))), where


def _ids_in(response: Any) -> list[str]:
    try:
        data = response.json().get("data")
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    return [str(item.get("id")) for item in items if isinstance(item, dict)]


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_another_organizations_key_gets_the_answer_for_a_missing_object(
    name: str, acme: Org, globex: Org
) -> None:
    probes = ENDPOINTS[name].probes(acme)
    assert probes, name
    before = fingerprint(acme)
    for probe in probes:
        for method in ALL_METHODS:
            assert_no_oracle(globex, acme, probe, method, globex.key)
    # Nothing of acme's was written, moved or counted by any of it.
    assert fingerprint(acme) == before


def _without_csrf(response: Any) -> str:
    return re.sub(r'"X-CSRFTOKEN"\] = "[^"]*"', "<csrf>", response.content.decode())


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_documents_hold_no_tenant_data(name: str, acme: Org, globex: Org) -> None:
    path = PUBLIC[name]
    with_key = send(Client(), "GET", path, key=globex.key)
    without = send(Client(), "GET", path, key=None)
    assert with_key.status_code == without.status_code == 200
    # The docs page carries the visitor's CSRF token; everything else must be identical.
    assert _without_csrf(with_key) == _without_csrf(without)
    text = with_key.content.decode()
    assert not {m for m in acme.markers() | globex.markers() if m in text}


# --- Lists ------------------------------------------------------------------------------------
def test_lists_hold_only_the_callers_rows(acme: Org, globex: Org) -> None:
    client = Client()
    for path, model in (("/v1/events", Event), ("/v1/rejections", RejectedEvent)):
        seen: list[str] = []
        cursor = None
        for _ in range(50):
            query = {"limit": "1", **({"cursor": cursor} if cursor else {})}
            page = send(client, "GET", path, key=globex.key, query=query)
            assert page.status_code == 200, page.content
            seen += _ids_in(page)
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        own = {
            str(pk)
            for pk in model.objects.filter(organization=globex.tenant.organization).values_list(
                "pk", flat=True
            )
        }
        assert set(seen) == own, path
        assert len(seen) == len(own), path
    endpoints = send(client, "GET", "/v1/webhook-endpoints", key=globex.key).json()["data"]
    assert [e["id"] for e in endpoints] == list(
        WebhookEndpoint.objects.filter(organization=globex.tenant.organization)
        .order_by("-created_at", "-id")
        .values_list("public_id", flat=True)
    )
    assert set(globex.webhook_endpoint_ids) <= {e["id"] for e in endpoints}
    deliveries = send(
        client,
        "GET",
        f"/v1/webhook-endpoints/{globex.webhook_endpoint_ids[-1]}/deliveries",
        key=globex.key,
    ).json()["data"]
    assert [d["id"] for d in deliveries] == globex.webhook_delivery_ids
    signals = send(client, "GET", "/v1/signals", key=globex.key).json()["data"]
    assert {s["signal_id"] for s in signals} == set(
        globex.tenant.organization.signals.values_list("public_id", flat=True)
    )


def test_a_cursor_is_bound_to_the_organization_it_was_handed_to(acme: Org, globex: Org) -> None:
    client = Client()
    for path, cursor in (
        ("/v1/events", acme.next_cursor_events),
        ("/v1/rejections", acme.next_cursor_rejections),
        ("/v1/webhook-endpoints", acme.next_cursor_webhook_endpoints),
    ):
        assert cursor
        mine = send(client, "GET", path, key=acme.key, query={"limit": "1", "cursor": cursor})
        assert mine.status_code == 200 and mine.json()["data"], path
        theirs = send(client, "GET", path, key=globex.key, query={"limit": "1", "cursor": cursor})
        assert theirs.status_code == 400, (path, theirs.content)
        assert theirs.json()["code"] == "invalid_cursor"


def test_a_record_id_both_organizations_use_shows_each_only_its_own(acme: Org, globex: Org) -> None:
    path = f"/v1/records/{SHARED_RECORD[0]}/{SHARED_RECORD[1]}"
    for org in (acme, globex):
        profile = send(Client(), "GET", path, key=org.key)
        assert profile.status_code == 200, profile.content
        data = profile.json()["data"]
        assert data["event_count"] == 1
        assert [s["signal_id"] for s in data["events_by_signal"]] == [org.shared_signal.public_id]
        other = globex if org is acme else acme
        text = profile.content.decode()
        assert not {m for m in other.markers() if m in text}


# --- Writes -----------------------------------------------------------------------------------
def test_the_same_slug_in_both_organizations_writes_only_to_the_callers(
    acme: Org, globex: Org
) -> None:
    before = fingerprint(acme)
    response = send(
        Client(), "POST", "/v1/events", key=globex.key, body=ingest_payload("shared-slug")
    )
    assert response.status_code == 202, response.content
    assert response.json()["data"]["signal_id"] == globex.shared_signal.public_id
    event = Event.objects.get(pk=response.json()["data"]["id"])
    assert event.organization == globex.tenant.organization
    assert event.crm_record.organization == globex.tenant.organization
    assert fingerprint(acme) == before


def test_idempotency_keys_are_per_organization(acme: Org, globex: Org) -> None:
    # Both organizations stored an event under SHARED_IDEMPOTENCY_KEY while being built.
    both = Event.objects.filter(idempotency_key=SHARED_IDEMPOTENCY_KEY)
    assert {e.organization_id for e in both} == {
        acme.tenant.organization.pk,
        globex.tenant.organization.pk,
    }
    client = Client()
    # A key acme used first, on globex's own signal with another body: a new globex event,
    # neither acme's replayed (200) nor a conflict with acme's request (409).
    header = {"Idempotency-Key": "fresh-key-used-by-acme-first"}
    mine = send(
        client, "POST", "/v1/events", key=acme.key, body=ingest_payload("shared-slug"), **header
    )
    assert mine.status_code == 202, mine.content
    before = fingerprint(acme)
    other = ingest_payload("shared-slug", reference="globex-other")
    check = send(client, "POST", "/v1/events/validate", key=globex.key, body=other, **header)
    assert check.status_code == 200, check.content
    theirs = send(client, "POST", "/v1/events", key=globex.key, body=other, **header)
    assert theirs.status_code == 202, theirs.content
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.json()["data"]["id"] != mine.json()["data"]["id"]
    assert (
        Event.objects.get(pk=theirs.json()["data"]["id"]).organization == globex.tenant.organization
    )
    # Sent again by globex: globex's own replay, of globex's event.
    again = send(client, "POST", "/v1/events", key=globex.key, body=other, **header)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["data"]["id"] == theirs.json()["data"]["id"]
    assert fingerprint(acme) == before
    # The same in a batch, acme first.
    item = {**ingest_payload("shared-slug"), "idempotency_key": "batch-key-acme-first"}
    acme_batch = send(client, "POST", "/v1/events/batch", key=acme.key, body={"events": [item]})
    before = fingerprint(acme)
    batch = send(client, "POST", "/v1/events/batch", key=globex.key, body={"events": [item]})
    assert acme_batch.status_code == batch.status_code == 202, batch.content
    assert "replayed" not in batch.json()["data"][0]
    assert acme_batch.json()["data"][0]["id"] != batch.json()["data"][0]["id"]
    assert fingerprint(acme) == before


def test_ingest_into_another_organizations_signal_stores_nothing_there(
    acme: Org, globex: Org
) -> None:
    before = fingerprint(acme)
    client = Client()
    body = ingest_payload(acme.only_signal.slug, data={"page": "/x"}, reference="probe")
    single = send(client, "POST", "/v1/events", key=globex.key, body=body)
    assert single.status_code == 404
    assert single.json() == {
        "success": False,
        "error": f"Signal not found: {acme.only_signal.slug}",
        "code": "signal_not_found",
    }
    batch = send(client, "POST", "/v1/events/batch", key=globex.key, body={"events": [body]})
    assert batch.status_code == 207
    assert batch.json()["data"][0]["status_code"] == 404
    assert fingerprint(acme) == before
    # What globex sent is globex's own rejection, never acme's.
    recorded = RejectedEvent.objects.filter(
        signal_slug=acme.only_signal.slug, body__contains="probe"
    )
    assert recorded.count() == 2
    assert {r.organization_id for r in recorded} == {globex.tenant.organization.pk}
    assert not Event.objects.filter(reference="probe").exists()


# --- No key -------------------------------------------------------------------------------------
_WEBHOOK_ROUTES = sorted(name for name in ENDPOINTS if name.startswith("webhook-"))


@pytest.mark.parametrize("name", _WEBHOOK_ROUTES)
def test_webhook_routes_refuse_a_missing_or_invalid_key_and_change_nothing(
    name: str, acme: Org
) -> None:
    before = fingerprint(acme)
    client = Client()
    for probe in ENDPOINTS[name].probes(acme):
        for method in ALL_METHODS:
            for key in (None, "sk_invalid_0000000000000000000000000000000"):
                response = send(client, method, probe.path, key=key, body=probe.body)
                assert response.status_code == 401, (name, method, key, response.content)
                assert response["WWW-Authenticate"] == "Bearer"
    assert fingerprint(acme) == before

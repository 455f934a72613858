"""API key scopes: every keyed /v1 route and method needs the scope events_app/api/scopes.py
gives it. A key lacking exactly that scope is refused with 403 `insufficient_scope` and changes
nothing; a key holding only that scope gets the real answer. The table itself is checked against
the URL resolver, so a new route or method without a scope fails here."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.db.migrations.operations import AddField
from django.test import Client

from events_app.api.scopes import NO_KEY, ROUTE_SCOPES, route_scope
from events_app.models import Event, WebhookEndpoint
from signals_app.models import ApiKey, ApiScope
from signals_app.services import api_key_create, api_key_hash, api_key_prefix
from tests.security.conftest import Org, fingerprint, ingest_payload, send
from tests.security.test_tenancy import pattern_key, v1_patterns, view_handlers


def _key(org: Org, scopes: list[str]) -> str:
    _, raw = api_key_create(organization=org.tenant.organization, name="scoped", scopes=scopes)
    return raw


# --- The table is complete ------------------------------------------------------------------
def test_every_v1_route_and_method_has_a_scope_or_needs_no_key() -> None:
    found = {pattern_key(p): view_handlers(p) for p in v1_patterns()}
    unlisted = set(found) - set(ROUTE_SCOPES) - NO_KEY
    assert not unlisted, f"/v1 routes with no entry in events_app/api/scopes.py: {unlisted}"
    assert not (set(ROUTE_SCOPES) | NO_KEY) - set(found), "scopes for routes that are gone"
    assert not set(ROUTE_SCOPES) & NO_KEY
    for name, methods in ROUTE_SCOPES.items():
        implemented = {method.upper() for method in found[name]}
        assert set(methods) == implemented, (
            f"{name} implements {sorted(implemented)} but has scopes for {sorted(methods)}"
        )
        assert set(methods.values()) <= set(ApiScope.values), name


def test_a_keyed_method_without_a_scope_fails_closed() -> None:
    class _Match:
        url_name = "event-detail"
        func = type("View", (), {"view_class": type("V", (), {"get": 1, "put": 1})})

    class _Request:
        method = "PUT"
        resolver_match = _Match()

    with pytest.raises(RuntimeError, match="no scope for PUT"):
        route_scope(_Request())  # type: ignore[arg-type]
    # A method the view does not implement needs none: it is a 405 for everyone.
    _Request.method = "PATCH"
    assert route_scope(_Request()) is None  # type: ignore[arg-type]
    # A view called without a resolved route (no URLconf): refused, not guessed.
    _Request.method = "GET"
    _Request.resolver_match = None  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="without a resolved route"):
        route_scope(_Request())  # type: ignore[arg-type]


# --- Every route, method and scope through the HTTP stack -------------------------------------
@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: Any = None
    status: int = 200


def _new_endpoint(org: Org) -> str:
    made = send(
        Client(),
        "POST",
        "/v1/webhook-endpoints",
        key=org.key,
        body={"url": "https://93.184.215.14/scoped", "events": ["*"]},
    )
    assert made.status_code == 201, made.content
    return str(made.json()["data"]["id"])


def _record_path(org: Org) -> str:
    return f"/v1/records/account/{org.slug.upper()}-ONLY-1"


# (route, method) -> the request a key holding the route's scope makes, and its success status.
HAPPY: dict[tuple[str, str], Callable[[Org], Call]] = {
    ("event-ingest", "POST"): lambda o: Call(
        "POST", "/v1/events", ingest_payload(o.shared_signal.slug), 202
    ),
    ("event-ingest", "GET"): lambda o: Call("GET", "/v1/events"),
    ("event-batch", "POST"): lambda o: Call(
        "POST", "/v1/events/batch", {"events": [ingest_payload(o.shared_signal.slug)]}, 202
    ),
    ("event-validate", "POST"): lambda o: Call(
        "POST", "/v1/events/validate", ingest_payload(o.shared_signal.slug)
    ),
    ("event-detail", "GET"): lambda o: Call("GET", f"/v1/events/{o.ingested_event_id}"),
    ("rejection-list", "GET"): lambda o: Call("GET", "/v1/rejections"),
    ("signal-list", "GET"): lambda o: Call("GET", "/v1/signals"),
    ("signal-detail", "GET"): lambda o: Call("GET", f"/v1/signals/{o.only_signal.slug}"),
    ("schema-version-detail", "GET"): lambda o: Call(
        "GET", f"/v1/signals/{o.only_signal.slug}/schemas/1"
    ),
    ("record-detail", "GET"): lambda o: Call("GET", _record_path(o)),
    ("webhook-endpoint-list", "GET"): lambda o: Call("GET", "/v1/webhook-endpoints"),
    ("webhook-endpoint-list", "POST"): lambda o: Call(
        "POST",
        "/v1/webhook-endpoints",
        {"url": "https://93.184.215.14/new", "events": ["*"]},
        201,
    ),
    ("webhook-endpoint-detail", "GET"): lambda o: Call(
        "GET", f"/v1/webhook-endpoints/{o.webhook_endpoint_ids[0]}"
    ),
    ("webhook-endpoint-detail", "PATCH"): lambda o: Call(
        "PATCH", f"/v1/webhook-endpoints/{o.webhook_endpoint_ids[0]}", {"description": "x"}
    ),
    ("webhook-endpoint-detail", "DELETE"): lambda o: Call(
        "DELETE", f"/v1/webhook-endpoints/{_new_endpoint(o)}"
    ),
    ("webhook-endpoint-rotate-secret", "POST"): lambda o: Call(
        "POST", f"/v1/webhook-endpoints/{o.webhook_endpoint_ids[0]}/rotate-secret"
    ),
    ("webhook-endpoint-test", "POST"): lambda o: Call(
        "POST", f"/v1/webhook-endpoints/{o.webhook_endpoint_ids[0]}/test", status=202
    ),
    ("webhook-delivery-list", "GET"): lambda o: Call(
        "GET", f"/v1/webhook-endpoints/{o.webhook_endpoint_ids[-1]}/deliveries"
    ),
    ("webhook-delivery-retry", "POST"): lambda o: Call(
        "POST", f"/v1/webhook-deliveries/{o.webhook_delivery_ids[0]}/retry", status=202
    ),
}
# HEAD is answered as GET, with GET's scope.
CASES = sorted(
    [*HAPPY, *((name, "HEAD") for name, method in HAPPY if method == "GET")],
)


def test_every_scoped_route_and_method_has_a_case_here() -> None:
    assert set(HAPPY) == {(name, m) for name, methods in ROUTE_SCOPES.items() for m in methods}


def _call(org: Org, name: str, method: str) -> Call:
    call = HAPPY[(name, "GET" if method == "HEAD" else method)](org)
    return Call(method, call.path, call.body, call.status)


@pytest.mark.parametrize(("name", "method"), CASES)
def test_a_key_lacking_the_scope_is_refused_and_one_with_only_that_scope_is_answered(
    name: str, method: str, acme: Org
) -> None:
    scope = ROUTE_SCOPES[name]["GET" if method == "HEAD" else method]
    call = _call(acme, name, method)
    lacking = _key(acme, [s for s in ApiScope.values if s != scope])
    client = Client()
    before = fingerprint(acme)
    events_before = Event.objects.count()
    refused = send(client, method, call.path, key=lacking, body=call.body)
    assert refused.status_code == 403, (name, method, refused.content)
    if method != "HEAD":
        assert refused.json() == {
            "success": False,
            "error": f"This API key lacks the {scope} scope",
            "code": "insufficient_scope",
        }
    # Nothing was stored, changed, queued or spent by the refused request.
    keys_now = fingerprint(acme)
    keys_now.pop("keys"), before.pop("keys")  # the new key itself (and its last use)
    assert keys_now == before, (name, method)
    assert Event.objects.count() == events_before

    exact = _key(acme, [scope])
    answered = send(client, method, call.path, key=exact, body=call.body)
    assert answered.status_code == call.status, (name, method, answered.content[:500])


def test_options_needs_a_key_but_no_scope(acme: Org) -> None:
    only_signals = _key(acme, [ApiScope.SIGNALS_READ])
    answer = send(Client(), "OPTIONS", "/v1/events", key=only_signals)
    assert answer.status_code == 200
    assert answer.json()["data"]["methods"] == ["GET", "POST", "HEAD", "OPTIONS"]
    assert send(Client(), "OPTIONS", "/v1/events", key=None).status_code == 401


def test_a_scope_check_comes_after_the_key_is_authenticated(acme: Org) -> None:
    """A wrong key is a 401 whatever it would lack: the scope is only asked of a real key."""
    answer = send(Client(), "GET", "/v1/events", key="sk_" + "x" * 40)
    assert answer.status_code == 401
    assert answer.json()["code"] == "invalid_api_key"


# --- Keys made before scopes ------------------------------------------------------------------
def test_a_key_made_before_scopes_has_full_access(acme: Org) -> None:
    """The migration that added scopes gave existing rows its field default: every scope, no
    allow-list, no expiry. Such a row is answered on every scoped route."""
    migration = importlib.import_module(
        "signals_app.migrations.0004_keys_scopes_enforcement_redaction"
    ).Migration
    added = {
        op.name: op.field
        for op in migration.operations
        if isinstance(op, AddField) and op.model_name == "apikey"
    }
    assert added["signals"].null and added["expires_at"].null
    raw = "sk_before_scopes_" + "k" * 30
    ApiKey.objects.create(
        organization=acme.tenant.organization,
        name="old",
        prefix=api_key_prefix(raw),
        key_hash=api_key_hash(raw),
        scopes=added["scopes"].get_default(),
        signals=None,
        expires_at=None,
    )
    assert set(added["scopes"].get_default()) == set(ApiScope.values)
    client = Client()
    for name, method in sorted(HAPPY):
        call = _call(acme, name, method)
        answered = send(client, method, call.path, key=raw, body=call.body)
        assert answered.status_code == call.status, (name, method, answered.content[:300])
    assert WebhookEndpoint.objects.filter(organization=acme.tenant.organization).exists()


def test_the_openapi_document_names_each_operations_scope(db: None) -> None:
    document = Client().get("/v1/openapi.json").json()
    seen = set()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict):
                continue
            forbidden = operation["responses"]["403"]
            example = forbidden["content"]["application/json"]["examples"]["insufficient_scope"]
            scope = example["value"]["error"].removeprefix("This API key lacks the ")
            seen.add((path, method.upper(), scope.removesuffix(" scope")))
    table = {scope for methods in ROUTE_SCOPES.values() for scope in methods.values()}
    assert {scope for *_, scope in seen} == table
    assert ("/v1/events", "POST", "events:write") in seen
    assert ("/v1/events", "GET", "events:read") in seen
    assert ("/v1/webhook-endpoints/{endpoint_id}/deliveries", "GET", "webhooks:write") in seen
    assert len(seen) == sum(len(methods) for methods in ROUTE_SCOPES.values())

"""Which scope each /v1 route and method needs, and the one place that enforces it.

`ROUTE_SCOPES` names every keyed route (the names in events_app/api/urls.py) and every method its
view implements; `NO_KEY` names the routes that take no key at all. A test walks the URL resolver
(tests/security/test_scopes.py), so a new route or method without an entry fails the suite, and
at run time a keyed method without one is refused as a bug (500), never let through.

HEAD is answered as GET and needs GET's scope. OPTIONS needs a valid key but no scope: it
describes the route's methods and holds no data.
"""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpRequest
from django.urls import resolve
from rest_framework.request import Request

from bigmind.errors import Forbidden
from events_app.ingest.auth import ApiClient, ApiKeyAuthentication
from signals_app.models import ApiScope

EVENTS_WRITE = ApiScope.EVENTS_WRITE.value
EVENTS_READ = ApiScope.EVENTS_READ.value
RECORDS_READ = ApiScope.RECORDS_READ.value
SIGNALS_READ = ApiScope.SIGNALS_READ.value
REJECTIONS_READ = ApiScope.REJECTIONS_READ.value
WEBHOOKS_WRITE = ApiScope.WEBHOOKS_WRITE.value

# Route name -> method -> scope. Webhook reads need webhooks:write too: there is no
# webhooks:read scope, and an endpoint's configuration is the writer's business.
ROUTE_SCOPES: dict[str, dict[str, str]] = {
    "event-ingest": {"POST": EVENTS_WRITE, "GET": EVENTS_READ},
    "event-batch": {"POST": EVENTS_WRITE},
    "event-validate": {"POST": EVENTS_WRITE},
    "event-detail": {"GET": EVENTS_READ},
    "rejection-list": {"GET": REJECTIONS_READ},
    "signal-list": {"GET": SIGNALS_READ},
    "signal-detail": {"GET": SIGNALS_READ},
    "schema-version-detail": {"GET": SIGNALS_READ},
    "record-detail": {"GET": RECORDS_READ},
    "webhook-endpoint-list": {"GET": WEBHOOKS_WRITE, "POST": WEBHOOKS_WRITE},
    "webhook-endpoint-detail": {
        "GET": WEBHOOKS_WRITE,
        "PATCH": WEBHOOKS_WRITE,
        "DELETE": WEBHOOKS_WRITE,
    },
    "webhook-endpoint-rotate-secret": {"POST": WEBHOOKS_WRITE},
    "webhook-endpoint-test": {"POST": WEBHOOKS_WRITE},
    "webhook-delivery-list": {"GET": WEBHOOKS_WRITE},
    "webhook-delivery-retry": {"POST": WEBHOOKS_WRITE},
}

# Routes that never read a key: the OpenAPI document and its page (public), and the two 404
# routes (a trailing slash, anything unknown), which answer the same to everyone.
NO_KEY: frozenset[str] = frozenset(
    {"openapi-json", "openapi-yaml", "api-docs", "trailing-slash", "^.*$"}
)


def insufficient_scope(scope: str) -> Forbidden:
    return Forbidden(f"This API key lacks the {scope} scope", code="insufficient_scope")


def _implements(view: Any, method: str) -> bool:
    view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
    return view_class is not None and hasattr(view_class, method.lower())


def route_scope(request: HttpRequest | Request) -> str | None:
    """The scope the request's route and method need; None when it needs none (OPTIONS, or a
    method the view does not implement: that is a 405 whoever asks)."""
    method = request.method or ""
    if method == "HEAD":
        method = "GET"
    if method == "OPTIONS":
        return None
    match = request.resolver_match
    if match is None:
        # Called outside the URLconf (no route to look up): refuse rather than guess.
        raise RuntimeError("a keyed /v1 view was called without a resolved route")
    name = match.url_name
    scope = ROUTE_SCOPES.get(name or "", {}).get(method)
    if scope is None and _implements(match.func, method):
        # Fail closed: a keyed method nobody gave a scope is a bug, not an open door.
        raise RuntimeError(f"/v1 route {name!r} has no scope for {method}: add it to ROUTE_SCOPES")
    return scope


# The operations that refuse a signal outside the key's allow-list with a 403 of their own (a
# batch refuses such items in its 207 instead; the reads of one signal answer 404).
_SIGNAL_NOT_ALLOWED = {
    ("event-ingest", "post"),
    ("event-ingest", "get"),
    ("event-validate", "post"),
    ("rejection-list", "get"),
    ("webhook-endpoint-list", "post"),
    ("webhook-endpoint-detail", "patch"),
}


def openapi_forbidden_add(path: str, method: str, operation: dict[str, Any]) -> None:
    """The OpenAPI document's 403 of a keyed operation (events_app/api/schema.py's hook), made
    from the table above, so the document names the scope each operation needs."""
    route = resolve(re.sub(r"\{[^}]+\}", "x", path)).url_name or ""
    scope = ROUTE_SCOPES.get(route, {}).get(method.upper())
    responses = operation.get("responses", {})
    if scope is None or "401" not in responses:
        return
    examples: dict[str, Any] = {
        "insufficient_scope": {
            "value": {
                "success": False,
                "error": f"This API key lacks the {scope} scope",
                "code": "insufficient_scope",
            }
        }
    }
    description = f"The key lacks the `{scope}` scope (`insufficient_scope`)"
    if (route, method) in _SIGNAL_NOT_ALLOWED:
        examples["signal_not_allowed"] = {
            "value": {
                "success": False,
                "error": (
                    "This API key may not use signal signup: it is not in the key's signal "
                    "allow-list"
                ),
                "code": "signal_not_allowed",
            }
        }
        description += ", or names a signal outside its signal allow-list (`signal_not_allowed`)"
    unauthorized = responses["401"]
    headers = {k: v for k, v in unauthorized.get("headers", {}).items() if k != "WWW-Authenticate"}
    content = {
        media: {**body, "examples": examples} for media, body in unauthorized["content"].items()
    }
    responses["403"] = {"headers": headers, "content": content, "description": description + "."}


class ScopedApiKeyAuthentication(ApiKeyAuthentication):
    """The key, then its scope for this route and method: every keyed /v1 view and the ingest
    fast path (events_app/api/events.py) authenticate through this class and nothing else."""

    def authenticate(self, request: Request) -> tuple[ApiClient, None]:
        client, auth = super().authenticate(request)
        scope = route_scope(request)
        if scope is not None and scope not in client.scopes:
            raise insufficient_scope(scope)
        return client, auth

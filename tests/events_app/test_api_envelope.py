"""SPEC §2: every answer under /v1, to every method on every path, is JSON in the envelope.

The walk takes every route of the URL resolver under `v1/` (converters filled with plausible
values) and a set of unknown paths, each with and without a trailing slash, with every method
(the seven usual ones, TRACE and an unknown one), with and without a valid key, through Django's whole stack with real CSRF checks. The only
answers not in the envelope are the documents themselves (GET or HEAD of the OpenAPI document
and the docs page), which docs/api.md lists under "Answers outside the envelope".
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern

from bigmind.errors import csrf_failure, handler400, handler403
from tests.conftest import Tenant

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND"]
SIGNAL = "walk-signal"
# The documents served under /v1: their successful GET (and HEAD) is the document itself.
DOCUMENTS = {"/v1/openapi.json", "/v1/openapi.yaml", "/v1/docs"}
UNKNOWN_PATHS = [
    "/v1",
    "/v1/",
    "/v1/event",
    "/v1/nope",
    "/v1/events/",
    "/v1/events/batch/",
    "/v1/events/validate/",
    "/v1/events/batch/extra",
    "/v1/signals/walk-signal/schemas",
    "/v1/signals/walk-signal/schemas/1/extra",
    "/v1//events",
    "/v1/a/b/c/d/e/f/g",
    "/v1/%E2%98%83",
    "/v1/events/..%2f..%2fadmin",
    "/v1/admin/",
]


def _api_routes() -> list[str]:
    """Every route under v1/, as the resolver knows it, e.g. "events/<path:event_id>"."""
    (api,) = [
        entry
        for entry in get_resolver().url_patterns
        if isinstance(entry, URLResolver) and str(entry.pattern) == "v1/"
    ]
    routes = []
    for entry in api.url_patterns:
        assert isinstance(entry, URLPattern)
        if isinstance(entry.pattern, RoutePattern):
            routes.append(str(entry.pattern))
    assert "events" in routes and "events/batch" in routes and len(routes) >= 10
    return routes


def _filled(route: str, values: dict[str, str]) -> str:
    return "/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: values[m.group(1)], route)


def _paths(values: dict[str, str]) -> list[str]:
    paths = [_filled(route, values) for route in _api_routes()]
    with_slash = [path + "/" for path in paths]
    return sorted({*paths, *with_slash, *UNKNOWN_PATHS})


def _event() -> dict[str, Any]:
    return {"signal": SIGNAL, "identity": {"type": "account", "id": "acct-1"}, "data": {"n": 1}}


def _envelope_check(method: str, path: str, response: Any) -> None:
    where = f"{method} {path} -> {response.status_code}"
    content_type = response.headers.get("Content-Type", "")
    assert "X-Request-ID" in response.headers, where
    assert not 300 <= response.status_code < 400, where  # no redirect (APPEND_SLASH...)
    if path in DOCUMENTS and method in ("GET", "HEAD") and response.status_code == 200:
        return
    assert content_type.startswith("application/json"), f"{where}: {content_type}"
    if method == "HEAD":
        assert response.content == b"", where
        return
    body = json.loads(response.content)
    assert isinstance(body, dict) and isinstance(body.get("success"), bool), f"{where}: {body}"
    if response.status_code >= 400:
        assert body["success"] is False, where
        assert isinstance(body["error"], str) and body["error"], where
        assert isinstance(body["code"], str) and body["code"], where
    else:
        assert "data" in body, where
    if response.status_code == 405:
        assert response.headers.get("Allow"), where
        assert body["code"] == "method_not_allowed", where


@pytest.fixture
def walk_tenant(tenant: Tenant) -> dict[str, str]:
    tenant.signal(SIGNAL, schema={"type": "object"})
    client = Client()
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}
    response = client.post("/v1/events", _event(), content_type="application/json", headers=auth)
    assert response.status_code == 202, response.content
    endpoint = client.post(
        "/v1/webhook-endpoints",
        {"url": "https://93.184.215.14/hooks", "events": ["*"]},
        content_type="application/json",
        headers=auth,
    )
    assert endpoint.status_code == 201, endpoint.content
    endpoint_id = endpoint.json()["data"]["id"]
    ping = client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=auth)
    assert ping.status_code == 202, ping.content
    return {
        "endpoint_id": endpoint_id,
        "delivery_id": ping.json()["data"]["id"],
        "event_id": response.json()["data"]["id"],
        "slug": SIGNAL,
        "version": "1",
        "record_type": "account",
        "record_id": "acct-1",
    }


@pytest.mark.parametrize("with_key", [True, False], ids=["key", "no-key"])
def test_every_method_on_every_v1_path_answers_json_in_the_envelope(
    tenant: Tenant, walk_tenant: dict[str, str], with_key: bool
) -> None:
    client = Client(enforce_csrf_checks=True)
    headers = {"Authorization": f"Bearer {tenant.raw_key}"} if with_key else {}
    body = json.dumps(_event())
    checked = 0
    for path in _paths(walk_tenant):
        for method in METHODS:
            response = client.generic(
                method, path, body, content_type="application/json", headers=headers
            )
            _envelope_check(method, path, response)
            checked += 1
    assert checked >= len(METHODS) * 36


@pytest.mark.parametrize(
    "path", ["/v1/events/", "/v1/event", "/v1/nope", "/v1/events/batch/", "/v1/events/validate/"]
)
def test_a_post_to_an_unknown_path_is_a_404_in_the_envelope_not_a_csrf_page(
    api: Any, path: str
) -> None:
    api.client = Client(enforce_csrf_checks=True)
    response = api.post(path, _event())
    assert response.status_code == 404, response.content
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == "not_found"


def test_a_trailing_slash_answer_names_the_path_without_it(api: Any) -> None:
    response = api.post("/v1/events/batch/", {"events": []})
    assert response.json() == {
        "success": False,
        "error": "Not found: /v1/events/batch/ (API paths have no trailing slash: "
        "/v1/events/batch)",
        "code": "not_found",
    }
    assert api.post("/v1/nope/", {}).json()["error"] == "Not found: /v1/nope/"


def test_a_method_a_route_does_not_have_is_405_with_allow(api: Any) -> None:
    response = api.client.put(
        "/v1/events/batch", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST, OPTIONS"


def test_options_lists_the_methods_in_the_envelope(api: Any) -> None:
    response = api.client.options("/v1/events", headers={"Authorization": f"Bearer {api.raw_key}"})
    assert response.status_code == 200
    assert response.json() == {
        "success": True,
        "data": {"methods": ["GET", "POST", "HEAD", "OPTIONS"]},
    }
    assert response.headers["Allow"] == "GET, POST, HEAD, OPTIONS"


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/v1/openapi.yaml", "/v1/docs"])
def test_the_documents_errors_are_json_not_their_own_format(path: str) -> None:
    response = Client().post(path)
    assert response.status_code == 405
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["code"] == "method_not_allowed"


def test_a_disallowed_host_is_a_compact_400_in_the_envelope(db: None) -> None:
    response = Client().post(
        "/v1/events", "{}", content_type="application/json", HTTP_HOST="evil.example"
    )
    assert response.status_code == 400
    assert response.content == (
        b'{"success":false,"error":"Bad request: the Host header names no host of this '
        b'service","code":"invalid_host"}'
    )
    assert response.headers["Content-Length"] == str(len(response.content))


def test_too_many_query_fields_is_a_400_in_the_envelope(api: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    query = "&".join(f"f{i}=1" for i in range(20))
    response = api.client.get(
        f"/v1/events?{query}", headers={"Authorization": f"Bearer {api.raw_key}"}
    )
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "too_many_fields"


def test_the_admin_keeps_its_html_csrf_page(db: None) -> None:
    response = Client(enforce_csrf_checks=True).post("/admin/login/", {"username": "x"})
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")


@pytest.mark.parametrize("view", [csrf_failure, handler403])
def test_a_refusal_django_makes_itself_is_the_envelope_under_v1_and_a_page_elsewhere(
    view: Any,
) -> None:
    factory = RequestFactory()
    api_answer = view(factory.post("/v1/events"))
    assert api_answer.status_code == 403
    assert json.loads(api_answer.content) == {
        "success": False,
        "error": "Forbidden",
        "code": "forbidden",
    }
    page = view(factory.post("/admin/login/"))
    assert page.status_code == 403
    assert page.headers["Content-Type"].startswith("text/html")


def test_a_body_django_refuses_to_read_is_a_413_in_the_envelope(settings: Any) -> None:
    # Our views refuse a body over their limit before Django reads it; should Django's own
    # DATA_UPLOAD_MAX_MEMORY_SIZE refuse one first, it is the same answer.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10
    response = handler400(RequestFactory().post("/v1/events"), RequestDataTooBig("too big"))
    assert response.status_code == 413
    assert json.loads(response.content) == {
        "success": False,
        "error": "Request body is too large: the limit is 10 bytes",
        "code": "body_too_large",
    }

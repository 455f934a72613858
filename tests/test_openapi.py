"""The OpenAPI document at /v1/openapi.json: valid, complete, true, and its docs page self-hosted.

`make api-fuzz` checks the document against the live app with generated requests; these tests
pin the same promises in the suite, including the answers a fuzzer cannot provoke (413, 429,
503) and the docs page's assets.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any
from unittest import mock

import pytest
import yaml
from django.db import OperationalError
from django.test import Client
from django.urls import URLPattern
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from events_app.api import urls as api_urls
from tests.conftest import SEED_REQUEST, ApiClient, Tenant

DOCS_URL = "/v1/docs"
# Routes that serve the document itself, and the catch-all 404: not API operations.
META_ROUTES = {"/v1/openapi.json", "/v1/openapi.yaml", "/v1/docs"}
PAGE_SCHEMA = {"type": "object", "required": ["page"], "properties": {"page": {"type": "string"}}}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    response = Client().get("/v1/openapi.json")
    assert response.status_code == 200
    return json.loads(response.content)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """`node`, or what its local `$ref` points to."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def headers_of(document: dict[str, Any], response: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: resolve(document, h) for name, h in response.get("headers", {}).items()}


# --- The document -----------------------------------------------------------------------------
def test_the_document_is_served_without_a_key_and_is_valid_openapi_3(
    document: dict[str, Any],
) -> None:
    validate_spec(document)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Bigmind Signals API"
    assert document["info"]["version"]


def test_the_yaml_document_is_the_same_document(document: dict[str, Any]) -> None:
    response = Client().get("/v1/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.content) == document


def _api_routes() -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every /v1 view, read from the URLconf."""
    routes = set()
    for pattern in api_urls.urlpatterns:
        view_class = (
            getattr(pattern.callback, "view_class", None)
            if isinstance(pattern, URLPattern)
            else None
        )
        if view_class is None:
            continue  # the catch-all 404 handler
        path = "/v1/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern.pattern))
        if path in META_ROUTES:
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                routes.add((path, method))
    return routes


def test_it_lists_every_v1_route_and_method(document: dict[str, Any]) -> None:
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented == _api_routes()
    assert len(documented) == 19


def test_every_operation_needs_the_bearer_key_and_documents_its_401(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {**scheme, "type": "http", "scheme": "bearer"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["security"] == [{"ApiKey": []}], (method, path)
            unauthorized = operation["responses"]["401"]
            assert headers_of(document, unauthorized)["WWW-Authenticate"]["required"] is True
            assert unauthorized["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }


def test_every_answer_documents_x_request_id_and_every_error_the_envelope(
    document: dict[str, Any],
) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "503" in operation["responses"], (method, path)
            # gunicorn's refusal of an over-long URL, in the envelope (bigmind.gunicorn_worker).
            assert "414" in operation["responses"], (method, path)
            for status, response in operation["responses"].items():
                headers = headers_of(document, response)
                assert headers["X-Request-ID"]["required"] is True, (path, status)
                schema = response["content"]["application/json"]["schema"]
                if status.startswith(("4", "5")):
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)
                else:
                    assert schema["properties"]["success"]["enum"] == [status != "207"]


def test_ingest_documents_the_rate_limit_headers_replay_and_429(document: dict[str, Any]) -> None:
    responses = document["paths"]["/v1/events"]["post"]["responses"]
    assert set(responses) == {
        "200", "202", "400", "401", "403", "404", "409", "413", "414", "429", "503",
    }  # fmt: skip
    headers = {status: headers_of(document, response) for status, response in responses.items()}
    for status in ("200", "202", "429"):
        for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
            assert headers[status][header]["required"] is True
    for status in ("400", "404", "409"):
        assert headers[status]["X-RateLimit-Remaining"].get("required", False) is False
    assert headers["429"]["Retry-After"]["required"] is True
    assert headers["202"]["Location"]["required"] is True
    assert headers["200"]["Idempotent-Replayed"]["schema"]["enum"] == ["true"]
    batch = document["paths"]["/v1/events/batch"]["post"]["responses"]["207"]
    items = batch["content"]["application/json"]["schema"]["properties"]["data"]["items"]
    assert items == {"$ref": "#/components/schemas/EventBatchItem"}


def test_the_event_list_documents_its_query_parameters(document: dict[str, Any]) -> None:
    parameters = document["paths"]["/v1/events"]["get"]["parameters"]
    query = {p["name"] for p in parameters if p["in"] == "query"}
    assert query == {
        "signal",
        "identity_type",
        "identity_id",
        "status",
        "reference",
        "schema_valid",
        "since",
        "until",
        "limit",
        "cursor",
    }


# --- The document is true: real answers conform to it ---------------------------------------
def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return document["paths"][path][method.lower()]


def assert_conforms(document: dict[str, Any], method: str, path: str, response: Any) -> None:
    """The status is documented, the body matches its schema, every required header is there."""
    responses = _operation(document, method, path)["responses"]
    status = str(response.status_code)
    assert status in responses, f"{method} {path}: {status} is not documented"
    documented = responses[status]
    schema = documented["content"]["application/json"]["schema"]
    validator = OAS30Validator({**schema, "components": document["components"]})
    errors = [error.message for error in validator.iter_errors(response.json())]
    assert errors == [], f"{method} {path} {status}: {errors}"
    for name, header in headers_of(document, documented).items():
        if header.get("required"):
            assert response.has_header(name), f"{method} {path} {status}: no {name}"
        if response.has_header(name) and header["schema"].get("type") == "integer":
            assert int(response[name]) >= header["schema"].get("minimum", 0)


class Reader:
    def __init__(self, raw_key: str) -> None:
        self.client = Client()
        self.raw_key = raw_key

    def get(self, path: str, **params: str) -> Any:
        return self.client.get(path, params, headers={"Authorization": f"Bearer {self.raw_key}"})


@pytest.mark.django_db
def test_ingest_answers_conform_to_the_document(
    document: dict[str, Any], api: ApiClient, anon: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA)
    tenant.signal("limited", rate_limit_per_minute=1)
    path = "/v1/events"
    keyed = {**SEED_REQUEST, "idempotency_key": "k-1"}
    answers = [
        api.post(path, keyed),  # 202
        api.post(path, keyed),  # 200 replay
        api.post(path, {**keyed, "reference": "other"}),  # 409
        api.post(path, {**SEED_REQUEST, "data": {}}),  # 400 with details
        api.post(path, {**SEED_REQUEST, "signal": "nope"}),  # 404
        api.post(path, {**SEED_REQUEST, "version": 7}),  # 404 version
        api.post_raw(path, b"[1]"),  # 400 invalid_json
        api.post_raw(path, b'{"x": "' + b"x" * (1024 * 1024) + b'"}'),  # 413
        anon.post(path, SEED_REQUEST),  # 401
        api.post(path, {**SEED_REQUEST, "signal": "limited"}),  # 202
        api.post(path, {**SEED_REQUEST, "signal": "limited"}),  # 429
    ]
    with mock.patch(
        "events_app.ingest.services.events_store",
        side_effect=OperationalError("connection refused"),
    ):
        answers.append(api.post(path, SEED_REQUEST))  # 503
    assert [a.status_code for a in answers] == [
        202, 200, 409, 400, 404, 404, 400, 413, 401, 202, 429, 503,
    ]  # fmt: skip
    for answer in answers:
        assert_conforms(document, "POST", path, answer)


@pytest.mark.django_db
def test_batch_and_validate_answers_conform_to_the_document(
    document: dict[str, Any], api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA)
    tenant.signal("limited", rate_limit_per_minute=1)
    batch = "/v1/events/batch"
    good = {**SEED_REQUEST, "idempotency_key": "b-1"}
    limited = {**SEED_REQUEST, "signal": "limited"}
    answers = [
        api.post(batch, {"events": [good, good]}),  # 202, the second a replay
        api.post(batch, {"events": [good, {**SEED_REQUEST, "signal": "nope"}, 3]}),  # 207
        api.post(batch, {"events": [{**SEED_REQUEST, "data": {}}]}),  # 207, no rate headers
        api.post(batch, {"events": []}),  # 400
        api.post(batch, {"events": [limited, limited]}),  # 207, the second a 429 with details
    ]
    assert [a.status_code for a in answers] == [202, 207, 207, 400, 207]
    assert answers[-1].json()["data"][1]["details"][0]["signal"] == "limited"
    for answer in answers:
        assert_conforms(document, "POST", batch, answer)

    validate = "/v1/events/validate"
    answers = [
        api.post(validate, SEED_REQUEST),
        api.post(validate, {**SEED_REQUEST, "data": {}}),
        api.post(validate, {**SEED_REQUEST, "signal": "nope"}),
    ]
    assert [a.status_code for a in answers] == [200, 400, 404]
    for answer in answers:
        assert_conforms(document, "POST", validate, answer)


@pytest.mark.django_db
def test_read_answers_conform_to_the_document(
    document: dict[str, Any], api: ApiClient, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page", schema=PAGE_SCHEMA)
    tenant.signal("api-calls", type="metric", value_field="value")
    stored = api.post("/v1/events", SEED_REQUEST).json()["data"]
    reader = Reader(tenant.raw_key)
    cases = [
        ("/v1/events", "/v1/events", {}, 200),
        ("/v1/events", "/v1/events", {"limit": "1", "status": "pending"}, 200),
        ("/v1/events", "/v1/events", {"limit": "0"}, 400),
        ("/v1/events", "/v1/events", {"cursor": "garbled"}, 400),
        ("/v1/events/{event_id}", f"/v1/events/{stored['id']}", {}, 200),
        ("/v1/events/{event_id}", "/v1/events/abc", {}, 404),
        ("/v1/signals", "/v1/signals", {}, 200),
        ("/v1/signals/{slug}", "/v1/signals/api-calls", {}, 200),
        ("/v1/signals/{slug}", "/v1/signals/nope", {}, 404),
        (
            "/v1/signals/{slug}/schemas/{version}",
            "/v1/signals/visited-documentation-page/schemas/latest",
            {},
            200,
        ),
        ("/v1/signals/{slug}/schemas/{version}", "/v1/signals/api-calls/schemas/latest", {}, 404),
        (
            "/v1/records/{record_type}/{record_id}",
            "/v1/records/account/001ABC000000123",
            {},
            200,
        ),
        ("/v1/records/{record_type}/{record_id}", "/v1/records/account/nope", {}, 404),
    ]
    for template, url, params, status in cases:
        response = reader.get(url, **params)
        assert response.status_code == status, (url, params, response.content)
        assert_conforms(document, "GET", template, response)
    anonymous = Client().get("/v1/signals")
    assert anonymous.status_code == 401
    assert_conforms(document, "GET", "/v1/signals", anonymous)


@pytest.mark.django_db
def test_webhook_answers_conform_to_the_document(
    document: dict[str, Any], tenant: Tenant, pipeline_in_process: Any
) -> None:
    client = Client()
    auth = {"Authorization": f"Bearer {tenant.raw_key}"}

    def call(method: str, template: str, url: str, status: int, body: Any = None) -> Any:
        data = "" if body is None else json.dumps(body)
        response = client.generic(method, url, data, content_type="application/json", headers=auth)
        assert response.status_code == status, (method, url, response.content)
        assert_conforms(document, method, template, response)
        return response.json()

    endpoints, detail = "/v1/webhook-endpoints", "/v1/webhook-endpoints/{endpoint_id}"
    good = {"url": "https://93.184.215.14/hooks", "events": ["*"]}
    made = call("POST", endpoints, endpoints, 201, good)["data"]
    call("POST", endpoints, endpoints, 400, {**good, "url": "https://10.0.0.1/"})
    call("POST", endpoints, endpoints, 400, {**good, "description": "\x00"})
    call("POST", endpoints, endpoints, 413, {**good, "description": "d" * 70_000})
    call("GET", endpoints, endpoints, 200)
    call("GET", endpoints, f"{endpoints}?limit=0", 400)
    one = f"{endpoints}/{made['id']}"
    call("GET", detail, one, 200)
    call("GET", detail, f"{endpoints}/we_nope", 404)
    call("PATCH", detail, one, 200, {"description": "changed"})
    call("PATCH", detail, one, 400, {"nope": 1})
    rotate = "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"
    call("POST", rotate, f"{one}/rotate-secret", 200)
    test = "/v1/webhook-endpoints/{endpoint_id}/test"
    ping = call("POST", test, f"{one}/test", 202)["data"]
    deliveries = "/v1/webhook-endpoints/{endpoint_id}/deliveries"
    call("GET", deliveries, f"{one}/deliveries", 200)
    call("GET", deliveries, f"{one}/deliveries?status=nope", 400)
    retry = "/v1/webhook-deliveries/{delivery_id}/retry"
    call("POST", retry, f"/v1/webhook-deliveries/{ping['id']}/retry", 202)
    call("POST", retry, "/v1/webhook-deliveries/whevt_nope/retry", 404)
    call("PATCH", detail, one, 200, {"enabled": False})
    call("POST", test, f"{one}/test", 409)
    call("DELETE", detail, one, 200)
    call("DELETE", detail, one, 404)


# --- The docs page ----------------------------------------------------------------------------
class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href"} and value:
                self.urls.append(value)


def test_the_docs_page_loads_without_a_key_and_names_no_outside_url() -> None:
    response = Client().get(DOCS_URL)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert re.search(r"https?://", html) is None
    assert "/v1/openapi.json" in html
    parser = _Assets()
    parser.feed(html)
    assert {url.rsplit("/", 1)[-1] for url in parser.urls} >= {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
    }
    for url in parser.urls:
        assert url.startswith("/static/"), url  # same origin, not protocol-relative "//"


def test_the_docs_page_assets_are_served_by_the_app() -> None:
    parser = _Assets()
    parser.feed(Client().get(DOCS_URL).content.decode())
    client = Client()
    for url in parser.urls:
        response = client.get(url)
        assert response.status_code == 200, url
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert body, url
        if url.endswith(".js"):
            assert "javascript" in response["Content-Type"]
            assert b"SwaggerUI" in body, url
        if url.endswith(".css"):
            assert response["Content-Type"].startswith("text/css")


def test_schema_generation_runs_one_request_at_a_time_per_process(db) -> None:
    """drf-spectacular's lazy extension loading races under threaded workers (docs/fuzzing.md)."""
    import threading
    import time

    from drf_spectacular.generators import SchemaGenerator

    running, most = [0], [0]
    guard = threading.Lock()
    real = SchemaGenerator.get_schema

    def slow_get_schema(self, *args, **kwargs):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(self, *args, **kwargs)
        finally:
            with guard:
                running[0] -= 1

    statuses: list[int] = []
    with mock.patch.object(SchemaGenerator, "get_schema", slow_get_schema):
        threads = [
            threading.Thread(
                target=lambda path=path: statuses.append(Client().get(path).status_code)
            )
            for path in ["/v1/openapi.json", "/v1/openapi.yaml"] * 3
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 6
    assert most[0] == 1

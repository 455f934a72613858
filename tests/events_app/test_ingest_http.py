"""The seed page's example over a real socket (Django's live server), as a client sends it."""

from __future__ import annotations

import pytest
import requests

from tests.conftest import SEED_REQUEST

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_seed_curl_works_over_http(live_server, make_tenant) -> None:
    tenant = make_tenant("acme")
    signal = tenant.signal("visited-documentation-page")

    response = requests.post(
        f"{live_server.url}/v1/events",
        headers={"Authorization": f"Bearer {tenant.raw_key}", "Content-Type": "application/json"},
        json=SEED_REQUEST,
        timeout=10,
    )

    assert response.status_code == 202
    assert response.json()["data"]["signal_id"] == signal.public_id
    assert response.headers["Location"].startswith("/v1/events/")
    assert {
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Reset",
        "X-Request-ID",
    } <= set(response.headers)


def test_an_oversized_body_is_refused_over_http(live_server, make_tenant) -> None:
    tenant = make_tenant("acme")
    tenant.signal("visited-documentation-page")
    big = b'{"data": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = requests.post(
        f"{live_server.url}/v1/events",
        headers={"Authorization": f"Bearer {tenant.raw_key}"},
        data=big,
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "Request body is too large: the limit is 1048576 bytes"

"""Sessions, auth and messages run for browser pages only, not for the API (bigmind/middleware.py)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

from tests.conftest import ApiClient, Tenant

pytestmark = pytest.mark.django_db


def test_an_api_request_gets_no_session_user_or_messages_even_with_a_staff_cookie(
    staff: Client, tenant: Tenant
) -> None:
    tenant.signal("visited-documentation-page")
    api = ApiClient(tenant.raw_key)
    api.client.cookies = staff.cookies  # a browser that is logged in to the admin
    response = api.client.get("/v1/signals", headers={"Authorization": f"Bearer {tenant.raw_key}"})

    assert response.status_code == 200
    request = response.wsgi_request
    assert not hasattr(request, "session")
    assert not hasattr(request, "_messages")
    assert request.user.organization_id == tenant.organization.id  # the API key's client
    assert "sessionid" not in response.cookies and "messages" not in response.cookies


def test_a_staff_cookie_alone_never_opens_the_api(staff: Client) -> None:
    response = staff.get("/v1/signals")

    assert response.status_code == 401
    assert response.json()["success"] is False


def test_admin_pages_still_get_sessions_users_and_messages(staff: Client) -> None:
    response = staff.get("/admin/")

    assert response.status_code == 200
    request = response.wsgi_request
    assert request.session.session_key
    assert request.user.is_superuser
    assert hasattr(request, "_messages")


def test_the_admin_system_checks_accept_the_subclasses() -> None:
    call_command("check", fail_level="ERROR")

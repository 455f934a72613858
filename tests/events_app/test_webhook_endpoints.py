"""Webhook endpoints (events_app/webhooks/endpoints.py): the rules for what an endpoint may be,
its secret kept encrypted and rotated with 24 hours of overlap, and what it subscribes to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from events_app.models import WebhookEndpoint
from events_app.webhooks.endpoints import (
    InvalidEndpoint,
    endpoint_create,
    endpoint_rotate_secret,
    endpoint_update,
    signal_slugs,
    signing_secrets,
    wants,
)
from events_app.webhooks.secrets import secret_decrypt
from signals_app.models import Signal
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db
PUBLIC = "https://93.184.215.14/hooks"


def test_an_endpoint_gets_an_id_and_a_secret_that_is_stored_only_encrypted(tenant: Tenant) -> None:
    created = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.public_id.startswith("we_") and len(endpoint.public_id) == 15
    assert created.secret.startswith("whsec_") and len(created.secret) == 38
    stored = {f.name: str(getattr(endpoint, f.attname)) for f in WebhookEndpoint._meta.fields}
    assert not any(created.secret in value for value in stored.values()), stored
    assert secret_decrypt(endpoint.secret_encrypted) == created.secret
    assert signing_secrets(endpoint) == [created.secret]


def test_a_secret_encrypted_under_a_rotated_secret_key_still_decrypts_with_the_fallback(
    tenant: Tenant, settings
) -> None:
    created = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    old_key = settings.SECRET_KEY
    with override_settings(
        SECRET_KEY="a-new-secret-key-" + "x" * 40, SECRET_KEY_FALLBACKS=[old_key]
    ):
        assert signing_secrets(WebhookEndpoint.objects.get()) == [created.secret]
    with (
        override_settings(SECRET_KEY="a-new-secret-key-" + "x" * 40, SECRET_KEY_FALLBACKS=[]),
        pytest.raises(ValueError, match="rotate the endpoint's secret"),
    ):
        signing_secrets(WebhookEndpoint.objects.get())


def test_after_a_rotation_both_secrets_sign_for_24_hours(tenant: Tenant) -> None:
    first = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    now = timezone.now()
    second = endpoint_rotate_secret(first.endpoint, now=now)
    assert second.secret != first.secret
    endpoint = WebhookEndpoint.objects.get()
    assert signing_secrets(endpoint, now=now + timedelta(hours=23)) == [second.secret, first.secret]
    assert signing_secrets(endpoint, now=now + timedelta(hours=24, seconds=1)) == [second.secret]


def test_two_rotations_in_a_day_keep_every_secret_a_receiver_may_still_hold(
    tenant: Tenant,
) -> None:
    first = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"])
    now = timezone.now()
    second = endpoint_rotate_secret(first.endpoint, now=now)
    third = endpoint_rotate_secret(second.endpoint, now=now + timedelta(hours=1))
    endpoint = WebhookEndpoint.objects.get()
    assert signing_secrets(endpoint, now=now + timedelta(hours=2)) == [
        third.secret,
        second.secret,
        first.secret,
    ]
    # Each old secret stops on its own time.
    assert signing_secrets(endpoint, now=now + timedelta(hours=24, seconds=1)) == [
        third.secret,
        second.secret,
    ]
    later = endpoint_rotate_secret(endpoint, now=now + timedelta(hours=30))
    assert len(WebhookEndpoint.objects.get().previous_secrets) == 1  # the expired ones pruned
    assert signing_secrets(WebhookEndpoint.objects.get(), now=now + timedelta(hours=30)) == [
        later.secret,
        third.secret,
    ]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"url": "http://93.184.215.14/x", "events": ["*"]}, "url"),
        ({"url": "https://127.0.0.1/x", "events": ["*"]}, "url"),
        ({"url": "", "events": ["*"]}, "url"),
        ({"url": PUBLIC, "events": []}, "events"),
        ({"url": PUBLIC, "events": ["ping"]}, "events"),
        ({"url": PUBLIC, "events": ["event.exploded"]}, "events"),
        ({"url": PUBLIC, "events": "*"}, "events"),
        ({"url": PUBLIC, "events": ["*"], "signals": ["no-such-signal"]}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "signals": "page-visit"}, "signals"),
        ({"url": PUBLIC, "events": ["*"], "description": "d" * 501}, "description"),
    ],
)
def test_what_an_endpoint_may_not_be_is_refused_by_field(
    tenant: Tenant, fields: dict, field: str
) -> None:
    with pytest.raises(InvalidEndpoint) as refused:
        endpoint_create(organization=tenant.organization, **fields)
    assert refused.value.details is not None and refused.value.details[0]["field"] == field
    assert refused.value.status_code == 400 and refused.value.code == "invalid_webhook_endpoint"
    assert not WebhookEndpoint.objects.exists()


def test_signals_are_those_of_its_own_organization(
    tenant: Tenant, make_tenant: Callable[[str], Tenant]
) -> None:
    make_tenant("globex").signal("theirs")
    with pytest.raises(InvalidEndpoint, match="theirs"):
        endpoint_create(
            organization=tenant.organization, url=PUBLIC, events=["*"], signals=["theirs"]
        )


def test_the_development_setting_allows_a_local_receiver(tenant: Tenant) -> None:
    with override_settings(BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS=True):
        created = endpoint_create(
            organization=tenant.organization, url="http://127.0.0.1:9/hook", events=["*"]
        )
    assert created.endpoint.url == "http://127.0.0.1:9/hook"


def test_it_wants_the_types_and_signals_it_subscribed_to(tenant: Tenant) -> None:
    visit = tenant.signal("page-visit")
    other = tenant.signal("other-signal")
    endpoint = endpoint_create(
        organization=tenant.organization,
        url=PUBLIC,
        events=["insight.created", "event.failed"],
        signals=["page-visit"],
    ).endpoint
    assert signal_slugs(endpoint) == ["page-visit"]
    assert wants(endpoint, "insight.created", visit.pk)
    assert not wants(endpoint, "event.completed", visit.pk)
    assert not wants(endpoint, "insight.created", other.pk)
    endpoint_update(endpoint, events=["*"], signals=[])
    assert wants(endpoint, "state.changed", other.pk)
    endpoint_update(endpoint, enabled=False)
    assert not wants(endpoint, "state.changed", other.pk)


def test_the_signal_filter_follows_a_renamed_signal_not_its_old_slug(tenant: Tenant) -> None:
    visit = tenant.signal("page-visit")
    endpoint = endpoint_create(
        organization=tenant.organization, url=PUBLIC, events=["*"], signals=["page-visit"]
    ).endpoint
    Signal.objects.filter(pk=visit.pk).update(slug="docs-visit")
    newcomer = tenant.signal("page-visit")
    endpoint.refresh_from_db()
    assert signal_slugs(endpoint) == ["docs-visit"]
    assert wants(endpoint, "event.completed", visit.pk)
    assert not wants(endpoint, "event.completed", newcomer.pk)


def test_enabling_an_endpoint_disabled_for_failing_clears_the_reason(tenant: Tenant) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        enabled=False,
        disabled_reason="every delivery failed for 3 days",
        failing_since=timezone.now(),
    )
    endpoint.refresh_from_db()
    endpoint_update(endpoint, enabled=True)
    endpoint.refresh_from_db()
    assert endpoint.enabled and endpoint.disabled_reason == "" and endpoint.failing_since is None


def test_sending_enabled_true_to_an_enabled_endpoint_keeps_its_failure_clock(
    tenant: Tenant,
) -> None:
    endpoint = endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"]).endpoint
    since = timezone.now() - timedelta(days=2)
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(failing_since=since)
    endpoint.refresh_from_db()
    endpoint_update(endpoint, enabled=True, description="the whole object sent back")
    endpoint.refresh_from_db()
    assert endpoint.failing_since == since


@pytest.mark.parametrize("enabled", ["false", 0, None])
def test_enabled_must_be_a_boolean(tenant: Tenant, enabled: object) -> None:
    with pytest.raises(InvalidEndpoint, match="enabled"):
        endpoint_create(organization=tenant.organization, url=PUBLIC, events=["*"], enabled=enabled)


def test_a_deleted_signal_leaves_the_filter_and_a_filter_left_empty_disables_the_endpoint(
    tenant: Tenant,
) -> None:
    visit, health = tenant.signal("page-visit"), tenant.signal("health")
    filtered = endpoint_create(
        organization=tenant.organization,
        url=PUBLIC,
        events=["*"],
        signals=["page-visit", "health"],
    ).endpoint
    unfiltered = endpoint_create(
        organization=tenant.organization, url=PUBLIC, events=["*"]
    ).endpoint
    visit_id = visit.pk

    visit.delete()  # a signal with no events may be deleted
    filtered.refresh_from_db()
    assert filtered.signal_ids == [health.pk] and filtered.enabled
    assert not wants(filtered, "event.completed", visit_id)

    Signal.objects.filter(pk=health.pk).delete()
    filtered.refresh_from_db()
    # Not an empty filter ("every signal"), nor one that matches nothing while showing none.
    assert filtered.signal_ids == [] and not filtered.enabled
    assert "named only signals that were deleted" in filtered.disabled_reason
    unfiltered.refresh_from_db()
    assert unfiltered.enabled and unfiltered.signal_ids == []

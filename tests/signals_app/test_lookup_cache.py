"""The two-level lookup cache: local hits, immediate local invalidation, bounded staleness."""

from __future__ import annotations

import time

from django.core.cache import cache

from bigmind.cache import MISSING
from signals_app.models import Signal
from signals_app.selectors import lookups, signal_cache_key, signal_get_active_ref
from signals_app.services import signal_update
from tests.conftest import Tenant


def test_a_change_in_this_process_is_seen_at_once(
    tenant: Tenant, django_capture_on_commit_callbacks
) -> None:
    signal = tenant.signal("docs")
    org = tenant.organization.pk
    assert signal_get_active_ref(organization_id=org, slug="docs") is not None
    with django_capture_on_commit_callbacks(execute=True):
        signal_update(signal=signal, active=False)
    assert signal_get_active_ref(organization_id=org, slug="docs") is None


def test_a_change_made_by_another_process_is_seen_within_the_local_ttl(
    tenant: Tenant, settings
) -> None:
    settings.BIGMIND_LOCAL_CACHE_SECONDS = 0.3
    tenant.signal("docs")
    org = tenant.organization.pk
    assert signal_get_active_ref(organization_id=org, slug="docs") is not None

    # What another process's signal_update does: the row changes, the shared entry goes.
    Signal.objects.filter(slug="docs").update(active=False)
    cache.delete(signal_cache_key(org, "docs"))

    assert signal_get_active_ref(organization_id=org, slug="docs") is not None  # local, stale
    time.sleep(0.35)
    assert signal_get_active_ref(organization_id=org, slug="docs") is None


def test_the_local_level_can_be_turned_off(tenant: Tenant, settings) -> None:
    settings.BIGMIND_LOCAL_CACHE_SECONDS = 0
    tenant.signal("docs")
    org = tenant.organization.pk
    assert signal_get_active_ref(organization_id=org, slug="docs") is not None
    Signal.objects.filter(slug="docs").update(active=False)
    cache.delete(signal_cache_key(org, "docs"))
    assert signal_get_active_ref(organization_id=org, slug="docs") is None


def test_a_shared_hit_is_kept_locally(tenant: Tenant) -> None:
    tenant.signal("docs")
    org = tenant.organization.pk
    first = signal_get_active_ref(organization_id=org, slug="docs")
    lookups.clear_local()
    assert signal_get_active_ref(organization_id=org, slug="docs") == first  # from the shared level
    cache.clear()
    assert signal_get_active_ref(organization_id=org, slug="docs") == first  # from the local level


def test_a_reader_cannot_put_an_invalidated_entry_back() -> None:
    lookups.invalidate("k")
    lookups.clear_local()
    lookups.fill("k", "stale row read before the change", 300)
    lookups.clear_local()
    assert lookups.get("k") is MISSING

"""Reads of the control plane, including the cached lookups on the ingest path.

Cache entries are small frozen dataclasses. Every write through `signals_app.services`
invalidates the entries it affects; `BIGMIND_LOOKUP_CACHE_SECONDS` only bounds the damage of a
write that bypasses the services (a raw SQL fix, a shell session).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cachetools import LRUCache, TTLCache
from django.conf import settings
from django.db import DatabaseError
from django.db.models import Max, Prefetch, QuerySet

from bigmind.cache import MISSING, LookupCache
from bigmind.db import read_on_live_connection
from bigmind.errors import NotFound
from signals_app.models import ApiKey, Organization, SchemaVersion, Signal
from signals_app.schemas import schema_compile

lookups = LookupCache()
# Unknown keys and slugs are cached too (so garbage cannot hammer the database), but briefly.
_NEGATIVE_TTL = 60


@dataclass(frozen=True)
class SignalRef:
    id: int
    public_id: str
    slug: str
    type: str
    organization_id: int
    rate_limit_per_minute: int | None
    latest_version: int | None
    # "reject" or "flag" (signals_app.models.Enforcement).
    enforcement: str = "reject"
    # Checked rules, [{"path", "mode"}] (signals_app/redaction_rules.py); a tuple: refs are shared.
    redact: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ApiKeyRef:
    id: int
    organization_id: int
    revoked: bool
    scopes: frozenset[str] = frozenset()
    # Signal slugs the key may write and read; None: every signal.
    signals: frozenset[str] | None = None
    expires_at: datetime | None = None


# In the shared cache's key names: bumped whenever SignalRef or ApiKeyRef change shape, so that a
# ref cached by the previous release (pickled without the new fields, which would then read as
# their defaults: no scopes at all) is never read by this one during a deploy.
_REF_VERSION = 2


def signal_cache_key(organization_id: int, slug: str) -> str:
    """The shared-cache key of a signal lookup (public: tests and tools that act as another
    process, changing the shared level only, need the same key)."""
    # Hashed: a slug from a request may hold characters a cache key must not.
    digest = hashlib.sha1(slug.encode("utf-8", "surrogatepass")).hexdigest()  # noqa: S324
    return f"signal:v{_REF_VERSION}:{organization_id}:{digest}"


def api_key_cache_key(key_hash: str) -> str:
    """The shared-cache key of an API key lookup, by the key's digest only (see
    tests/security/test_key_timing.py)."""
    return f"apikey:v{_REF_VERSION}:{key_hash}"


def signal_cache_invalidate(*, organization_id: int, slug: str) -> None:
    lookups.invalidate(signal_cache_key(organization_id, slug))


def api_key_cache_invalidate(*, key_hash: str) -> None:
    lookups.invalidate(api_key_cache_key(key_hash))


def signal_get_active_ref(*, organization_id: int, slug: str) -> SignalRef | None:
    """The active signal with this slug in this organization, or None."""
    key = signal_cache_key(organization_id, slug)
    hit: Any = lookups.get(key)
    if hit is not MISSING:
        return hit  # type: ignore[no-any-return]
    signal = read_on_live_connection(
        lambda: (
            Signal.objects.filter(organization_id=organization_id, slug=slug, active=True)
            .annotate(latest=Max("schema_versions__version"))
            .first()
        )
    )
    if signal is None:
        lookups.fill(key, None, _NEGATIVE_TTL)
        return None
    ref = SignalRef(
        id=signal.pk,
        public_id=signal.public_id,
        slug=signal.slug,
        type=signal.type,
        organization_id=signal.organization_id,
        rate_limit_per_minute=signal.rate_limit_per_minute,
        latest_version=signal.latest,  # type: ignore[attr-defined]
        enforcement=signal.enforcement,
        redact=tuple((rule["path"], rule["mode"]) for rule in signal.redact or ()),
    )
    lookups.fill(key, ref, settings.BIGMIND_LOOKUP_CACHE_SECONDS)
    return ref


def api_key_get_ref(*, key_hash: str) -> ApiKeyRef | None:
    key = api_key_cache_key(key_hash)
    hit: Any = lookups.get(key)
    if hit is not MISSING:
        return hit  # type: ignore[no-any-return]
    row = read_on_live_connection(
        lambda: (
            ApiKey.objects.filter(key_hash=key_hash)
            .values("id", "organization_id", "revoked_at", "scopes", "signals", "expires_at")
            .first()
        )
    )
    if row is None:
        lookups.fill(key, None, _NEGATIVE_TTL)
        return None
    ref = ApiKeyRef(
        id=row["id"],
        organization_id=row["organization_id"],
        revoked=row["revoked_at"] is not None,
        scopes=frozenset(row["scopes"] or ()),
        signals=None if row["signals"] is None else frozenset(row["signals"]),
        expires_at=row["expires_at"],
    )
    lookups.fill(key, ref, settings.BIGMIND_LOOKUP_CACHE_SECONDS)
    return ref


# Schema versions are immutable, so a found version is kept in process memory without expiry
# (the 4,096 most recently used; one pushed out is compiled again on its next use); a missing
# one is looked up again next time (it may have been added since).
# Keyed by the signal's random public id, not its primary key: SQLite may reuse a deleted
# row's integer id, a public id is never reused.
_schema_versions: LRUCache[tuple[str, int], tuple[int, Any]] = LRUCache(maxsize=4096)
_schema_versions_lock = threading.Lock()


def schema_validators_clear() -> None:
    """Forget every compiled validator of this process (tests)."""
    with _schema_versions_lock:
        _schema_versions.clear()


def schema_version_validator(signal: SignalRef, version: int) -> Any | None:
    """The compiled validator of `version` of the signal, or None if that version does not exist."""
    try:
        with _schema_versions_lock:
            return _schema_versions[(signal.public_id, version)][1]
    except KeyError:
        pass
    row = read_on_live_connection(
        lambda: (
            SchemaVersion.objects.filter(signal_id=signal.id, version=version)
            .values_list("id", "schema")
            .first()
        )
    )
    if row is None:
        return None
    schema_version_id, schema = row
    found = (schema_version_id, schema_compile(schema))
    with _schema_versions_lock:
        _schema_versions[(signal.public_id, version)] = found
    return found[1]


# --- The read API (GET /v1/signals...) --------------------------------------------------------
# Version numbers are PostgreSQL integers; a longer number cannot exist and would overflow
# SQLite's 64-bit parameters, so it is answered without a query.
_MAX_VERSION = 2**31 - 1


def _signals_with_versions(organization_id: int) -> QuerySet[Signal]:
    # Only the numbers and dates of the versions: the schemas themselves can be large.
    versions = SchemaVersion.objects.only("id", "signal_id", "version", "created_at").order_by(
        "version"
    )
    return Signal.objects.filter(organization_id=organization_id).prefetch_related(
        Prefetch("schema_versions", queryset=versions)
    )


def signal_list(*, organization_id: int, slugs: frozenset[str] | None = None) -> list[Signal]:
    """Every signal of the organization, active or not, by slug; versions prefetched. Only
    those of `slugs` (an API key's allow-list) when given."""
    signals = _signals_with_versions(organization_id)
    if slugs is not None:
        signals = signals.filter(slug__in=sorted(slugs))
    return list(signals.order_by("slug"))


def _signal_not_found(slug: str) -> NotFound:
    return NotFound(f"Signal not found: {slug}", code="signal_not_found")


def signal_get(*, organization_id: int, slug: str, slugs: frozenset[str] | None = None) -> Signal:
    """The organization's signal with this slug, inactive ones included; versions prefetched.
    A slug outside `slugs` (an API key's allow-list) is not found, like one that never was."""
    if "\x00" in slug:  # never a slug, and PostgreSQL refuses NUL even as a parameter
        raise _signal_not_found(slug)
    if slugs is not None and slug not in slugs:
        raise _signal_not_found(slug)
    signal = _signals_with_versions(organization_id).filter(slug=slug).first()
    if signal is None:
        raise _signal_not_found(slug)
    return signal


def signal_rate_limit(*, signal: Signal) -> tuple[int, bool]:
    """The signal's budget per minute and whether it is the signal's own (not its type's)."""
    if signal.rate_limit_per_minute is not None:
        return signal.rate_limit_per_minute, True
    return settings.BIGMIND_RATE_LIMITS[signal.type], False


def schema_version_get(
    *, organization_id: int, slug: str, version: str, slugs: frozenset[str] | None = None
) -> SchemaVersion:
    """Version `version` ("latest" or a number) of the signal's schema, signal selected. A
    slug outside `slugs` (an API key's allow-list) is not found, like one that never was."""
    if "\x00" in slug:
        raise _signal_not_found(slug)
    if slugs is not None and slug not in slugs:
        raise _signal_not_found(slug)
    signal = Signal.objects.filter(organization_id=organization_id, slug=slug).first()
    if signal is None:
        raise _signal_not_found(slug)
    not_found = NotFound(
        f"Schema version {version} not found for signal {slug}", code="schema_version_not_found"
    )
    versions = SchemaVersion.objects.filter(signal=signal)
    if version == "latest":
        found = versions.order_by("-version").first()
    elif version.isascii() and version.isdigit() and int(version) <= _MAX_VERSION:
        found = versions.filter(version=int(version)).first()
    else:
        raise not_found
    if found is None:
        raise not_found
    found.signal = signal
    return found


# Process-local: the request and task log lines name organizations by slug (bigmind.logs,
# events_app.metrics), but an API key or an event only gives the id. One query per
# organization and process every 5 minutes (the cache's ttl); a renamed slug shows up in the
# logs within that time.
_slugs: TTLCache[int, str] = TTLCache(maxsize=10_000, ttl=300.0)
_slugs_lock = threading.Lock()


def organization_slugs_forget() -> None:
    """Empty this process's slugs (tests: SQLite reuses a rolled-back organization's id)."""
    with _slugs_lock:
        _slugs.clear()


def organization_slug(organization_id: int | None) -> str | None:
    if organization_id is None:
        return None
    with _slugs_lock:
        slug = _slugs.get(organization_id)
    if slug is not None:
        return slug
    try:
        slug = (
            Organization.objects.filter(pk=organization_id).values_list("slug", flat=True).first()
        )
    except DatabaseError:
        return None  # the database is down: the line still has organization_id
    if slug is None:
        return None
    with _slugs_lock:
        _slugs[organization_id] = slug
    return slug


def organization_get(*, organization_id: int) -> Organization:
    """The organization an authenticated key acts for (it exists: the key does)."""
    return Organization.objects.get(pk=organization_id)

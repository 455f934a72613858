"""Writes of the control plane: signals, schema versions, API keys (organizations and
memberships: signals_app/organizations.py; signals as code: signals_app/signals_as_code.py).

Every write that changes what the ingest path sees invalidates the cached lookups after its
transaction commits (so a concurrent request cannot re-cache the old row before the commit).
Every change is recorded in the audit log (signals_app/audit.py) in its own transaction.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from bigmind.errors import BadRequest, Conflict, NotFound
from signals_app.audit import audit_diff, audit_record
from signals_app.compatibility import SchemaIncompatible, schema_compatibility_check
from signals_app.models import (
    Aggregation,
    ApiKey,
    ApiScope,
    Compatibility,
    Enforcement,
    Organization,
    Period,
    SchemaVersion,
    Signal,
    SignalType,
    api_scopes_all,
)

# Organizations and memberships have their own module; callers know this one.
# Organizations and memberships have their own module; callers know this one.
from signals_app.organizations import organization_get_or_create as organization_get_or_create
from signals_app.redaction_rules import redaction_rules_check
from signals_app.schemas import schema_check
from signals_app.selectors import api_key_cache_invalidate, signal_cache_invalidate

_BASE62 = string.ascii_letters + string.digits
API_KEY_PREFIX = "sk_"
# Characters of the secret kept in clear as the key's recognisable prefix (`sk_` + 8).
_VISIBLE_SECRET_CHARS = 8
SLUG_MAX_LENGTH = 100


# --- API keys ---------------------------------------------------------------------------------
def api_key_hash(raw_key: str) -> str:
    # Keys carry 256 bits of randomness, so a fast unsalted hash is enough: nobody can
    # brute-force the preimage, and lookups stay one indexed equality match.
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def api_key_prefix(raw_key: str) -> str:
    return raw_key[: len(API_KEY_PREFIX) + _VISIBLE_SECRET_CHARS]


@dataclass(frozen=True)
class ApiKeyLimits:
    """What a new key may do, checked: its scopes (in ApiScope's order), its signal allow-list
    (sorted slugs; None: every signal) and its expiry (None: never)."""

    scopes: list[str]
    signals: list[str] | None
    expires_at: datetime | None


def api_key_limits_check(
    *,
    organization: Organization,
    scopes: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    expires_at: datetime | None = None,
) -> ApiKeyLimits:
    """The limits of a key about to be made, or BadRequest saying what is wrong with them.

    `scopes` None: every scope (the default of a key). `signals` None: every signal; otherwise
    slugs of the organization's signals, inactive ones included. An empty list of either is
    refused: a key that may do nothing is a mistake, and an empty allow-list must not be
    mistaken for "every signal".
    """
    if scopes is None:
        chosen = api_scopes_all()
    else:
        unknown = sorted({scope for scope in scopes if scope not in ApiScope.values})
        if unknown:
            raise BadRequest(
                f"Unknown scope: {', '.join(unknown)}; the scopes are {', '.join(ApiScope.values)}"
            )
        if not scopes:
            raise BadRequest("A key needs at least one scope (leave them out for every scope)")
        chosen = [scope for scope in ApiScope.values if scope in scopes]
    allowed: list[str] | None = None
    if signals is not None:
        if not signals:
            raise BadRequest(
                "A signal allow-list needs at least one signal (leave it out for every signal)"
            )
        wanted = sorted(set(signals))
        found = set(
            Signal.objects.filter(organization=organization, slug__in=wanted).values_list(
                "slug", flat=True
            )
        )
        missing = [slug for slug in wanted if slug not in found]
        if missing:
            raise BadRequest(
                f"No such signal in organization {organization.slug}: {', '.join(missing)}"
            )
        allowed = wanted
    if expires_at is not None and expires_at <= timezone.now():
        raise BadRequest("The expiry time must be in the future")
    return ApiKeyLimits(scopes=chosen, signals=allowed, expires_at=expires_at)


def api_key_create(
    *,
    organization: Organization,
    name: str = "",
    raw_key: str | None = None,
    scopes: Sequence[str] | None = None,
    signals: Sequence[str] | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Create a key and return it with the full secret, which is never available again.

    `raw_key` lets `bootstrap_demo` install its fixed, documented local key; everything else
    gets 256 random bits. `scopes`, `signals` and `expires_at` limit it (api_key_limits_check);
    left out, the key has full access to its organization's data and never expires.
    """
    limits = api_key_limits_check(
        organization=organization, scopes=scopes, signals=signals, expires_at=expires_at
    )
    raw = raw_key or API_KEY_PREFIX + secrets.token_urlsafe(32)
    if not raw.startswith(API_KEY_PREFIX) or len(raw) < 24:
        raise BadRequest("An API key must start with 'sk_' and be at least 24 characters long")
    key_hash = api_key_hash(raw)
    try:
        with transaction.atomic():
            api_key = ApiKey.objects.create(
                organization=organization,
                name=name,
                prefix=api_key_prefix(raw),
                key_hash=key_hash,
                scopes=limits.scopes,
                signals=limits.signals,
                expires_at=limits.expires_at,
            )
            _api_key_audit("api_key.created", api_key, audit_diff({}, _api_key_fields(api_key)))
    except IntegrityError as exc:
        raise Conflict("That API key exists already") from exc
    # An unknown key may have been cached as such by a request that tried it before.
    transaction.on_commit(lambda: api_key_cache_invalidate(key_hash=key_hash))
    return api_key, raw


# What an API key's audit entries show: never its hash (nor, since it is not stored, the key).
_API_KEY_AUDITED = ("name", "prefix", "scopes", "signals", "expires_at", "revoked_at")


def _api_key_fields(api_key: ApiKey) -> dict[str, Any]:
    return {name: getattr(api_key, name) for name in _API_KEY_AUDITED}


def _api_key_audit(action: str, api_key: ApiKey, diff: dict[str, list[Any]]) -> None:
    audit_record(
        action=action,
        organization=api_key.organization,
        object_type="api_key",
        object_id=api_key.prefix,
        object_repr=str(api_key),
        changes=diff,
    )


def api_key_update(*, api_key: ApiKey, name: str) -> ApiKey:
    """Rename a key (the admin's change page); nothing else about a key is edited in place."""
    with transaction.atomic():
        # The stored row: a ModelForm has already written the new name onto `api_key`.
        stored = (
            ApiKey.objects.select_for_update().select_related("organization").get(pk=api_key.pk)
        )
        before = _api_key_fields(stored)
        if stored.name != name:
            stored.name = name
            stored.save(update_fields=["name"])
            _api_key_audit("api_key.updated", stored, audit_diff(before, _api_key_fields(stored)))
    api_key.name = name
    return api_key


def api_key_revoke(*, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        with transaction.atomic():
            # Conditional: of two concurrent revocations, one writes (and records) it.
            if ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
                revoked_at=timezone.now()
            ):
                api_key.refresh_from_db(fields=["revoked_at"])
                _api_key_audit(
                    "api_key.revoked",
                    api_key,
                    audit_diff({"revoked_at": None}, {"revoked_at": api_key.revoked_at}),
                )
            else:
                api_key.refresh_from_db(fields=["revoked_at"])
    key_hash = api_key.key_hash
    transaction.on_commit(lambda: api_key_cache_invalidate(key_hash=key_hash))
    return api_key


def api_key_reinstate(*, api_key: ApiKey) -> ApiKey:
    """Undo a revocation (bootstrap_demo keeps its well-known key usable)."""
    if api_key.revoked_at is not None:
        with transaction.atomic():
            revoked_at = api_key.revoked_at
            if ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=False).update(
                revoked_at=None
            ):
                _api_key_audit(
                    "api_key.reinstated",
                    api_key,
                    audit_diff({"revoked_at": revoked_at}, {"revoked_at": None}),
                )
        api_key.revoked_at = None
        key_hash = api_key.key_hash
        transaction.on_commit(lambda: api_key_cache_invalidate(key_hash=key_hash))
    return api_key


def api_key_find(*, prefix_or_key: str) -> ApiKey:
    """The key named by its full secret or by the non-secret prefix the admin shows."""
    if len(prefix_or_key) > len(API_KEY_PREFIX) + _VISIBLE_SECRET_CHARS:
        found = ApiKey.objects.filter(key_hash=api_key_hash(prefix_or_key)).first()
        if found is None:
            raise NotFound("No API key matches that key")
        return found
    matches = list(ApiKey.objects.filter(prefix=prefix_or_key)[:2])
    if not matches:
        raise NotFound(f"No API key has the prefix {prefix_or_key!r}")
    if len(matches) > 1:
        raise Conflict(f"Several API keys have the prefix {prefix_or_key!r}; give the full key")
    return matches[0]


# --- Signals ----------------------------------------------------------------------------------
def base62(length: int) -> str:
    """`length` random base62 characters: the random part of every public id and secret the
    project makes (`sig_`, `we_`, `whsec_`)."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def _public_id() -> str:
    return "sig_" + base62(8)


@functools.lru_cache(maxsize=4096)
def _is_slug(slug: str) -> bool:
    # Memoized: ingest checks the slug of every request (slugify normalises Unicode and runs
    # two regular expressions); the set of slugs a deployment sees is small.
    return bool(slug) and len(slug) <= SLUG_MAX_LENGTH and slugify(slug) == slug


def signal_slug_check(slug: str) -> str:
    if not _is_slug(slug):
        raise BadRequest(
            f"Signal slug must be lowercase letters, digits, hyphens and underscores "
            f"(at most {SLUG_MAX_LENGTH} characters): {slug!r}"
        )
    return slug


def signal_settings_check(fields: dict[str, Any]) -> dict[str, Any]:
    """Normalise and check the settings of a signal; type-specific fields only where they apply.

    Pure (no I/O), so forms can show the same errors the services would raise."""
    signal_type = fields.get("type")
    if signal_type not in SignalType.values:
        raise BadRequest(
            f"Signal type must be one of {', '.join(SignalType.values)}: {signal_type!r}"
        )
    if fields.get("compatibility", Compatibility.NONE) not in Compatibility.values:
        raise BadRequest(
            f"compatibility must be one of {', '.join(Compatibility.values)}: "
            f"{fields.get('compatibility')!r}"
        )
    for text in ("name", "description", "ai_instructions", "value_field"):
        if fields.get(text) is None:
            fields[text] = ""
        if not isinstance(fields[text], str):
            raise BadRequest(f"{text} must be a string")
    if not isinstance(fields.get("active", True), bool):
        raise BadRequest("active must be true or false")
    if fields.get("enforcement", Enforcement.REJECT) not in Enforcement.values:
        raise BadRequest(
            f"enforcement must be one of {', '.join(Enforcement.values)}: "
            f"{fields.get('enforcement')!r}"
        )
    if "redact" in fields:
        fields["redact"] = redaction_rules_check(fields["redact"])
    limit = fields.get("rate_limit_per_minute")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise BadRequest(f"rate_limit_per_minute must be a positive integer: {limit!r}")
    if signal_type == SignalType.METRIC:
        if fields.get("aggregation") not in Aggregation.values:
            raise BadRequest(
                f"A metric signal needs aggregation, one of {', '.join(Aggregation.values)}"
            )
        if fields.get("period") not in Period.values:
            raise BadRequest(f"A metric signal needs period, one of {', '.join(Period.values)}")
        fields["value_field"] = fields.get("value_field") or "value"
    else:
        for metric_only in ("aggregation", "period", "value_field"):
            if fields.get(metric_only):
                raise BadRequest(f"{metric_only} applies to metric signals only")
            fields[metric_only] = ""
    return fields


SIGNAL_SETTINGS = (
    "name",
    "type",
    "description",
    "ai_instructions",
    "active",
    "rate_limit_per_minute",
    "compatibility",
    "aggregation",
    "period",
    "value_field",
    "enforcement",
    "redact",
)


def _unique_slug(organization: Organization, name: str) -> str:
    base = slugify(name)[: SLUG_MAX_LENGTH - 4] or "signal"
    taken = set(
        Signal.objects.filter(organization=organization, slug__startswith=base).values_list(
            "slug", flat=True
        )
    )
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


def signal_create(
    *, organization: Organization, name: str, type: str, slug: str | None = None, **settings: Any
) -> Signal:
    """Create a signal; the slug is made from the name unless given."""
    unknown = set(settings) - set(SIGNAL_SETTINGS)
    if unknown:
        raise BadRequest(f"Unknown signal settings: {', '.join(sorted(unknown))}")
    if not name or not name.strip():
        raise BadRequest("A signal needs a name")
    fields = signal_settings_check({"name": name, "type": type, **settings})
    slug = signal_slug_check(slug) if slug else _unique_slug(organization, name)
    for _ in range(3):
        try:
            with transaction.atomic():
                signal = Signal.objects.create(
                    organization=organization, slug=slug, public_id=_public_id(), **fields
                )
                _signal_audit("signal.created", signal, audit_diff({}, _signal_fields(signal)))
            break
        except IntegrityError as exc:
            if Signal.objects.filter(organization=organization, slug=slug).exists():
                raise Conflict(f"A signal with slug {slug!r} exists already") from exc
            # Otherwise a public id collided (1 in 62^8): draw another.
    else:  # pragma: no cover - three collisions in a row
        raise Conflict("Could not allocate a signal id")
    # A request may have cached "no such signal" for this slug.
    org_id = organization.pk
    transaction.on_commit(lambda: signal_cache_invalidate(organization_id=org_id, slug=slug))
    return signal


def signal_update(*, signal: Signal, **changes: Any) -> Signal:
    """Change a signal's settings. Compares against the stored row, not `signal`'s attributes
    (a ModelForm has already written the new values onto its instance)."""
    unknown = set(changes) - {*SIGNAL_SETTINGS, "slug"}
    if unknown:
        raise BadRequest(f"Unknown signal settings: {', '.join(sorted(unknown))}")
    try:
        with transaction.atomic():
            stored = Signal.objects.select_for_update().get(pk=signal.pk)
            old_slug = stored.slug
            merged = {name: getattr(stored, name) for name in SIGNAL_SETTINGS} | changes
            if "type" in changes and changes["type"] != stored.type:
                # Leaving the metric type drops the metric settings unless they are given.
                for metric_only in ("aggregation", "period", "value_field"):
                    merged[metric_only] = changes.get(metric_only, "")
            fields = signal_settings_check(merged)
            if "slug" in changes:
                fields["slug"] = signal_slug_check(changes["slug"])
            before = _signal_fields(stored)
            for name, value in fields.items():
                setattr(stored, name, value)
            stored.save()
            diff = audit_diff(before, _signal_fields(stored))
            if diff:
                # Enforcement and redaction rules are among the fields: their changes show here.
                _signal_audit("signal.updated", stored, diff)
    except IntegrityError as exc:
        raise Conflict(f"A signal with slug {changes.get('slug')!r} exists already") from exc
    org_id, new_slug = stored.organization_id, stored.slug

    def invalidate() -> None:
        signal_cache_invalidate(organization_id=org_id, slug=old_slug)
        signal_cache_invalidate(organization_id=org_id, slug=new_slug)

    transaction.on_commit(invalidate)
    return stored


def _signal_fields(signal: Signal) -> dict[str, Any]:
    return {"slug": signal.slug} | {name: getattr(signal, name) for name in SIGNAL_SETTINGS}


def _signal_audit(action: str, signal: Signal, diff: dict[str, list[Any]]) -> None:
    audit_record(
        action=action,
        organization=signal.organization,
        object_type="signal",
        object_id=signal.public_id,
        object_repr=str(signal),
        changes=diff,
    )


def _schema_version_compatibility_raise(
    *, signal: Signal, schema: Any, mode: str, latest: SchemaVersion | None
) -> None:
    if mode == Compatibility.NONE or latest is None:
        return
    problems = schema_compatibility_check(
        old=latest.schema, new=schema, mode=mode, old_version=latest.version
    )
    if problems:
        how = "fully (backward and forward)" if mode == Compatibility.FULL else mode
        raise SchemaIncompatible(
            f"Schema version {latest.version + 1} of signal {signal.slug} is not {how} "
            f"compatible with version {latest.version}",
            details=[problem.as_detail() for problem in problems],
        )


def schema_version_compatibility_check(
    *, signal: Signal, schema: Any, compatibility: str | None = None
) -> None:
    """Refuse `schema` as the signal's next version if it breaks the compatibility mode
    (`compatibility`, or the signal's own) against the latest version.

    Like Confluent's non-transitive modes, only the latest version is compared. For forms
    that want the error before saving; `schema_version_create` checks again under its lock."""
    latest = signal.schema_versions.order_by("-version").first() if signal.pk else None
    _schema_version_compatibility_raise(
        signal=signal,
        schema=schema,
        mode=compatibility or signal.compatibility,
        latest=latest,
    )


def schema_version_create(*, signal: Signal, schema: Any) -> SchemaVersion:
    """Add the next version of the signal's schema (versions are never edited).

    Refused (saving nothing) when the schema is not a usable draft 2020-12 schema, or when it
    breaks the signal's compatibility mode against the latest version."""
    schema_check(schema)
    with transaction.atomic():
        # Serialise version numbering per signal (a no-op lock on SQLite, whose writes are
        # serialised anyway); the unique constraint is the backstop. The stored mode is read
        # under the lock too, so a concurrent change of mode cannot slip a version past it.
        locked = Signal.objects.select_for_update().filter(pk=signal.pk).first()
        latest = signal.schema_versions.order_by("-version").first()
        _schema_version_compatibility_raise(
            signal=signal,
            schema=schema,
            mode=locked.compatibility if locked is not None else signal.compatibility,
            latest=latest,
        )
        number = latest.version + 1 if latest is not None else 1
        version = SchemaVersion.objects.create(signal=signal, version=number, schema=schema)
        # The schema itself stays in its (immutable) version; the entry names the version.
        audit_record(
            action="schema_version.created",
            organization=signal.organization,
            object_type="schema_version",
            object_id=f"{signal.public_id}/v{number}",
            object_repr=f"{signal} v{number}",
            changes={"version": [None, number]},
        )
    org_id, slug = signal.organization_id, signal.slug
    transaction.on_commit(lambda: signal_cache_invalidate(organization_id=org_id, slug=slug))
    return version

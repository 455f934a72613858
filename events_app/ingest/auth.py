"""Bearer authentication with `sk_` API keys."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cachetools import TTLCache
from django.utils import timezone
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from bigmind.db import read_on_live_connection
from bigmind.errors import Forbidden, Unauthorized
from signals_app.models import ApiKey, ApiScope
from signals_app.selectors import api_key_cache_invalidate, api_key_get_ref
from signals_app.services import api_key_hash

# last_used_at is written at most this often per key and process: a busy key costs no
# extra write per request.
LAST_USED_RESOLUTION_SECONDS = 60
_MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class ApiClient:
    """Who is calling: an API key acting for one organization. Stands in for `request.user`."""

    api_key_id: int
    organization_id: int
    is_authenticated: bool = True
    # What the key may do (signals_app.models.ApiScope values) and which signals' events it may
    # write and read (slugs; None: every signal). The defaults are a staff replay's: no limits.
    scopes: frozenset[str] = frozenset(ApiScope.values)
    signals: frozenset[str] | None = None

    def signal_allowed(self, slug: str) -> bool:
        return self.signals is None or slug in self.signals

    def signal_allowed_check(self, slug: str) -> None:
        """Refuse a signal outside the key's allow-list, whether or not it exists: a restricted
        key must not learn which other slugs the organization has."""
        if not self.signal_allowed(slug):
            raise signal_not_allowed(slug)


def signal_not_allowed(slug: str) -> Forbidden:
    return Forbidden(
        f"This API key may not use signal {slug[:100]}: it is not in the key's signal allow-list",
        code="signal_not_allowed",
    )


# The keys whose last_used_at this process wrote within the resolution: an id is in it for that
# long. Bounded: a key pushed out early is only written again sooner.
_last_used_written: TTLCache[int, bool] = TTLCache(
    maxsize=10_000, ttl=LAST_USED_RESOLUTION_SECONDS, timer=time.monotonic
)
_last_used_lock = threading.Lock()


def api_key_last_used_reset() -> None:
    """Forget which keys had last_used_at written (tests: the next use writes it again)."""
    with _last_used_lock:
        _last_used_written.clear()


def _last_used_due(api_key_id: int) -> bool:
    """True once per key and resolution (any thread of the process): then write last_used_at."""
    with _last_used_lock:
        if api_key_id in _last_used_written:
            return False
        _last_used_written[api_key_id] = True
        return True


def api_key_authenticate(*, raw_key: str) -> ApiClient:
    # Lookup is by the key's SHA-256, an exact match on a unique index: how long it takes does
    # not depend on how many leading characters of a guess are right.
    if not raw_key.startswith("sk_") or len(raw_key) > _MAX_KEY_LENGTH:
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    key_hash = api_key_hash(raw_key)
    ref = api_key_get_ref(key_hash=key_hash)
    if ref is None:
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    if ref.revoked:
        raise Unauthorized("API key has been revoked", code="revoked_api_key")
    # From the cached ref: a key that expires while cached is refused from that moment on.
    if ref.expires_at is not None and ref.expires_at <= timezone.now():
        raise Unauthorized("API key has expired", code="expired_api_key")
    if _last_used_due(ref.id):
        # Conditional: a key revoked since it was cached is caught here too.
        # Safe to repeat on a new connection: the same conditional update.
        touched = read_on_live_connection(
            lambda: ApiKey.objects.filter(pk=ref.id, revoked_at__isnull=True).update(
                last_used_at=timezone.now()
            )
        )
        if not touched:
            api_key_cache_invalidate(key_hash=key_hash)
            raise Unauthorized("API key has been revoked", code="revoked_api_key")
    return ApiClient(
        api_key_id=ref.id,
        organization_id=ref.organization_id,
        scopes=ref.scopes,
        signals=ref.signals,
    )


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[ApiClient, None]:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            raise Unauthorized(
                "Missing API key: send the header 'Authorization: Bearer sk_...'",
                code="missing_api_key",
            )
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "The Authorization header must be 'Bearer <API key>'", code="invalid_api_key"
            )
        return api_key_authenticate(raw_key=token), None

    def authenticate_header(self, request: Request) -> str:
        # Without this DRF would turn every 401 into a 403.
        return "Bearer"

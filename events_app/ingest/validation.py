"""Parsing and checking an event request: everything that can be decided from the body alone.

The order of the checks is the contract's (first failing rule wins): a JSON object, `signal`,
`identity`, then the type and form of every field. `event_request_parse` takes an already
decoded object so that a batch can run each item through exactly the same checks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from bigmind.errors import BadRequest
from bigmind.strict_json import InvalidJson
from events_app.models import MAX_FUTURE_SKEW

IDENTITY_TYPE_RE = re.compile(r"[a-z0-9_]{1,64}")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e\x80-\uffff][\x20-\x7e\x80-\uffff]{0,254}")
MAX_SIGNAL_LENGTH = 100
MAX_IDENTITY_ID_LENGTH = 255
MAX_REFERENCE_LENGTH = 255
MAX_IDEMPOTENCY_KEY_LENGTH = 255
# Schema version numbers are PostgreSQL integers.
MAX_VERSION = 2**31 - 1


class InvalidField(BadRequest):
    code = "invalid_field"


# The request fingerprint's JSON form (stored hashes depend on it: never change it).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class EventRequest:
    signal: str
    version: int | None  # None means "latest"
    identity_type: str
    identity_id: str
    data: dict[str, Any]
    timestamp: datetime | None
    reference: str | None
    idempotency_key: str | None

    def fingerprint(self) -> str:
        """What makes two requests "the same" for idempotency (the key itself excluded)."""
        canonical = _CANONICAL.encode(
            [
                self.signal,
                self.version,
                self.identity_type,
                self.identity_id,
                self.data,
                self.timestamp.isoformat() if self.timestamp else None,
                self.reference,
            ]
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


# --- Fields ---------------------------------------------------------------------------------
def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _optional_string(payload: dict[str, Any], name: str, max_length: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_length:
        raise InvalidField(f"{name} must be a string of at most {max_length} characters")
    return value


def _parse_version(value: Any) -> int | None:
    if value is None or value == "latest":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidField('version must be a positive integer or "latest"')
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidField('version must be a positive integer or "latest"')
        value = int(value)
    if value < 1 or value > MAX_VERSION:
        raise InvalidField('version must be a positive integer or "latest"')
    return value


def _parse_timestamp(value: Any) -> datetime | None:
    if value is None:
        return None
    message = "timestamp must be an ISO 8601 date-time string, e.g. 2026-03-16T12:00:00Z"
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidField(message)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidField(message) from exc
    if parsed.tzinfo is None:
        # A timestamp without an offset is taken as UTC (documented).
        parsed = parsed.replace(tzinfo=UTC)
    try:
        parsed = parsed.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidField(message) from exc
    if parsed - timezone.now() > MAX_FUTURE_SKEW:
        raise InvalidField("timestamp must not be more than 24 hours in the future")
    return parsed


def event_request_parse(payload: Any, *, idempotency_header: str | None = None) -> EventRequest:
    if not isinstance(payload, dict):
        raise InvalidJson("Request body must be a JSON object")

    signal = payload.get("signal")
    if _blank(signal):
        raise BadRequest("signal is required", code="signal_required")

    identity = payload.get("identity")
    if identity is None or identity == {} or (isinstance(identity, str) and not identity.strip()):
        raise BadRequest("identity.type and identity.id are required", code="identity_required")
    if isinstance(identity, dict) and (_blank(identity.get("type")) or _blank(identity.get("id"))):
        raise BadRequest("identity.type and identity.id are required", code="identity_required")

    # Form of every field, in the order of the request body's documentation.
    if not isinstance(signal, str) or len(signal) > MAX_SIGNAL_LENGTH:
        raise InvalidField(f"signal must be a string of at most {MAX_SIGNAL_LENGTH} characters")
    version = _parse_version(payload.get("version"))
    if not isinstance(identity, dict):
        raise InvalidField("identity must be an object with type and id")
    identity_type, identity_id = identity["type"], identity["id"]
    if not isinstance(identity_type, str) or not IDENTITY_TYPE_RE.fullmatch(identity_type):
        raise InvalidField(
            "identity.type must be account, contact, deal, lead or a custom type of lowercase "
            "letters, digits and underscores (at most 64 characters)"
        )
    if not isinstance(identity_id, str) or len(identity_id) > MAX_IDENTITY_ID_LENGTH:
        raise InvalidField(
            f"identity.id must be a string of at most {MAX_IDENTITY_ID_LENGTH} characters"
        )
    data = payload.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise InvalidField("data must be a JSON object")
    timestamp = _parse_timestamp(payload.get("timestamp"))
    reference = _optional_string(payload, "reference", MAX_REFERENCE_LENGTH)
    body_key = _optional_string(payload, "idempotency_key", MAX_IDEMPOTENCY_KEY_LENGTH)
    header_key = idempotency_header.strip() if idempotency_header is not None else None
    if header_key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(header_key):
        raise InvalidField(
            f"Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters"
        )
    if header_key and body_key and header_key != body_key:
        raise InvalidField("Idempotency-Key header and idempotency_key field differ")
    if body_key is not None and not body_key.strip():
        raise InvalidField("idempotency_key must not be empty")

    return EventRequest(
        signal=signal,
        version=version,
        identity_type=identity_type,
        identity_id=identity_id,
        data=data,
        timestamp=timestamp,
        reference=reference,
        idempotency_key=header_key or body_key,
    )

"""`Bigmind-Signature` headers: how a delivery is signed, and how a receiver checks one.

The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`. Each `v1` is the HMAC-SHA256 of
`"<t>.<raw body>"`, keyed by the UTF-8 bytes of one live signing secret (`whsec_...`). After a
rotation the old secret stays live for 24 hours, so a delivery carries one `v1` per live secret,
and a receiver that still knows only the old secret keeps verifying.

`verify()` uses the standard library only, so a Python receiver may copy this module as it is.
docs/webhooks.md has the same check in Node.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable

HEADER = "Bigmind-Signature"
SCHEME = "v1"
# How far a signature's time may be from the receiver's clock: a replay of an old delivery is
# refused, and a clock a few minutes off still verifies.
DEFAULT_TOLERANCE_SECONDS = 300
# What a well-formed header holds: whole seconds (ASCII digits, bounded), 64 lowercase hex digits.
_TIME = re.compile(r"[0-9]{1,15}")
_HEX = re.compile(r"[0-9a-f]{64}")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `"<timestamp>.<body>"` keyed by `secret`."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def header_value(secrets: Iterable[str], timestamp: int, body: bytes) -> str:
    """The whole header value: the time, then one `v1=` per live secret, newest first."""
    parts = [f"t={timestamp}"]
    parts += [f"{SCHEME}={signature(secret, timestamp, body)}" for secret in secrets]
    if len(parts) == 1:
        raise ValueError("a delivery is signed with at least one secret")
    return ",".join(parts)


def parse(value: str) -> tuple[int, list[str]]:
    """(t, [v1 signatures]) from a header value; ValueError when it is not one."""
    timestamp: int | None = None
    signatures: list[str] = []
    for item in value.split(","):
        key, sep, val = item.strip().partition("=")
        if not sep:
            raise ValueError(f"not a key=value pair: {item!r}")
        if key == "t":
            if timestamp is not None or not _TIME.fullmatch(val):
                raise ValueError("one t=, in whole seconds")
            timestamp = int(val)
        elif key == SCHEME and _HEX.fullmatch(val):
            signatures.append(val)
        # Other schemes are ignored: a later scheme may be added beside v1.
    if timestamp is None or not signatures:
        raise ValueError("the header needs t= and at least one v1=")
    return timestamp, signatures


def verify(
    header: str,
    body: bytes,
    secret: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether `body` (the raw bytes received, before any JSON parsing) was signed with `secret`
    within `tolerance` seconds of `now`. False for a malformed header."""
    try:
        timestamp, signatures = parse(header)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).encode("ascii")
    return any(hmac.compare_digest(expected, candidate.encode("ascii")) for candidate in signatures)

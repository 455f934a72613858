"""Webhook signing secrets: made, kept encrypted, and read back only to sign.

Unlike an API key, whose hash is enough to check it, a signing secret must be read back: the
sender signs each delivery with it. So it is stored encrypted (Fernet, from the `cryptography`
package) under a key derived from Django's SECRET_KEY, and SECRET_KEY_FALLBACKS keep decrypting
after SECRET_KEY is rotated. Neither the API nor the admin ever lists it: it is shown once, in the
answer that creates or rotates it.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from signals_app.services import base62

PREFIX = "whsec_"
_CONTEXT = b"bigmind webhook signing secrets v1\x00"


def secret_new() -> str:
    """`whsec_` + 32 base62 characters (190 bits)."""
    return PREFIX + base62(32)


def _fernet() -> MultiFernet:
    # Re-derived on each call: settings may change under tests, and this is not on a hot path
    # (once per delivery attempt, microseconds).
    keys = [settings.SECRET_KEY, *getattr(settings, "SECRET_KEY_FALLBACKS", [])]
    return MultiFernet(
        [
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(_CONTEXT + key.encode()).digest()))
            for key in keys
        ]
    )


def secret_encrypt(secret: str) -> str:
    return _fernet().encrypt(secret.encode()).decode("ascii")


def secret_decrypt(token: str) -> str:
    """The secret; ValueError when no current or fallback SECRET_KEY can read it."""
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except InvalidToken:
        raise ValueError(
            "a webhook signing secret cannot be decrypted with SECRET_KEY or "
            "SECRET_KEY_FALLBACKS: rotate the endpoint's secret"
        ) from None

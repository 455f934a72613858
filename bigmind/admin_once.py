"""A secret shown once in the admin (a new API key, a webhook endpoint's signing secret), by
POST/redirect/GET: the form's POST makes it and redirects to a page that shows it, so a reload of
that page posts nothing again and shows no secret.

Between the POST and that page the secret is split in two: XORed with a one-time pad in the
session ({object key: sealed}), the pad in an HttpOnly, SameSite=Strict cookie sent to that page
only. Neither half alone tells anything of the secret, so the database (where sessions are)
never holds it, even if the page is never visited. The page takes both out as it shows it.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest, HttpResponse

PAD_MAX_AGE = 10 * 60


def seal(raw: str) -> tuple[str, str]:
    """(sealed, pad): `raw` XOR a random pad of its length, and the pad, both base64."""
    data = raw.encode("utf-8")
    pad = secrets.token_bytes(len(data))
    sealed = bytes(a ^ b for a, b in zip(data, pad, strict=True))
    return base64.urlsafe_b64encode(sealed).decode(), base64.urlsafe_b64encode(pad).decode()


def unseal(sealed: str, pad: str) -> str | None:
    try:
        data = base64.urlsafe_b64decode(sealed)
        key = base64.urlsafe_b64decode(pad)
    except (binascii.Error, ValueError):
        return None
    if len(data) != len(key):
        return None
    try:
        return bytes(a ^ b for a, b in zip(data, key, strict=True)).decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class ShownOnce:
    """Where a kind of secret waits: its session key and its pad's cookie."""

    session_key: str
    cookie: str

    def hold(self, request: HttpRequest, response: HttpResponse, *, key: str, raw: str) -> None:
        """Keep `raw` for the page at `response`'s Location (a redirect), for object `key`."""
        sealed, pad = seal(raw)
        pending = dict(request.session.get(self.session_key) or {})
        pending[key] = sealed
        request.session[self.session_key] = pending
        response.set_cookie(
            self.cookie,
            pad,
            max_age=PAD_MAX_AGE,
            path=response["Location"],
            secure=settings.SESSION_COOKIE_SECURE,
            httponly=True,
            samesite="Strict",
        )

    def take(self, request: HttpRequest, *, key: str) -> str | None:
        """The secret waiting for object `key`, taken out of the session (None if there is
        none: shown already, or never made here). Call `forget_pad` on the page's response."""
        pending = dict(request.session.get(self.session_key) or {})
        sealed = pending.pop(key, None)
        pad = request.COOKIES.get(self.cookie)
        if sealed is not None:
            if pending:
                request.session[self.session_key] = pending
            else:
                del request.session[self.session_key]
        return unseal(sealed, pad) if sealed and pad else None

    def forget_pad(self, request: HttpRequest, response: HttpResponse) -> None:
        response["Cache-Control"] = "no-store"
        if self.cookie in request.COOKIES:
            response.delete_cookie(self.cookie, path=request.path, samesite="Strict")

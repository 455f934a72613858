"""Bigmind-Signature (events_app/webhooks/signing.py): the signature of SPEC §5, checked against
a vector computed by OpenSSL, and the receiver's check."""

from __future__ import annotations

import pytest

from events_app.webhooks.signing import header_value, parse, signature, verify

SECRET = "whsec_0123456789abcdefghijABCDEFGHIJkl"
OLD_SECRET = "whsec_OLDOLDOLDOLDOLDOLDOLDOLDOLDOLDOL"
T = 1767225600
BODY = b'{"id":"whevt_abc","type":"ping"}'
# printf '%s' '1767225600.{"id":"whevt_abc","type":"ping"}' | openssl dgst -sha256 -hmac "$SECRET"
OPENSSL = "dce1b0715548793c1bca87644d5d3e779559272b7f989cb956584e0ca6035092"


def test_the_signature_is_the_hmac_sha256_of_time_dot_body_keyed_by_the_secret() -> None:
    assert signature(SECRET, T, BODY) == OPENSSL
    assert header_value([SECRET], T, BODY) == f"t={T},v1={OPENSSL}"


def test_after_a_rotation_either_live_secret_verifies() -> None:
    header = header_value([SECRET, OLD_SECRET], T, BODY)
    assert parse(header) == (T, [OPENSSL, signature(OLD_SECRET, T, BODY)])
    assert verify(header, BODY, SECRET, now=T)
    assert verify(header, BODY, OLD_SECRET, now=T)
    assert not verify(header, BODY, "whsec_someone_else", now=T)


@pytest.mark.parametrize(
    ("header", "body", "now"),
    [
        (f"t={T},v1={OPENSSL}", BODY + b" ", T),  # one byte more
        (f"t={T},v1={OPENSSL}", BODY, T + 301),  # replayed after the tolerance
        (f"t={T},v1={OPENSSL}", BODY, T - 301),  # from the future
        (f"t={T + 1},v1={OPENSSL}", BODY, T),  # the time changed
        (f"v1={OPENSSL}", BODY, T),  # no time
        (f"t={T}", BODY, T),  # no signature
        (f"t=soon,v1={OPENSSL}", BODY, T),
        ("garbage", BODY, T),
        ("", BODY, T),
        (f"t={T},v1=\u00e9", BODY, T),  # not hex: no TypeError from compare_digest
        ("t=" + "9" * 400 + f",v1={OPENSSL}", BODY, T),  # no OverflowError either
        (f"t=\u0661\u0662,v1={OPENSSL}", BODY, T),  # digits, but not ASCII ones
    ],
)
def test_anything_else_does_not_verify(header: str, body: bytes, now: int) -> None:
    assert verify(header, body, SECRET, now=now) is False


def test_a_scheme_it_does_not_know_is_ignored_beside_v1() -> None:
    assert verify(f"t={T},v0=abc,v1={OPENSSL}", BODY, SECRET, now=T + 300)


def test_a_delivery_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        header_value([], T, BODY)

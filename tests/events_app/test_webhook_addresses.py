"""Where webhooks may go (events_app/webhooks/addresses.py): https:// to public addresses only,
unless BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS lifts it; checked on the resolved addresses."""

from __future__ import annotations

import ipaddress
import socket
from unittest import mock

import pytest

from events_app.webhooks.addresses import UnsafeUrl, connect_addresses, public, url_check


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "64:ff9b::a9fe:a9fe",  # NAT64 to the metadata address
        "64:ff9b:1::a00:1",
        "2002:a9fe:a9fe::",  # 6to4 around 169.254.169.254
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo around 10.0.0.1
        "::7f00:1",  # IPv4-compatible loopback
        "::ffff:0:a00:1",  # SIIT
        "fec0::1",  # site-local
        "2001:4860::8888%eth0",  # a scope on a global address
    ],
)
def test_private_loopback_link_local_and_mapped_addresses_are_not_public(address: str) -> None:
    assert not public(ipaddress.ip_address(address))
    with pytest.raises(UnsafeUrl, match="not a public address"):
        url_check(
            f"https://[{address}]/hook" if ":" in address else f"https://{address}/hook",
            allow_private=False,
        )


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_public(address: str) -> None:
    assert public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://93.184.215.14/hook", "https://"),
        ("ftp://93.184.215.14/hook", "https://"),
        ("https:///hook", "no host"),
        ("https://user:pw@93.184.215.14/hook", "user name"),
        ("https://93.184.215.14:0/hook", "port"),
        ("https://93.184.215.14:99999/hook", "not valid"),
        ("https://93.184.215.14/hook#frag", "fragment"),
        ("https://93.184.215.14/ho ok", "spaces"),
        ("https://93.184.215.14/\x00", "control"),
        ("https://93.184.215.14\\@127.0.0.1/", "backslash"),
        ("https://93.184.215.14/" + "a" * 2100, "longer"),
    ],
)
def test_a_url_that_breaks_the_rule_is_refused_with_why(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrl, match=reason):
        url_check(url, allow_private=False)


def _resolving(*addresses: str) -> mock._patch:
    infos = [
        (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, 443))
        for a in addresses
    ]
    return mock.patch("events_app.webhooks.addresses.socket.getaddrinfo", return_value=infos)


def test_a_name_is_judged_by_every_address_it_resolves_to() -> None:
    with _resolving("93.184.215.14", "2606:4700:4700::1111"):
        assert [
            str(a) for a in connect_addresses("https://hooks.example.com/x", allow_private=False)
        ] == [
            "93.184.215.14",
            "2606:4700:4700::1111",
        ]
    # One private answer among public ones: refused whole.
    with _resolving("93.184.215.14", "10.0.0.7"), pytest.raises(UnsafeUrl, match=r"10\.0\.0\.7"):
        connect_addresses("https://hooks.example.com/x", allow_private=False)


def test_a_name_that_does_not_resolve_is_refused() -> None:
    with (
        mock.patch(
            "events_app.webhooks.addresses.socket.getaddrinfo",
            side_effect=socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        ),
        pytest.raises(UnsafeUrl, match="does not resolve"),
    ):
        url_check("https://nowhere.invalid/x", allow_private=False)


def test_the_development_setting_allows_http_and_private_addresses() -> None:
    assert url_check("http://127.0.0.1:8123/hook", allow_private=True)
    assert [str(a) for a in connect_addresses("http://localhost:8123/hook", allow_private=True)]
    with pytest.raises(UnsafeUrl, match="https://"):
        url_check("ftp://127.0.0.1/hook", allow_private=True)

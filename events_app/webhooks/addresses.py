"""Where a webhook may be sent: `https://` to public addresses only, so that an organization
cannot point Bigmind at the machines around it (SSRF).

The same rule runs twice: when an endpoint is saved (`url_check`), and at connect time on the
addresses the host resolves to then (`connect_addresses`). The sender connects to an address
this module returned, never to the name again, so a name that resolves to a public address when
it is saved and to a private one later (DNS rebinding) is still refused.
`BIGMIND_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true` (development and tests) lifts both the scheme and
the address rule.
"""

from __future__ import annotations

import ipaddress
import socket
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import SplitResult, urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL_LENGTH = 2048


class UnsafeUrl(ValueError):
    """The URL may not receive webhooks; the message says why, for the API and the admin."""


_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def public(address: Address) -> bool:
    """Globally routable unicast. IPv6 must be in 2000::/3 (global unicast) and carry no scope;
    an IPv4 address carried inside IPv6 (mapped, 6to4, Teredo) is judged as that IPv4 address,
    and NAT64 (64:ff9b::/96, inside 2000::/3's complement) is refused with the rest. Python's
    `is_global` tables differ between patch releases, so the IPv6 rule is written out here."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return False
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if inner is not None:
            return public(inner)
        if address not in _GLOBAL_UNICAST_V6:
            return False
    return address.is_global and not address.is_multicast


def _split(url: str, *, allow_private: bool) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"The URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeUrl("The URL contains spaces or control characters")
    if not url.isascii():
        # http.client writes the request line as ASCII: say so now, not at every attempt.
        raise UnsafeUrl(
            "The URL must be ASCII: percent-encode other characters, and give an "
            "internationalized host name in its xn-- form"
        )
    if "\\" in url:
        # Parsers disagree about a backslash (some read it as a slash): refused outright.
        raise UnsafeUrl("The URL contains a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"The URL is not valid: {error}") from None
    schemes = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeUrl("The URL must start with https://")
    if not parts.hostname:
        raise UnsafeUrl("The URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("The URL may not carry a user name or password")
    if port == 0:
        raise UnsafeUrl("The URL's port must be between 1 and 65535")
    if parts.fragment:
        raise UnsafeUrl("The URL may not have a #fragment")
    return parts


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


class ResolveTimeout(Exception):
    """The host did not resolve in the time given."""


# getaddrinfo has no time-out of its own (a slow name server holds it 20 s or more): it runs on
# these threads, and the caller waits for it only as long as it may.
_RESOLVERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="webhook-dns")


def connect_addresses(
    url: str, *, allow_private: bool, timeout: float | None = None
) -> list[Address]:
    """The addresses to connect to for `url`, in resolver order. UnsafeUrl when the URL breaks
    the rule, when the host does not resolve, or when any address it resolves to is not public
    (one private answer among public ones is refused whole: the resolver's order is not ours);
    ResolveTimeout when resolving takes longer than `timeout` seconds."""
    parts = _split(url, allow_private=allow_private)
    host = parts.hostname
    assert host is not None
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        found = [literal]
    else:
        lookup = _RESOLVERS.submit(socket.getaddrinfo, host, _port(parts), type=socket.SOCK_STREAM)
        try:
            infos = lookup.result(timeout=timeout)
        except TimeoutError:
            raise ResolveTimeout(f"The host {host} did not resolve within {timeout:g} s") from None
        except (socket.gaierror, UnicodeError) as error:
            raise UnsafeUrl(f"The host {host} does not resolve: {error}") from None
        found = []
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]))
            if address not in found:
                found.append(address)
    if not allow_private:
        private = [a for a in found if not public(a)]
        if private:
            raise UnsafeUrl(
                f"The host {host} resolves to {private[0]}, which is not a public address"
            )
    return found


# How long saving an endpoint waits for its host to resolve (an API request or an admin form).
SAVE_RESOLVE_SECONDS = 5.0


def url_check(url: str, *, allow_private: bool) -> str:
    """`url` when it may receive webhooks now (an endpoint being saved); UnsafeUrl otherwise,
    also when the host does not resolve within SAVE_RESOLVE_SECONDS."""
    try:
        connect_addresses(url, allow_private=allow_private, timeout=SAVE_RESOLVE_SECONDS)
    except ResolveTimeout as slow:
        raise UnsafeUrl(str(slow)) from None
    return url

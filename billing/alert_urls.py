"""Which URLs may receive alerts: a customer names the URL, tokengate's worker sends to it.

So a receiver URL is a request the operator's own network would make on a stranger's
behalf (SSRF). Unless ``TOKENGATE_ALERTS_ALLOW_PRIVATE=1``, an address that is not public
(loopback, private, link-local, carrier-grade NAT, reserved, multicast) is refused: a
literal one when the URL is set and at every delivery, and a name that resolves to one at
every delivery (:class:`GuardedResolver`, which checks what the connection will use).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

MAX_URL = 2048
SCHEMES = ("http", "https")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(OSError):
    """A receiver's host is (or resolves to) an address alerts may not reach."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)  # strerror: what aiohttp's error shows


def is_public(address: Address) -> bool:
    """Reachable on the public internet (an IPv4-mapped IPv6 address judged as its IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def literal_address(host: str) -> Address | None:
    """The address a host names by itself: ``10.0.0.1``, ``[::1]``, and the forms
    getaddrinfo also reads as IPv4 (``127.1``, ``2130706433``, ``0x7f.1``); else None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """The URL if alerts may be sent to it; ValueError saying why not."""
    if len(url) > MAX_URL:
        raise ValueError(f"the URL is longer than {MAX_URL} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise ValueError("the URL contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("the URL must be http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("the URL must not carry a user name or password")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        raise ValueError("the URL's port is not valid") from None
    if allow_private:
        return url
    address = literal_address(host)
    if address is not None and not is_public(address):
        raise ValueError(f"{host} is not a public address")
    if host.rstrip(".").lower() in LOCAL_NAMES or host.rstrip(".").lower().endswith(".localhost"):
        raise ValueError(f"{host} is a local name")
    return url


class GuardedResolver(AbstractResolver):
    """Name resolution for alert deliveries that refuses a name with any non-public address
    (all of them are checked: the connection may try any), so a receiver cannot point its
    name at the operator's network after its URL was accepted."""

    def __init__(self) -> None:
        self._resolver = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._resolver.resolve(host, port, family)
        for item in found:
            address = literal_address(item["host"])
            if address is None or not is_public(address):
                raise RefusedAddress(f"{host} resolves to {item['host']}, which is not a public address")
        return found

    async def close(self) -> None:
        await self._resolver.close()

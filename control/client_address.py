"""The client's address as the control plane may believe it, for limits per address.

The control plane is reached through the data plane, which sets ``X-Forwarded-For`` from its
socket (never passing on the client's own header), or directly. Anyone can send any
``X-Forwarded-For``, so the header counts only when the direct peer is a trusted proxy
(``TOKENGATE_TRUSTED_PROXIES``, comma-separated CIDRs, default loopback), and then only its
last address: the one that proxy appended. A last entry that is not an IP address falls
back to the peer, never to an earlier (client-written) entry.

IPv6 clients are limited per /64 (:func:`rate_bucket`): one subscriber usually holds a
whole /64, so a limit per address would be a limit on nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

from starlette.requests import Request

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
UNKNOWN = "unknown"  # a peer without an address (a Unix socket): one shared bucket
MAX_ENTRY = 64  # longer than any textual IP address (an IPv6 with a zone id included)


@lru_cache(maxsize=16)
def trusted_networks(text: str) -> tuple[Network, ...]:
    """The networks of ``TOKENGATE_TRUSTED_PROXIES`` (the settings checked them at start)."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def parse_ip(text: str | None) -> IPAddress | None:
    """An IP address, IPv4-mapped IPv6 read as IPv4 and any zone id dropped; None: not one."""
    if not text or len(text) > MAX_ENTRY:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def client_address(peer: str | None, forwarded_for: Sequence[str], trusted: Iterable[Network]) -> str:
    """The client's address: the last ``X-Forwarded-For`` entry from a trusted peer, else the peer.

    ``forwarded_for`` is every ``X-Forwarded-For`` header line, in order (several lines are
    one comma-separated list)."""
    peer_ip = parse_ip(peer)
    if peer_ip is None:
        return UNKNOWN
    if forwarded_for and any(peer_ip in network for network in trusted):
        last = ",".join(forwarded_for).rsplit(",", 1)[-1]
        forwarded = parse_ip(last)
        if forwarded is not None:
            return str(forwarded)
    return str(peer_ip)


def rate_bucket(address: str) -> str:
    """What a limit per address counts: the address itself, an IPv6 address's /64."""
    ip = parse_ip(address)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip) if ip is not None else UNKNOWN


def request_address(request: Request) -> str:
    """The client's address of a control-plane request (a FastAPI dependency)."""
    trusted = trusted_networks(request.app.state.settings.trusted_proxies)
    peer = request.client.host if request.client else None
    return client_address(peer, request.headers.getlist("x-forwarded-for"), trusted)


def request_bucket(request: Request) -> str:
    """What the limits per address count for a control-plane request (a FastAPI dependency)."""
    return rate_bucket(request_address(request))

"""Media URLs in chat messages: what the upstream may be asked to fetch.

vLLM downloads the URL of an ``image_url``, ``input_image``, ``video_url`` or ``audio_url``
content part itself, from inside the GPU network: ``http://169.254.169.254/`` (cloud
metadata), ``http://127.0.0.1:6379/`` or ``file:///etc/passwd`` would be fetched on a
customer's behalf. So:

- ``data:`` URLs pass (the media is in the request; nothing is fetched);
- ``http``/``https`` URLs pass only to hosts on the operator's allowlist
  (models.yaml ``media_urls.allowed_hosts``), and only when every address the host
  resolves to is a public one (not private, loopback, link-local, reserved, multicast,
  shared or unspecified), so that an allowed name cannot point inside;
- anything else (``file:``, ``ftp:``, a URL with credentials, a host the parser and an HTTP
  client could read differently) is refused.

:func:`remote_media_urls` runs in the request parser (no I/O, no parsing): it collects
the media URLs that are not ``data:``, normally none. :func:`check_remote_media` runs before
admission for a request that has some: the URL's form, the allowlist, then DNS off the
event loop (``loop.getaddrinfo``, the default executor), a few seconds at most.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from gateway.errors import BadRequest

# Content part type -> the field holding its URL ({"url": ...} or a string).
URL_PARTS: dict[str, str] = {
    "image_url": "image_url",
    "input_image": "image_url",
    "video_url": "video_url",
    "audio_url": "audio_url",
}
CODE = "unsupported_media_url"
RESOLVE_TIMEOUT_S = 3.0
# A host as both urllib and HTTP clients read it: DNS labels (or an IPv4 literal), an
# optional port; or a bracketed IPv6 literal. No userinfo, no percent-encoding, no '\'.
_NETLOC = re.compile(
    r"^(?:(?:[a-z0-9_][a-z0-9_-]{0,62}\.)*[a-z0-9_-]{1,63}\.?|\[[0-9a-f:.]+\])"
    r"(?::\d{1,5})?$",
    re.IGNORECASE,
)

Resolver = Callable[[str, int], Awaitable[list[str]]]


def remote_media_urls(messages: list[Any]) -> tuple[str, ...]:
    """The URLs of the messages' media parts that are not ``data:`` URLs."""
    found: list[str] = []
    for message in messages:
        content = message.get("content")
        if type(content) is not list:
            continue
        for part in content:
            kind = part.get("type") if type(part) is dict else None
            field = URL_PARTS.get(kind) if type(kind) is str else None
            if field is None:
                continue
            value = part.get(field)
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str):
                continue  # prompt_size refuses or counts the part; vLLM refuses it without a URL
            if url[:5].lower() == "data:":
                continue
            found.append(url)
    return tuple(found)


def _remote(url: str) -> str:
    """``url`` when it is a well-formed http(s) URL; else BadRequest."""
    if not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
        _refuse(url, "it holds spaces, control or non-ASCII characters or a backslash")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        _refuse(
            url,
            "media is accepted as data: URLs, or http(s) URLs of hosts the operator allows"
            if scheme
            else "it is not an absolute URL",
        )
    if not parts.netloc or not _NETLOC.match(parts.netloc):
        _refuse(
            url,
            "its host is not a plain host name or address (credentials and encoded hosts are not accepted)",
        )
    return url


def _refuse(url: str, why: str) -> NoReturn:
    shown = url if len(url) <= 80 else url[:80] + "..."
    raise BadRequest(f"media URL {shown!r} is not accepted: {why}", param="messages", code=CODE)


@dataclass(frozen=True, slots=True)
class MediaHosts:
    """The operator's allowlist: exact host names, and ``*.suffix`` for their subdomains."""

    exact: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, hosts: Iterable[str]) -> MediaHosts:
        exact, suffixes = set(), []
        for host in hosts:
            host = host.lower().rstrip(".")
            if host.startswith("*."):
                suffixes.append(host[1:])  # ".example.com"
            else:
                exact.add(host)
        return cls(frozenset(exact), tuple(suffixes))

    def allows(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.exact or any(host.endswith(s) for s in self.suffixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.suffixes)


def public_address(address: str) -> bool:
    """Whether ``address`` is a public unicast address (IPv4-mapped IPv6 read as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip.teredo is not None:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by the system resolver in the default executor."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_remote_media(
    urls: Iterable[str], hosts: MediaHosts, resolve: Resolver = system_resolver
) -> None:
    """Refuse (400) a URL whose host is not allowed or resolves to a non-public address."""
    for url in urls:
        parts = urlsplit(_remote(url))
        host = parts.hostname or ""
        if not hosts.allows(host):
            _refuse(
                url,
                f"host '{host}' is not on the operator's media allowlist"
                if hosts
                else "media URLs are not fetched here: send the media as a data: URL",
            )
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        except ValueError:
            _refuse(url, "its port is not valid")
        try:
            addresses = await asyncio.wait_for(resolve(host.strip("[]"), port), RESOLVE_TIMEOUT_S)
        except (OSError, TimeoutError, UnicodeError):
            _refuse(url, f"host '{host}' could not be resolved")
        if not addresses or not all(public_address(a) for a in addresses):
            _refuse(url, f"host '{host}' resolves to a private, loopback or link-local address")

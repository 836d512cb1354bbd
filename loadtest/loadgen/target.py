"""Where the load generator may send traffic: loopback addresses only."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class NotLoopbackError(ValueError):
    """The target is not on this machine's loopback interface."""


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host != "localhost":  # names other than localhost are never resolved
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def check_loopback(url: str) -> str:
    """``url`` (http, on 127.0.0.0/8, ::1 or localhost) without a trailing slash, else raise."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise NotLoopbackError(f"only plain http on loopback is allowed, got {url!r}")
    host = parts.hostname or ""
    if not _is_loopback(host):
        raise NotLoopbackError(f"refusing to load a non-loopback host {host!r}: loopback only")
    return url.rstrip("/")

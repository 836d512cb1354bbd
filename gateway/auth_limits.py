"""Failed authentications limited per client address, in each worker's memory.

Guessing keys is hopeless (``tg-`` + 256 random bits), but every unknown key costs a Redis
lookup and, unlimited, lets one client fill the negative cache and load Redis. Each worker
keeps a token bucket per client address: ``per_minute`` failures in a burst, refilled at
``per_minute`` a minute. An address whose bucket is empty gets 429 (``Retry-After``) for
keys this worker has not seen, without a lookup; keys it has seen authenticate as before,
so clients behind one proxy with a working key are not locked out by a neighbour's typos.

The address is the TCP peer's (the data plane is the edge); IPv6 peers are limited per /64,
which one subscriber usually holds whole. Only failures are counted: the successful path
never touches this module. The control plane, which authenticates the keys of ``/v1/me*``
itself, applies the same limit in each of its processes, on the address the data plane
forwards (``control.client_address``).
"""

from __future__ import annotations

import ipaddress
import os
from collections import OrderedDict

from gateway.asgi import Scope

DEFAULT_PER_MINUTE = 60
ENV = "TOKENGATE_AUTH_FAILURES_PER_MINUTE"  # 0: no limit
_MAX_ADDRESSES = 10_000  # the buckets kept; the least recently failed go first


def per_minute_from_env() -> int:
    """``TOKENGATE_AUTH_FAILURES_PER_MINUTE`` (default 60; 0 turns the limit off)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_PER_MINUTE
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{ENV} must be an integer >= 0, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{ENV} must be an integer >= 0, got {raw!r}")
    return value


def client_address(scope: Scope | None) -> str:
    """The bucket of the request's peer: its IPv4 address, its IPv6 /64, or "unknown"."""
    client = scope.get("client") if scope is not None else None
    host = client[0] if client else None
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return str(host)[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """A token bucket of failed authentications per client address."""

    def __init__(self, per_minute: int, max_addresses: int = _MAX_ADDRESSES) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self._max = max_addresses
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, as of

    def _tokens(self, address: str, now: float) -> float:
        bucket = self._buckets.get(address)
        if bucket is None:
            return self.capacity
        tokens, since = bucket
        return min(self.capacity, tokens + (now - since) * self.rate)

    def retry_after(self, address: str, now: float) -> int:
        """0 when ``address`` may try a key now, else the seconds until it may."""
        tokens = self._tokens(address, now)
        if tokens >= 1.0:
            return 0
        return max(1, int((1.0 - tokens) / self.rate + 0.999))

    def failed(self, address: str, now: float) -> None:
        tokens = max(0.0, self._tokens(address, now) - 1.0)
        self._buckets[address] = (tokens, now)
        self._buckets.move_to_end(address)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

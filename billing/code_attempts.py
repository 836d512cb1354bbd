"""Failed redemption attempts, counted in Redis per account and per client address.

A code has 100 bits of entropy, so guessing is hopeless anyway; the limit is what keeps a
leaked batch's neighbours, a typo loop or a scripted scan from hammering the ledger. Each
counter is a fixed window: the first failure starts it (``FAILURE_WINDOW_MS``), and once
``FAILURE_LIMIT`` failures are in it, every attempt of that account or from that address is
refused (429) before any SQL is read, a valid code included, until the window ends.
Successful redemptions and the refused attempts themselves are not counted, so a client
that keeps knocking does not push its window further.

Each counter is one key (so the scripts run unchanged on a Redis Cluster), incremented and
given its expiry by one script: a crash can never leave a counter that does not expire.
"""

from __future__ import annotations

import math

from gateway.contract import UNAVAILABLE, QuotaUnavailable, RateLimited, RedisClient, keyspace

FAILURE_LIMIT = 10  # failed attempts per window, per account and per address
FAILURE_WINDOW_MS = 15 * 60 * 1000

_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""
_PEEK = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
return {n, redis.call('PTTL', KEYS[1])}
"""


def account_key(account_id: str, kind: str = "codefail") -> str:
    return f"{keyspace.PREFIX}:{kind}:acct:{account_id}"


def address_key(bucket: str, kind: str = "codefail") -> str:
    return f"{keyspace.PREFIX}:{kind}:addr:{bucket}"


class FailureLimiter:
    """``check`` before a redemption looks anything up; ``failed`` after one that failed."""

    def __init__(
        self,
        redis: RedisClient,
        limit: int = FAILURE_LIMIT,
        window_ms: int = FAILURE_WINDOW_MS,
        *,
        kind: str = "codefail",
        what: str = "redemption attempts",
        code: str = "too_many_redemption_attempts",
        address_limit: int | None = None,
    ) -> None:
        """``kind`` names the counters (codes: ``codefail``; the console's sign-in: ``signinfail``,
        counted per email and per address), ``what`` and ``code`` the 429's message and code;
        ``address_limit`` (default: ``limit``) lets an address that many (an office behind one
        NAT signs in as many people)."""
        self.limit = limit
        self.address_limit = limit if address_limit is None else address_limit
        self.window_ms = window_ms
        self.kind, self.what, self.code = kind, what, code
        self._count = redis.register_script(_COUNT)
        self._peek = redis.register_script(_PEEK)

    async def check(self, account_id: str, bucket: str) -> None:
        """RateLimited (with ``Retry-After``) when the account or the address is over its limit."""
        keys = (
            (account_key(account_id, self.kind), "this account", self.limit),
            (address_key(bucket, self.kind), "this address", self.address_limit),
        )
        for key, who, limit in keys:
            try:
                count, ttl_ms = await self._peek(keys=[key])
            except UNAVAILABLE as error:
                raise _unavailable() from error
            if int(count) >= limit:
                retry = max(1, math.ceil(int(ttl_ms) / 1000)) if int(ttl_ms) > 0 else 1
                raise RateLimited(
                    f"too many failed {self.what} from {who}; try again in {retry} s",
                    code=self.code,
                    headers={"Retry-After": str(retry)},
                )

    async def failed(self, account_id: str, bucket: str) -> None:
        """Count one failed attempt against the account and the address."""
        try:
            for key in (account_key(account_id, self.kind), address_key(bucket, self.kind)):
                await self._count(keys=[key], args=[self.window_ms])
        except UNAVAILABLE as error:
            raise _unavailable() from error


def _unavailable() -> QuotaUnavailable:
    """Redis is down: refuse (fail closed) rather than redeem without a limit."""
    return QuotaUnavailable(
        "redemption is unavailable right now; retry shortly",
        code="quota_unavailable",
        headers={"Retry-After": "1"},
    )

"""The quota state that the admin API, reconcile and the tests set and read.

:class:`AccountStore` holds the Redis client, the registered scripts and the mapping of
"Redis cannot answer" to :class:`QuotaUnavailable`; :class:`~gateway.quota.store.QuotaStore`
adds the request path on top. None of this is on the hot path, but writes that could
break the no-overdraft invariant (a purchase) still go through a script.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from redis import exceptions as rx
from redis.typing import EncodableT, FieldT

from gateway import keyspace
from gateway.errors import BalanceUnknown, QuotaUnavailable
from gateway.quota.reservation import Reservation
from gateway.quota.scripts import RedisClient, Scripts

# Errors that mean "Redis cannot answer now", as opposed to a bug in a command.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # refused, reset, still loading (BusyLoadingError)
    rx.TimeoutError,
    rx.ClusterError,  # CLUSTERDOWN, MASTERDOWN, retries exhausted
    rx.TryAgainError,  # slot migrating
    rx.ReadOnlyError,  # failed over to a replica
    rx.OutOfMemoryError,
    rx.RedisClusterException,  # the cluster client reaches no node
    TimeoutError,  # our own per-call deadline
    OSError,
)
BALANCE_FIELDS = ("purchased", "reserved", "spent", "expired")


def _unknown(account_id: str) -> BalanceUnknown:
    return BalanceUnknown(
        f"the balance of account {account_id} is not in Redis; reconcile rebuilds it",
        code="balance_unknown",
        headers={"Retry-After": "5"},
    )


def _check_ids(*ids: str) -> None:
    """'|' separates fields of lease members and reservation records (see keyspace)."""
    if any("|" in i or not i for i in ids):
        raise ValueError(f"account and key ids must be non-empty and contain no '|': {ids!r}")


class AccountStore:
    """Balances and key records; the base of QuotaStore."""

    def __init__(
        self, client: RedisClient, *, lease_ms: int = 30_000, timeout_s: float | None = 2.0
    ) -> None:
        self.client = client
        self.lease_ms = lease_ms
        self.timeout_s = timeout_s  # an answer later than this is no answer: fail closed
        self.scripts = Scripts.register(client)

    @asynccontextmanager
    async def _redis(self) -> AsyncIterator[None]:
        """Run Redis calls under the deadline; unreachable Redis -> QuotaUnavailable (503)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                yield
        except UNAVAILABLE as exc:
            raise QuotaUnavailable(
                "quota service unavailable; retry shortly",
                code="quota_unavailable",
                headers={"Retry-After": "1"},
            ) from exc

    async def set_key_record(
        self,
        account_id: str,
        key_id: str,
        *,
        models: Sequence[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrency: int | None = None,
        disabled: bool = False,
    ) -> None:
        """Create or replace what admission knows of a key (None: all models / unlimited)."""
        _check_ids(account_id, key_id)
        if models is not None and any("," in m or not m for m in models):
            raise ValueError("model names must be non-empty and contain no comma")
        record: dict[FieldT, EncodableT] = {
            "disabled": "1" if disabled else "0",
            "models": ",".join(models) if models is not None else "",
            "rpm": "" if rpm is None else str(rpm),
            "tpm": "" if tpm is None else str(tpm),
            "max_concurrency": "" if max_concurrency is None else str(max_concurrency),
        }
        async with self._redis():
            await self.client.hset(keyspace.key_record_key(account_id, key_id), mapping=record)

    async def delete_key_record(self, account_id: str, key_id: str) -> None:
        """The key stops being admitted at once; requests in flight still settle."""
        async with self._redis():
            await self.client.delete(keyspace.key_record_key(account_id, key_id))
            await self.client.delete(keyspace.rate_key(account_id, key_id))

    async def init_balance(self, account_id: str) -> None:
        """Create a zero balance if there is none; an existing one is left as it is."""
        _check_ids(account_id)
        key = keyspace.balance_key(account_id)
        async with self._redis():
            for field in BALANCE_FIELDS:
                await self.client.hsetnx(key, field, "0")

    async def credit(self, account_id: str, credits: int) -> int:
        """Add purchased credits; the new ``purchased``. BalanceUnknown if it is missing."""
        if isinstance(credits, bool) or not isinstance(credits, int) or credits <= 0:
            raise ValueError(f"credits must be a positive integer, not {credits!r}")
        async with self._redis():
            total = await self.scripts.credit(
                keys=[keyspace.balance_key(account_id)], args=[credits]
            )
        if total is None:
            raise _unknown(account_id)
        return int(total)

    async def balance(self, account_id: str) -> dict[str, int]:
        """purchased, reserved, spent, expired and available; BalanceUnknown if missing."""
        async with self._redis():
            values = await self.client.hmget(keyspace.balance_key(account_id), BALANCE_FIELDS)
        if all(v is None for v in values):
            raise _unknown(account_id)
        bal = {f: int(v or 0) for f, v in zip(BALANCE_FIELDS, values, strict=True)}
        bal["available"] = bal["purchased"] - bal["reserved"] - bal["spent"] - bal["expired"]
        return bal

    async def reservations(self, account_id: str) -> dict[str, Reservation]:
        """The account's requests in flight, by request id."""
        async with self._redis():
            raw = await self.client.hgetall(keyspace.reservations_key(account_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): Reservation.decode(v)
            for k, v in raw.items()
        }

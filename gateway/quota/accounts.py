"""The quota state that the admin API, reconcile and the tests set and read.

:class:`AccountStore` holds the Redis client, the registered scripts and the mapping of
"Redis cannot answer" to :class:`QuotaUnavailable`; :class:`~gateway.quota.store.QuotaStore`
adds the request path on top. None of this is on the hot path, but writes that could
break the no-overdraft invariant (a purchase) still go through a script.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from redis.commands.core import AsyncScript
from redis.typing import EncodableT, FieldT

from gateway import keyspace
from gateway.errors import BalanceUnknown, QuotaUnavailable
from gateway.keyspace import reply_text
from gateway.quota.caps import KeySpend, cap_fields
from gateway.quota.grants import BalanceView
from gateway.quota.keys import grants_key, withdrawals_key
from gateway.quota.reservation import Reservation
from gateway.quota.scripts import RedisClient, ScriptCall, Scripts
from gateway.quota.withdrawals import Withdrawal, WithdrawMode
from gateway.redisio import UNAVAILABLE, FastRedis

__all__ = ["UNAVAILABLE", "AccountStore", "new_epoch"]


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


def _check_models(models: Sequence[str] | None) -> str:
    if models is None:
        return ""
    if not models or any(not m or "," in m or "|" in m for m in models):
        raise ValueError("a model list holds names without ',' or '|' (None: every model)")
    return ",".join(models)


def key_record_fields(
    models: Sequence[str] | None,
    rpm: int | None,
    tpm: int | None,
    max_concurrency: int | None,
    disabled: bool,
) -> dict[str, str]:
    """The key record's fields but the cap (see caps.cap_fields), as admission reads them."""
    if models is not None and any("," in m or not m for m in models):
        raise ValueError("model names must be non-empty and contain no comma")
    return {
        "disabled": "1" if disabled else "0",
        "models": ",".join(models) if models is not None else "",
        "rpm": "" if rpm is None else str(rpm),
        "tpm": "" if tpm is None else str(tpm),
        "max_concurrency": "" if max_concurrency is None else str(max_concurrency),
    }


def new_epoch() -> str:
    """The identity of one life of a balance in Redis: a rebuild after data loss starts another."""
    return secrets.token_hex(8)


class AccountStore:
    """Balances and key records; the base of QuotaStore."""

    def __init__(
        self,
        client: RedisClient,
        *,
        lease_ms: int = 30_000,
        timeout_s: float | None = 2.0,
        fast: FastRedis | None = None,
    ) -> None:
        self.client = client
        self.fast = fast
        self.lease_ms = lease_ms
        self.timeout_s = timeout_s  # an answer later than this is no answer: fail closed
        self.scripts = Scripts.register(client, fast)

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

    async def _hot(self, script: ScriptCall | AsyncScript, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run one of the request path's scripts; unreachable Redis -> QuotaUnavailable.

        The pipelined client enforces its own deadline (a watchdog per connection), so no
        timer is armed per call, and no context manager is built around it either.
        """
        if self.fast is None:
            async with self._redis():
                return await script(keys=keys, args=args)
        try:
            return await script(keys=keys, args=args)
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
        credit_limit: int | None = None,
        credit_period: str | None = None,
    ) -> None:
        """Create or replace what admission knows of a key (None: all models / unlimited /
        no credit cap; a cap is ``credit_limit`` credits per ``credit_period``)."""
        _check_ids(account_id, key_id)
        record: dict[FieldT, EncodableT] = {}
        record.update(key_record_fields(models, rpm, tpm, max_concurrency, disabled))
        record.update(cap_fields(credit_limit, credit_period))
        async with self._redis():
            await self.client.hset(keyspace.key_record_key(account_id, key_id), mapping=record)

    async def key_record_exists(self, account_id: str, key_id: str) -> bool:
        async with self._redis():
            return bool(await self.client.exists(keyspace.key_record_key(account_id, key_id)))

    async def key_record(self, account_id: str, key_id: str) -> dict[str, str]:
        """The key record as Redis holds it (empty: none), for reconcile to compare."""
        async with self._redis():
            raw = await self.client.hgetall(keyspace.key_record_key(account_id, key_id))
        return {reply_text(k): reply_text(v) for k, v in raw.items()}

    async def key_spend(self, account_id: str, key_id: str, credit_period: str) -> KeySpend:
        """What a capped key spent in the current period (by Redis time) and holds in flight."""
        keys = [keyspace.key_spend_key(account_id, key_id)]
        async with self._redis():
            period, spent, held = await self.scripts.key_spend(keys=keys, args=[credit_period])
        return KeySpend(reply_text(period), int(spent), int(held))

    async def set_key_hash(self, key_hash: str, account_id: str, key_id: str) -> None:
        """Let the key whose SHA-256 is ``key_hash`` authenticate (see gateway.auth)."""
        _check_ids(account_id, key_id)
        async with self._redis():
            await self.client.set(keyspace.key_hash_key(key_hash), f"{key_id} {account_id}")
            await self.client.set(keyspace.PROVISIONED_KEY, "1")

    async def get_key_hash(self, key_hash: str) -> str | None:
        async with self._redis():
            value = await self.client.get(keyspace.key_hash_key(key_hash))
        return value.decode() if isinstance(value, bytes) else value

    async def delete_key_hash(self, key_hash: str) -> None:
        async with self._redis():
            await self.client.delete(keyspace.key_hash_key(key_hash))

    async def delete_key_record(self, account_id: str, key_id: str) -> None:
        """The key stops being admitted at once; requests in flight still settle."""
        async with self._redis():
            await self.client.delete(keyspace.key_record_key(account_id, key_id))
            await self.client.delete(keyspace.rate_key(account_id, key_id))
            await self.client.delete(keyspace.key_spend_key(account_id, key_id))

    async def init_balance(self, account_id: str) -> None:
        """Create an empty balance if there is none; an existing one is left as it is."""
        _check_ids(account_id)
        async with self._redis():
            await self.client.hsetnx(keyspace.balance_key(account_id), "epoch", new_epoch())

    async def credit(
        self,
        account_id: str,
        credits: int,
        *,
        grant_id: str | None = None,
        expires_ms: int = 0,
        models: Sequence[str] | None = None,
    ) -> int:
        """Add a grant of credits; the new ``purchased``. BalanceUnknown if it is missing.

        A grant id already present changes nothing (a retried purchase never credits
        twice). Without a grant id, a new never-expiring grant valid for every model.
        """
        if isinstance(credits, bool) or not isinstance(credits, int) or credits <= 0:
            raise ValueError(f"credits must be a positive integer, not {credits!r}")
        grant_id = grant_id or "gr_" + secrets.token_hex(8)
        if any(c in grant_id for c in ":,|") or expires_ms < 0:
            raise ValueError(f"bad grant {grant_id!r} (expires {expires_ms})")
        args: list[str | int] = [grant_id, credits, expires_ms, _check_models(models)]
        async with self._redis():
            reply = await self.scripts.credit(
                keys=[keyspace.balance_key(account_id), grants_key(account_id)], args=args
            )
        if reply is None:
            raise _unknown(account_id)
        return int(reply[1])

    async def withdraw(
        self,
        account_id: str,
        op_id: str,
        *,
        credits: int | None = None,
        grant_id: str | None = None,
        not_before_ms: int = 0,
    ) -> Withdrawal | None:
        """Take credits back, once per ``op_id`` (see lua/withdraw_v1.lua); the outcome.

        ``credits``: that many from the live grants, any model, in drawing order, or nothing
        (``applied`` False) if fewer are available now. ``grant_id``: all of that grant's
        unreserved, unspent rest, and the grant closes (expiry now, at least
        ``not_before_ms``); None if Redis does not hold that grant. A repeated ``op_id``
        answers its first outcome. BalanceUnknown if the balance is missing.
        """
        mode: WithdrawMode
        if (credits is None) == (grant_id is None):
            raise ValueError("withdraw either credits or a grant")
        if credits is not None:
            if isinstance(credits, bool) or not isinstance(credits, int) or credits <= 0:
                raise ValueError(f"credits must be a positive integer, not {credits!r}")
            mode, what = "amount", str(credits)
        else:
            mode, what = "grant", str(grant_id)
        if not op_id:
            raise ValueError("a withdrawal needs an operation id")
        keys = [keyspace.balance_key(account_id), grants_key(account_id), withdrawals_key(account_id)]
        async with self._redis():
            reply = await self.scripts.withdraw(keys=keys, args=[op_id, mode, what, not_before_ms])
        if reply is None:
            raise _unknown(account_id)
        if reply_text(reply[0]) == "missing":
            return None
        return Withdrawal.parse(op_id, reply[1], new=reply_text(reply[0]) == "new")

    async def withdrawals(self, account_id: str) -> dict[str, Withdrawal]:
        """The account's withdrawals Redis made, by operation id (posted to the ledger or not)."""
        async with self._redis():
            raw = await self.client.hgetall(withdrawals_key(account_id))
        return {reply_text(k): Withdrawal.parse(reply_text(k), v, new=False) for k, v in raw.items()}

    async def view(self, account_id: str) -> BalanceView:
        """The account's grants and their figures by Redis time; BalanceUnknown if missing."""
        keys = [keyspace.balance_key(account_id), grants_key(account_id)]
        async with self._redis():
            reply = await self.scripts.balance(keys=keys, args=[])
        if reply is None:
            raise _unknown(account_id)
        return BalanceView.from_reply(reply)

    async def tier(self, account_id: str, now_ms: int) -> int:
        """The account's package weight for fair shares: 1 when none is set or it ended."""
        async with self._redis():
            weight, until = await self.client.hmget(keyspace.tier_key(account_id), ["weight", "until_ms"])
        if weight is None or (until is not None and int(until) <= now_ms):
            return 1
        return max(1, int(weight))

    async def set_tier(self, account_id: str, weight: int, until_ms: int) -> None:
        """Record the account's tier (the control plane: at a purchase, refund or rebuild);
        weight 1 removes it."""
        key = keyspace.tier_key(account_id)
        async with self._redis():
            if weight <= 1:
                await self.client.delete(key)
            else:
                await self.client.hset(key, mapping={"weight": weight, "until_ms": until_ms})

    async def balance(self, account_id: str) -> dict[str, int]:
        """purchased, reserved, spent, expired and available; BalanceUnknown if missing."""
        return (await self.view(account_id)).totals()

    async def reservations(self, account_id: str) -> dict[str, Reservation]:
        """The account's requests in flight, by request id."""
        async with self._redis():
            raw = await self.client.hgetall(keyspace.reservations_key(account_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): Reservation.decode(v)
            for k, v in raw.items()
        }

"""Accounts and API keys: written to the ledger database, then pushed to Redis.

SQL is the source of truth; Redis holds the copies authentication and admission read
(``gateway.accounts.AccountRegistry``). A creation whose Redis push fails still answers
(the account exists, the key's secret is shown once): reconcile pushes it later, and until
then admission refuses it (fail closed). A change or revocation whose push fails raises
QuotaUnavailable: retrying it is safe, and a revoked key must stop working at once.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.clock import Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import accounts, api_keys
from billing.key_caps import cap_columns, cap_json, cap_of, check_key_spend
from billing.records import Account, ApiKey, IssuedKey
from gateway.contract import (
    AccountRegistry,
    KeyLimits,
    NotFound,
    QuotaUnavailable,
    display_prefix,
    hash_key,
    new_secret,
)

log = logging.getLogger("tokengate.billing")
LIMIT_FIELDS = ("models", "rpm", "tpm", "max_concurrency", "disabled", "credit_limit")


def public_key(row: Any) -> ApiKey:
    """A key as the API shows it: never its hash, never its secret."""
    return {
        "id": row.id,
        "account_id": row.account_id,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": ms_to_iso(row.created_at_ms),
        "models": row.models,
        "rpm": row.rpm,
        "tpm": row.tpm,
        "max_concurrency": row.max_concurrency,
        "disabled": bool(row.disabled),
        "credit_limit": cap_json(cap_of(row)),
    }


def limits_of(row: Any) -> KeyLimits:
    return KeyLimits(row.models, row.rpm, row.tpm, row.max_concurrency, bool(row.disabled), cap_of(row))


class AccountService:
    def __init__(self, engine: AsyncEngine, copies: AccountRegistry, clock: Clock = wall_ms) -> None:
        self.engine = engine
        self.copies = copies
        self.clock = clock

    async def create_account(self, name: str) -> Account:
        account_id, now = "acct_" + secrets.token_hex(8), self.clock()
        async with transaction(self.engine) as conn:
            await conn.execute(accounts.insert(), {"id": account_id, "name": name, "created_at_ms": now})
        await self._best_effort(self.copies.push_account(account_id), account_id)
        return {"id": account_id, "name": name, "created_at": ms_to_iso(now)}

    async def get_account(self, account_id: str) -> Account | None:
        async with transaction(self.engine) as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            return None
        return {"id": row.id, "name": row.name, "created_at": ms_to_iso(row.created_at_ms)}

    async def create_key(self, account_id: str, name: str, limits: KeyLimits) -> IssuedKey:
        """A new key of an existing account; the answer is the only place its secret appears."""
        secret, key_id = new_secret(), "key_" + secrets.token_hex(8)
        row: dict[str, Any] = {
            "id": key_id,
            "account_id": account_id,
            "name": name,
            "prefix": display_prefix(secret),
            "key_hash": hash_key(secret),
            "models": limits.models,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_concurrency": limits.max_concurrency,
            "disabled": limits.disabled,
            **cap_columns(limits.credit_limit),
            "created_at_ms": self.clock(),
            "revoked_at_ms": None,
        }
        async with transaction(self.engine) as conn:
            if (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is None:
                raise NotFound(f"no account {account_id!r}")
            await conn.execute(api_keys.insert(), row)
            stored = (await conn.execute(select(api_keys).where(api_keys.c.id == row["id"]))).one()
        push = self.copies.push_key(account_id, key_id, hash_key(secret), limits)
        await self._best_effort(push, account_id)
        return {**public_key(stored), "key": secret}

    async def get_key(self, key_id: str) -> ApiKey | None:
        """A key that is not revoked, without its secret."""
        async with transaction(self.engine) as conn:
            row = (await conn.execute(_live_key(key_id))).first()
        return None if row is None else public_key(row)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> ApiKey | None:
        """Change a key's limits in SQL, then in Redis (QuotaUnavailable: retry).

        ``credit_limit``: a :class:`CreditLimit`, or None to remove the cap. Setting a cap
        counts what the key already spent in the period (the ledger and the usage streams),
        so a key capped at noon has its morning counted; retrying counts again, harmlessly.
        """
        changes = {k: v for k, v in changes.items() if k in LIMIT_FIELDS}
        if "credit_limit" in changes:
            changes.update(cap_columns(changes.pop("credit_limit")))
        async with transaction(self.engine) as conn:
            if (await conn.execute(_live_key(key_id))).first() is None:
                return None
            if changes:
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(changes))
            row = (await conn.execute(_live_key(key_id))).one()
        limits = limits_of(row)
        await self.copies.push_key(row.account_id, row.id, row.key_hash, limits)
        if changes.get("credit_limit") is not None and limits.credit_limit is not None:
            cap = limits.credit_limit
            await check_key_spend(self.copies.store, self.engine, row.account_id, row.id, cap, apply=True)
        return public_key(row)

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke a key (it stays in SQL for its usage); False if there is no such key.

        Revoking twice is fine: the Redis copy is dropped again, so a retry after a failed
        push completes the revocation.
        """
        async with transaction(self.engine) as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
            if row is None:
                return False
            if row.revoked_at_ms is None:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.id == key_id)
                    .values(revoked_at_ms=self.clock(), disabled=True)
                )
        await self.copies.drop_key(row.account_id, row.id, row.key_hash)
        return True

    @staticmethod
    async def _best_effort(push: Any, account_id: str) -> None:
        try:
            await push
        except QuotaUnavailable:
            log.warning("Redis unavailable: account %s is pushed by the next reconcile", account_id)


def _live_key(key_id: str) -> Any:
    return select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at_ms.is_(None))

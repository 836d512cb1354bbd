"""Accounts and API keys as the admin API manages them.

Until the SQL ledger lands, Redis holds the account and key records as well as the state
admission reads. Secrets are never stored: only their SHA-256 and a short display prefix.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.typing import EncodableT, FieldT

from gateway.auth import display_prefix, hash_key, new_secret
from gateway.keyspace import PREFIX, key_hash_key
from gateway.quota.scripts import RedisClient
from gateway.quota.store import QuotaStore


def _account_key(account_id: str) -> str:
    return f"{PREFIX}:acct:{account_id}"


def _account_keys_key(account_id: str) -> str:
    return f"{PREFIX}:acct:{account_id}:keys"


def _key_meta_key(key_id: str) -> str:
    return f"{PREFIX}:keymeta:{key_id}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fields(record: dict[str, str]) -> dict[FieldT, EncodableT]:
    return dict(record.items())


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    disabled: bool = False


class AccountRegistry:
    def __init__(self, redis: RedisClient, quota: QuotaStore) -> None:
        self._redis = redis
        self._quota = quota

    async def create_account(self, name: str) -> dict[str, Any]:
        account_id = "acct_" + secrets.token_hex(8)
        record = {"id": account_id, "name": name, "created_at": _now_iso()}
        await self._redis.hset(_account_key(account_id), mapping=_fields(record))
        await self._quota.init_balance(account_id)
        return record

    async def get_account(self, account_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hgetall(_account_key(account_id))
        if not raw:
            return None
        return {_text(k): _text(v) for k, v in raw.items()}

    async def create_key(self, account_id: str, name: str, limits: KeyLimits) -> dict[str, Any]:
        """Create a key; the answer is the only place its secret ever appears."""
        secret = new_secret()
        key_id = "key_" + secrets.token_hex(8)
        meta = {
            "id": key_id,
            "account_id": account_id,
            "name": name,
            "prefix": display_prefix(secret),
            "hash": hash_key(secret),
            "created_at": _now_iso(),
        }
        await self._redis.hset(_key_meta_key(key_id), mapping=_fields(meta))
        await self._redis.sadd(_account_keys_key(account_id), key_id)
        await self._write_limits(account_id, key_id, limits)
        await self._redis.set(key_hash_key(meta["hash"]), f"{key_id} {account_id}")
        return {**self._public(meta, limits), "key": secret}

    async def get_key(self, key_id: str) -> dict[str, Any] | None:
        raw = await self._redis.hgetall(_key_meta_key(key_id))
        if not raw:
            return None
        meta = {_text(k): _text(v) for k, v in raw.items()}
        limits = KeyLimits(**orjson.loads(meta.get("limits", "{}")))
        return self._public(meta, limits)

    async def update_key(self, key_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        current = await self.get_key(key_id)
        if current is None:
            return None
        fields = {f: current[f] for f in ("models", "rpm", "tpm", "max_concurrency", "disabled")}
        limits = KeyLimits(**{**fields, **changes})
        await self._write_limits(current["account_id"], key_id, limits)
        return await self.get_key(key_id)

    async def delete_key(self, key_id: str) -> bool:
        raw = await self._redis.hgetall(_key_meta_key(key_id))
        if not raw:
            return False
        meta = {_text(k): _text(v) for k, v in raw.items()}
        await self._redis.delete(key_hash_key(meta["hash"]), _key_meta_key(key_id))
        await self._redis.srem(_account_keys_key(meta["account_id"]), key_id)
        await self._quota.delete_key_record(meta["account_id"], key_id)
        return True

    async def _write_limits(self, account_id: str, key_id: str, limits: KeyLimits) -> None:
        doc = {
            "models": limits.models,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_concurrency": limits.max_concurrency,
            "disabled": limits.disabled,
        }
        await self._redis.hset(_key_meta_key(key_id), "limits", orjson.dumps(doc))
        await self._quota.set_key_record(
            account_id,
            key_id,
            models=limits.models,
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_concurrency=limits.max_concurrency,
            disabled=limits.disabled,
        )

    @staticmethod
    def _public(meta: dict[str, Any], limits: KeyLimits) -> dict[str, Any]:
        return {
            "id": meta["id"],
            "account_id": meta["account_id"],
            "name": meta["name"],
            "prefix": meta["prefix"],
            "created_at": meta["created_at"],
            "models": limits.models,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_concurrency": limits.max_concurrency,
            "disabled": limits.disabled,
        }

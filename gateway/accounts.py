"""The copies of accounts and API keys that the request path reads in Redis.

The ledger (``billing``) is the source of truth for accounts and keys; after each change
it pushes here what authentication and admission need, and ``tokengate billing reconcile``
pushes everything again after Redis lost data:

    tg:keyhash:<sha256>    '<key_id> <account_id>'            (authentication)
    key record             disabled, models, rpm, tpm, ...,    (admission, every request)
                           credit_limit, credit_period
    balance                created empty for a new account     (credits come with grants)

Secrets are never stored: only their SHA-256 (and, in SQL, a short display prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.quota.accounts import AccountStore, key_record_fields
from gateway.quota.caps import cap_fields
from gateway.quota.periods import CreditPeriod
from gateway.quota.scripts import RedisClient


@dataclass(frozen=True, slots=True)
class CreditLimit:
    """A key's credit cap: at most ``credits`` per UTC day, per UTC month, or in total."""

    credits: int
    period: CreditPeriod


@dataclass(frozen=True, slots=True)
class KeyLimits:
    models: list[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    max_concurrency: int | None = None
    disabled: bool = False
    credit_limit: CreditLimit | None = None

    def record(self) -> dict[str, str]:
        """The key record admission reads (see gateway.quota.caps)."""
        cap = self.credit_limit
        return {
            **key_record_fields(self.models, self.rpm, self.tpm, self.max_concurrency, self.disabled),
            **(cap_fields(None, None) if cap is None else cap_fields(cap.credits, cap.period)),
        }


class AccountRegistry:
    """Writes (and checks) the Redis copies of accounts and keys."""

    def __init__(self, redis: RedisClient, quota: AccountStore) -> None:
        self._redis = redis  # kept for the constructor's signature (gateway.state builds it)
        self._quota = quota

    @property
    def store(self) -> AccountStore:
        """The quota store the copies are written with (billing counts a capped key's spending)."""
        return self._quota

    async def push_account(self, account_id: str) -> None:
        """An empty balance for a new account (an existing one is left alone)."""
        await self._quota.init_balance(account_id)

    async def push_key(
        self, account_id: str, key_id: str, key_hash: str, limits: KeyLimits
    ) -> None:
        """What admission reads of the key, then the hash that lets it authenticate."""
        cap = limits.credit_limit
        await self._quota.set_key_record(
            account_id, key_id, models=limits.models, rpm=limits.rpm, tpm=limits.tpm,
            max_concurrency=limits.max_concurrency, disabled=limits.disabled,
            credit_limit=None if cap is None else cap.credits,
            credit_period=None if cap is None else cap.period,
        )  # fmt: skip
        await self._quota.set_key_hash(key_hash, account_id, key_id)

    async def drop_key(self, account_id: str, key_id: str, key_hash: str) -> None:
        """The key stops authenticating and being admitted at once."""
        await self._quota.delete_key_hash(key_hash)
        await self._quota.delete_key_record(account_id, key_id)

    async def key_pushed(
        self, account_id: str, key_id: str, key_hash: str, limits: KeyLimits | None = None
    ) -> bool:
        """Whether Redis can authenticate and admit the key (reconcile's check); with
        ``limits``, also whether its record says exactly that (limits, state, credit cap)."""
        owner = await self._quota.get_key_hash(key_hash)
        if owner != f"{key_id} {account_id}":
            return False
        if limits is None:
            return await self._quota.key_record_exists(account_id, key_id)
        return await self._quota.key_record(account_id, key_id) == limits.record()

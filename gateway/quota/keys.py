"""Keys the quota scripts and billing use beside those of ``gateway.keyspace``.

Each is derived from a keyspace key of the same account or shard, so it carries the same
hash tag and lives in the same slot as the keys one script touches together.
"""

from __future__ import annotations

from functools import lru_cache

from gateway import keyspace

BILLING_GROUP = "billing"  # the consumer group of the billing workers on the usage streams


def grants_key(account_id: str) -> str:
    """HASH grant id -> 'credits|reserved|spent|expires_ms|models' (see lua/lib_v3.lua)."""
    return keyspace.balance_key(account_id).removesuffix(":bal") + ":grants"


def withdrawals_key(account_id: str) -> str:
    """HASH operation id -> outcome of the account's withdrawals (see lua/withdraw_v1.lua).

    Kept: it makes a withdrawal once per operation id, and rebuild_v2.lua reads it to keep
    the withdrawals the ledger has not posted yet.
    """
    return keyspace.balance_key(account_id).removesuffix(":bal") + ":wd"


def dead_letter_key(shard: int) -> str:
    """STREAM of the usage entries the billing worker could not record, with the reason."""
    return keyspace.usage_stream_key(shard) + ":dead"


@lru_cache(maxsize=65536)
def admit_keys(account_id: str, key_id: str) -> tuple[str, ...]:
    """KEYS of admit_v4.lua, built once per (account, API key): every request needs them."""
    return (
        keyspace.key_record_key(account_id, key_id),
        keyspace.balance_key(account_id),
        keyspace.reservations_key(account_id),
        keyspace.rate_key(account_id, key_id),
        keyspace.inflight_key(account_id, key_id),
        keyspace.leases_key(keyspace.shard_of(account_id)),
        grants_key(account_id),
        keyspace.key_spend_key(account_id, key_id),
    )


@lru_cache(maxsize=65536)
def checkpoint_keys(account_id: str, key_id: str) -> tuple[str, ...]:
    """KEYS of checkpoint_v3.lua."""
    return (
        keyspace.reservations_key(account_id),
        keyspace.leases_key(keyspace.shard_of(account_id)),
        keyspace.inflight_key(account_id, key_id),
    )


@lru_cache(maxsize=65536)
def settle_keys(account_id: str, key_id: str) -> tuple[str, ...]:
    """KEYS of settle_v4.lua."""
    shard = keyspace.shard_of(account_id)
    return (
        keyspace.balance_key(account_id),
        keyspace.reservations_key(account_id),
        keyspace.rate_key(account_id, key_id),
        keyspace.inflight_key(account_id, key_id),
        keyspace.leases_key(shard),
        keyspace.usage_stream_key(shard),
        grants_key(account_id),
        keyspace.key_record_key(account_id, key_id),
        keyspace.key_spend_key(account_id, key_id),
    )

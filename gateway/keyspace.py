"""The Redis key layout: the contract between the gateway, the billing worker and reconcile.

Every key that one admission or settlement script touches carries the same hash tag, so
the scripts run unchanged on a Redis Cluster. Accounts are spread over a fixed number of
shards; an account's balance, its reservations, its keys' limits, the shard's lease index
and the shard's usage stream all live in the shard's slot. The billing worker therefore
reads ``USAGE_SHARDS`` streams, and the reaper scans ``USAGE_SHARDS`` lease indexes.

``USAGE_SHARDS`` is part of the stored data layout: changing it needs a migration.
"""

from __future__ import annotations

import zlib

USAGE_SHARDS = 8
PREFIX = "tg"


def shard_of(account_id: str) -> int:
    """The shard an account lives on (stable across processes and versions)."""
    return zlib.crc32(account_id.encode()) % USAGE_SHARDS


_TAGS = tuple(f"{PREFIX}:{{s{shard}}}" for shard in range(USAGE_SHARDS))


def _tag(shard: int) -> str:
    return _TAGS[shard]


def balance_key(account_id: str) -> str:
    """HASH purchased/reserved/spent/expired (credits). Absent = balance unknown."""
    return f"{_tag(shard_of(account_id))}:a:{account_id}:bal"


def tier_key(account_id: str) -> str:
    """HASH weight / until_ms: the account's package tier (its best live package's weight and
    when that package ends), which fair shares read (gateway/flow.py). Absent: weight 1."""
    return f"{_tag(shard_of(account_id))}:a:{account_id}:tier"


def reservations_key(account_id: str) -> str:
    """HASH request_id -> reservation record of the account's requests in flight."""
    return f"{_tag(shard_of(account_id))}:a:{account_id}:res"


def key_record_key(account_id: str, key_id: str) -> str:
    """HASH of an API key's state read by admission: disabled, models, rpm, tpm, ...,
    credit_limit and credit_period (its credit cap; '' = none)."""
    return f"{_tag(shard_of(account_id))}:k:{key_id}"


def key_spend_key(account_id: str, key_id: str) -> str:
    """HASH period / spent / held of a key with a credit cap: what it spent in the current
    period and what its requests in flight hold against the cap. A key without a cap has none."""
    return f"{_tag(shard_of(account_id))}:k:{key_id}:spend"


def rate_key(account_id: str, key_id: str) -> str:
    """HASH of the key's sliding-window counters (requests and tokens per minute)."""
    return f"{_tag(shard_of(account_id))}:k:{key_id}:rl"


def inflight_key(account_id: str, key_id: str) -> str:
    """ZSET request_id -> lease deadline (ms): the key's concurrent requests."""
    return f"{_tag(shard_of(account_id))}:k:{key_id}:inflight"


def leases_key(shard: int) -> str:
    """ZSET '<account_id>|<request_id>' -> lease deadline (ms), scanned by the reaper."""
    return f"{_tag(shard)}:leases"


def usage_stream_key(shard: int) -> str:
    """STREAM of usage events of the shard's accounts, consumed by the billing worker."""
    return f"{_tag(shard)}:usage"


def key_hash_key(key_hash: str) -> str:
    """STRING '<key_id> <account_id>' for an API key's SHA-256 (authentication)."""
    return f"{PREFIX}:keyhash:{key_hash}"


# Written with every API key pushed to Redis (admin API, reconcile). A key lookup that
# misses while this is absent means Redis lost its data, not that the key is unknown.
PROVISIONED_KEY = f"{PREFIX}:provisioned"


def all_usage_streams() -> list[str]:
    return [usage_stream_key(s) for s in range(USAGE_SHARDS)]


def reply_text(value: object) -> str:
    """A Redis reply value as str: hiredis and redis-py answer bytes, a decoding client str."""
    return value.decode() if isinstance(value, bytes) else str(value)

"""Keys the quota scripts and billing use beside those of ``gateway.keyspace``.

Each is derived from a keyspace key of the same account or shard, so it carries the same
hash tag and lives in the same slot as the keys one script touches together.
"""

from __future__ import annotations

from gateway import keyspace

BILLING_GROUP = "billing"  # the consumer group of the billing workers on the usage streams


def grants_key(account_id: str) -> str:
    """HASH grant id -> 'credits|reserved|spent|expires_ms|models' (see lua/lib_v2.lua)."""
    return keyspace.balance_key(account_id).removesuffix(":bal") + ":grants"


def dead_letter_key(shard: int) -> str:
    """STREAM of the usage entries the billing worker could not record, with the reason."""
    return keyspace.usage_stream_key(shard) + ":dead"

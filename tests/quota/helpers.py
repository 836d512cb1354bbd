"""Small helpers of the quota tests: fresh accounts, one-line admissions, the usage stream."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway import keyspace
from gateway.quota import Admission, QuotaStore
from gateway.quota.scripts import RedisClient
from gateway.quota.store import Charged
from gateway.usage import UsageEvent

PRICES = {"input_pm": 1000, "output_pm": 2000}  # 1 credit per prompt token, 2 per output
BACKENDS = ["standalone", pytest.param("cluster", marks=pytest.mark.cluster)]


def server_nodes(kind: str, request: pytest.FixtureRequest) -> list[tuple[str, int]]:
    """The address(es) of the session's standalone server or cluster (started on first use)."""
    if kind == "cluster":
        nodes: list[tuple[str, int]] = request.getfixturevalue(
            "redis_cluster_servers"
        ).startup_nodes
        return nodes
    return [("127.0.0.1", request.getfixturevalue("redis_standalone").port)]


def connect(kind: str, nodes: list[tuple[str, int]]) -> RedisClient:
    if kind == "cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes])
    return Redis(host=nodes[0][0], port=nodes[0][1])


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def funded_key(
    store: QuotaStore,
    credits: int,
    *,
    models: list[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrency: int | None = None,
) -> tuple[str, str]:
    """A fresh account holding ``credits`` and a key on it with the given limits."""
    account, key = new_id("acct"), new_id("key")
    await store.init_balance(account)
    if credits:
        await store.credit(account, credits)
    await store.set_key_record(
        account, key, models=models, rpm=rpm, tpm=tpm, max_concurrency=max_concurrency
    )
    return account, key


async def account_with(store: QuotaStore, *grants: tuple[str, int, int, list[str] | None]) -> tuple[str, str]:
    """A fresh account with grants (id, credits, expires ms (0: never), models) and a key."""
    account, key = new_id("acct"), new_id("key")
    await store.init_balance(account)
    for grant_id, credits, expires, models in grants:
        await store.credit(account, credits, grant_id=grant_id, expires_ms=expires, models=models)
    await store.set_key_record(account, key)
    return account, key


async def redis_ms(client: RedisClient) -> int:
    """Redis's clock (the one grants expire by), in ms."""
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def admit(
    store: QuotaStore,
    account: str,
    key: str,
    *,
    request_id: str | None = None,
    prompt: int = 10,
    max_tokens: int | None = None,
    ceiling: int = 1000,
    model: str = "m",
    lease_ms: int | None = None,
    input_pm: int = PRICES["input_pm"],
    output_pm: int = PRICES["output_pm"],
    choices: int = 1,
) -> Admission:
    return await store.admit(
        request_id=request_id or new_id("req"),
        account_id=account,
        key_id=key,
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        max_tokens_ceiling=ceiling,
        input_pm=input_pm,
        output_pm=output_pm,
        lease_ms=lease_ms,
        choices=choices,
    )


async def settle(
    store: QuotaStore,
    account: str,
    key: str,
    request_id: str,
    prompt: int,
    completion: int,
    status: str = "ok",
) -> int | None:
    """Settle; the charge collected (None: settled before)."""
    charged = await settle_charged(store, account, key, request_id, prompt, completion, status)
    return None if charged is None else charged.charge


async def settle_charged(
    store: QuotaStore,
    account: str,
    key: str,
    request_id: str,
    prompt: int,
    completion: int,
    status: str = "ok",
    cached: int = 0,
) -> Charged | None:
    """Settle; what was charged and left uncollected (None: settled before)."""
    return await store.settle(
        request_id=request_id,
        account_id=account,
        key_id=key,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        status=status,
        counted_by="upstream",
        stream=False,
        cluster="wuhan",
        endpoint="http://127.0.0.1:9001",
    )


async def usage_events(client: RedisClient, account: str) -> list[UsageEvent]:
    """The usage events of ``account`` in its shard's stream, oldest first."""
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    entries = await client.xrange(stream)
    events = [UsageEvent.from_fields(fields or {}) for _id, fields in entries or []]
    return [e for e in events if e.account_id == account]


async def reap_account(store: QuotaStore, account: str) -> list[UsageEvent]:
    """Reap the account's shard; the account's events (the shard is shared with other tests)."""
    events = await store.reap(keyspace.shard_of(account), limit=10_000)
    return [e for e in events if e.account_id == account]

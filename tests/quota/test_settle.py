"""Settlement, checkpoints and expiry against real Redis (standalone and Cluster)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from gateway import keyspace
from gateway.quota import QuotaStore, cost
from gateway.quota.scripts import RedisClient
from gateway.usage import STATUS_EXPIRED

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer

from .helpers import admit, funded_key, reap_account, settle, usage_events


async def test_settle_charges_actual_tokens_and_releases_the_rest(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000)
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=100)
    assert adm.reserve == 210
    assert await settle(store, account, key, "r1", prompt=9, completion=40) == 89
    bal = await store.balance(account)
    assert bal == {"purchased": 1000, "reserved": 0, "spent": 89, "expired": 0, "available": 911}
    [event] = await usage_events(client, account)
    assert (event.request_id, event.key_id, event.model, event.charge) == ("r1", key, "m", 89)
    assert (event.prompt_tokens, event.completion_tokens, event.status) == (9, 40, "ok")
    assert (event.cluster, event.counted_by, event.stream) == ("wuhan", "upstream", False)
    assert event.started_at_ms == adm.started_ms <= event.finished_at_ms
    assert await store.reservations(account) == {}
    leases = keyspace.leases_key(keyspace.shard_of(account))
    assert await client.zscore(leases, f"{account}|r1") is None
    assert await client.zcard(keyspace.inflight_key(account, key)) == 0


async def test_settle_twice_charges_once_and_writes_one_event(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, request_id="r1", max_tokens=50)
    results = await asyncio.gather(
        *(settle(store, account, key, "r1", prompt=10, completion=20) for _ in range(5))
    )
    assert sorted(results, key=str) == [50, None, None, None, None]
    assert (await store.balance(account))["spent"] == 50
    assert len(await usage_events(client, account)) == 1
    assert not await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=1
    )


async def test_settle_without_a_balance_records_usage_but_invents_no_balance(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, request_id="r1", max_tokens=5)
    await client.delete(keyspace.balance_key(account))  # Redis lost the balance meanwhile
    assert await settle(store, account, key, "r1", prompt=10, completion=5) == 20
    assert not await client.exists(keyspace.balance_key(account))
    assert len(await usage_events(client, account)) == 1


async def test_expiry_charges_the_checkpoint(store: QuotaStore, client: RedisClient) -> None:
    account, key = await funded_key(store, 1000)
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=100)
    assert await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=7, lease_ms=50
    )
    await asyncio.sleep(0.1)
    [event] = await reap_account(store, account)
    assert (event.request_id, event.status, event.counted_by) == ("r1", STATUS_EXPIRED, "gateway")
    assert (event.prompt_tokens, event.completion_tokens) == (10, 7)
    assert event.charge == cost(10, 7, 1000, 2000) == 24 <= adm.reserve
    assert await reap_account(store, account) == []
    assert await settle(store, account, key, "r1", prompt=10, completion=9) is None
    bal = await store.balance(account)
    assert (bal["spent"], bal["reserved"], bal["expired"]) == (24, 0, 0)
    assert [e.charge for e in await usage_events(client, account)] == [24]


async def test_expiry_prefers_the_upstreams_prompt_count(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, request_id="r1", prompt=50, max_tokens=100, lease_ms=30)
    assert await store.checkpoint(
        request_id="r1",
        account_id=account,
        key_id=key,
        completion_tokens=3,
        prompt_tokens=41,
        lease_ms=30,
    )
    await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=2, lease_ms=30
    )  # a late, lower count does not undo the first
    await asyncio.sleep(0.08)
    [event] = await reap_account(store, account)
    assert (event.prompt_tokens, event.completion_tokens, event.charge) == (41, 3, 47)


async def test_expiry_without_a_checkpoint_charges_nothing(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000, max_concurrency=1)
    await admit(store, account, key, request_id="r1", max_tokens=100, lease_ms=20)
    await asyncio.sleep(0.05)
    [event] = await reap_account(store, account)
    assert (event.charge, event.prompt_tokens, event.completion_tokens) == (0, 0, 0)
    assert (await store.balance(account))["available"] == 1000
    assert len(await usage_events(client, account)) == 1
    await admit(store, account, key, max_tokens=1)  # the concurrency slot is free again


async def test_reaper_leaves_a_renewed_lease_alone(store: QuotaStore) -> None:
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, request_id="r1", max_tokens=10, lease_ms=20)
    await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=1, lease_ms=60_000
    )
    await asyncio.sleep(0.05)
    assert await reap_account(store, account) == []
    # the script re-checks by Redis time even when asked to expire a live lease directly
    reply = await store._settle("r1", account, key, ["expire"])
    assert reply[0] == b"live"
    assert "r1" in await store.reservations(account)


async def test_reap_takes_a_limited_batch_per_call(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000)
    shard = keyspace.shard_of(account)
    await store.reap(shard, limit=10_000)  # what other tests left on the shared server
    for i in range(5):
        await admit(store, account, key, request_id=f"r{i}", max_tokens=1, lease_ms=10)
    await asyncio.sleep(0.05)
    first = await store.reap(shard, limit=3)
    rest = await store.reap(shard, limit=3)
    assert len(first) == 3 and len(rest) == 2
    assert {e.request_id for e in first + rest} == {f"r{i}" for i in range(5)}
    assert (await store.balance(account))["reserved"] == 0


async def test_a_decoding_client_works_too(redis_standalone: RedisServer) -> None:
    client = Redis(port=redis_standalone.port, decode_responses=True)
    store = QuotaStore(client)
    account, key = await funded_key(store, 1000)
    adm = await admit(store, account, key, request_id="r1", max_tokens=10, lease_ms=10)
    assert adm.reserve == 30 and not adm.replayed
    assert (await admit(store, account, key, request_id="r1", max_tokens=10)).replayed
    assert await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=2, lease_ms=10
    )
    await asyncio.sleep(0.05)
    [event] = await reap_account(store, account)
    assert (event.charge, event.status) == (14, "expired")
    assert (await store.reservations(account)) == {}
    await client.aclose()

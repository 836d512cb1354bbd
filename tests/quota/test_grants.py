"""Grants in Redis (standalone and Cluster): the order credits are drawn in, model-restricted
and expiring grants, no overdraft per grant, and what happens when Redis loses data."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import pytest

from gateway import keyspace
from gateway.errors import BalanceExhausted, BalanceUnknown
from gateway.quota import QuotaStore
from gateway.quota.accounts import new_epoch
from gateway.quota.journal import group_progress
from gateway.quota.keys import BILLING_GROUP, grants_key
from gateway.quota.scripts import RedisClient
from gateway.settings import Settings
from gateway.state import GatewayState

from .helpers import account_with, admit, redis_ms, settle, usage_events


async def test_credits_are_drawn_soonest_expiry_first(store: QuotaStore, client: RedisClient) -> None:
    now = await redis_ms(client)
    account, key = await account_with(
        store, ("never", 100, 0, None), ("late", 40, now + 90_000, None), ("soon", 30, now + 60_000, None)
    )
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=20)  # 50
    assert adm.allocation == "soon:30,late:20"
    await settle(store, account, key, "r1", prompt=10, completion=12)  # 34
    [event] = await usage_events(client, account)
    assert event.allocation() == [("soon", 30), ("late", 4)]
    view = await store.view(account)
    assert [(g.id, g.spent, g.available) for g in view.grants] == [
        ("soon", 30, 0),
        ("late", 4, 36),
        ("never", 0, 100),
    ]


async def test_a_grant_is_credited_once(store: QuotaStore) -> None:
    account, _ = await account_with(store, ("g", 70, 0, None))
    assert await store.credit(account, 70, grant_id="g") == 70
    assert await store.credit(account, 5, grant_id="h") == 75
    with pytest.raises(ValueError):
        await store.credit(account, 5, grant_id="a:b")


async def test_model_restricted_grants_and_no_overdraft_per_grant(store: QuotaStore) -> None:
    account, key = await account_with(store, ("only-x", 500, 0, ["x"]), ("any", 45, 0, None))
    results = await asyncio.gather(
        *(admit(store, account, key, model="y", prompt=5, max_tokens=5) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 3  # 15 credits each
    with pytest.raises(BalanceExhausted, match="500 more credits are valid for other models only"):
        await admit(store, account, key, model="y", prompt=1, max_tokens=1)
    adm = await admit(store, account, key, model="x", prompt=5, max_tokens=5)
    assert adm.allocation == "only-x:15"
    view = await store.view(account)
    assert all(g.reserved + g.spent <= g.credits for g in view.grants)
    assert {g.id: g.reserved for g in view.grants} == {"only-x": 15, "any": 45}


async def test_an_expired_grant_stops_counting_at_its_expiry(store: QuotaStore, client: RedisClient) -> None:
    expires = await redis_ms(client) + 300
    account, key = await account_with(store, ("brief", 100, expires, None))
    await admit(store, account, key, request_id="held", prompt=10, max_tokens=5)  # 20 held
    assert (await store.balance(account))["available"] == 80
    await asyncio.sleep(max(0, expires - await redis_ms(client)) / 1000 + 0.05)
    bal = await store.balance(account)
    assert bal == {"purchased": 100, "reserved": 20, "spent": 0, "expired": 80, "available": 0}
    with pytest.raises(BalanceExhausted):
        await admit(store, account, key, prompt=1, max_tokens=1)
    assert await settle(store, account, key, "held", prompt=10, completion=2) == 14
    bal = await store.balance(account)
    assert bal == {"purchased": 100, "reserved": 0, "spent": 14, "expired": 86, "available": 0}


async def test_a_reservation_lost_with_redis_data_is_still_charged(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await account_with(store, ("g", 1000, 0, None))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=50)
    await admit(store, account, key, request_id="r2", prompt=10, max_tokens=50)
    for name in (keyspace.balance_key(account), grants_key(account), keyspace.reservations_key(account)):
        await client.delete(name)  # Redis lost the account
    with pytest.raises(BalanceUnknown):
        await admit(store, account, key, prompt=1, max_tokens=1)
    assert await settle(store, account, key, "r1", prompt=10, completion=20) == 50  # served: metered
    assert not await client.exists(keyspace.balance_key(account))  # and no balance invented
    # rebuilt (another epoch) before r2 ends: its charge goes to the rebuilt grant
    await client.hset(keyspace.balance_key(account), "epoch", new_epoch())
    await client.hset(grants_key(account), "g", "1000|0|50|0|")
    assert await settle(store, account, key, "r2", prompt=10, completion=5) == 20
    assert await settle(store, account, key, "r2", prompt=10, completion=5) is None  # once
    assert (await store.balance(account))["spent"] == 70
    assert [e.charge for e in await usage_events(client, account)] == [50, 20]


async def test_an_expired_lease_is_not_mistaken_for_lost_data(store: QuotaStore) -> None:
    account, key = await account_with(store, ("g", 1000, 0, None))
    await admit(store, account, key, request_id="slow", prompt=10, max_tokens=10, lease_ms=10)
    await asyncio.sleep(0.05)
    await store.reap(keyspace.shard_of(account), limit=10_000)  # settled as expired (charge 0)
    assert await settle(store, account, key, "slow", prompt=10, completion=10) is None
    assert (await store.balance(account))["spent"] == 0


async def test_usage_redis_lost_is_replayed_by_the_gateway(store: QuotaStore, client: RedisClient) -> None:
    account, key = await account_with(store, ("g", 1000, 0, None))
    shard = keyspace.shard_of(account)
    stream = keyspace.usage_stream_key(shard)
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    await settle(store, account, key, "r1", prompt=10, completion=5)
    await store.reap(shard)
    assert len(store.journal) >= 1
    await client.delete(stream)  # lost before any billing worker read it
    await store.reap(shard)
    [event] = await usage_events(client, account)
    assert (event.request_id, event.charge) == ("r1", 20)
    assert store.journal.replayed == 1 and (await store.balance(account))["spent"] == 20
    await client.xgroup_create(stream, BILLING_GROUP, id="0")
    for _name, entries in await client.xreadgroup(BILLING_GROUP, "c", {stream: ">"}):
        await client.xack(stream, BILLING_GROUP, *[eid for eid, _ in entries])
    await store.reap(shard)
    assert len(store.journal) == 0  # acknowledged: forgotten


async def _acknowledge_all(client: RedisClient, stream: str) -> None:
    """What a billing worker does: read everything in the group and acknowledge it."""
    await client.xgroup_create(stream, BILLING_GROUP, id="0", mkstream=True)
    for _name, entries in await client.xreadgroup(BILLING_GROUP, "c", {stream: ">"}) or []:
        await client.xack(stream, BILLING_GROUP, *[eid for eid, _ in entries])


async def test_a_recreated_stream_reusing_ids_does_not_hide_a_lost_event(
    store: QuotaStore, client: RedisClient
) -> None:
    """After a loss the stream starts over at the clock's millisecond: its first ids can be
    those of lost events (the same millisecond, or a clock behind after a failover)."""
    account, key = await account_with(store, ("g", 1000, 0, None))
    other, _ = await account_with(store, ("g", 1000, 0, None))
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    await client.delete(stream)
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    await settle(store, account, key, "r1", prompt=10, completion=5)
    [(r1_id, r1_fields)] = await client.xrange(stream)
    r1_id = r1_id.decode() if isinstance(r1_id, bytes) else r1_id
    def others(request_id: str) -> dict[bytes | str, bytes | str]:  # another account's event
        return {**r1_fields, b"request_id": request_id, b"account_id": other}
    await client.delete(stream)  # lost; then a new event takes an id before r1's
    await client.xadd(stream, others("early"), id="1-1")
    await store.reap(keyspace.shard_of(account))
    assert [e.request_id for e in await usage_events(client, account)] == ["r1"]
    # and once more, the new stream giving a newer event r1's very id
    await client.delete(stream)
    await client.xadd(stream, others("same-id"), id=r1_id)
    store.journal.record(r1_id, other, [v for pair in others("same-id").items() for v in pair])
    await store.reap(keyspace.shard_of(account))
    assert [e.request_id for e in await usage_events(client, account)] == ["r1"]
    assert store.journal.replayed == 2 and (await store.balance(account))["spent"] == 20


async def test_lost_events_past_one_replay_batch_wait_for_the_next_pass(
    store: QuotaStore, client: RedisClient
) -> None:
    """More lost events than one pass replays: the rest are kept, not taken for acknowledged
    because the new stream's billing group has moved past their ids."""
    account, key = await account_with(store, ("g", 1000, 0, None))
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    store.journal.replay_batch = 2
    for i in range(5):
        await admit(store, account, key, request_id=f"r{i}", prompt=10, max_tokens=5)
        await settle(store, account, key, f"r{i}", prompt=10, completion=5)
    await client.delete(stream)  # lost before billing read any of it
    await admit(store, account, key, request_id="after", prompt=10, max_tokens=5)
    await settle(store, account, key, "after", prompt=10, completion=5)
    await _acknowledge_all(client, stream)  # billing records the one event the new stream has
    for _ in range(3):
        await store.reap(keyspace.shard_of(account))
    requests = sorted(e.request_id for e in await usage_events(client, account))
    assert requests == ["after", "r0", "r1", "r2", "r3", "r4"]


class _AckingBetweenCalls:
    """The real client, with the billing worker acknowledging everything right after
    XINFO GROUPS answered: the interleaving that ends a batch between two reads."""

    def __init__(self, client: RedisClient, stream: str) -> None:
        self._client, self._stream = client, stream

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    async def xinfo_groups(self, stream: str) -> object:
        groups = await self._client.xinfo_groups(stream)
        pending = await self._client.xpending_range(self._stream, BILLING_GROUP, "-", "+", 1000)
        if pending:
            await self._client.xack(self._stream, BILLING_GROUP, *[p["message_id"] for p in pending])
        return groups


async def test_progress_read_while_billing_acknowledges(store: QuotaStore, client: RedisClient) -> None:
    """XINFO says entries are pending, XPENDING then finds none: nothing is pending (it once
    raised, which ended the gateway's reaper loop and its journal confirmations for good)."""
    account, key = await account_with(store, ("g", 1000, 0, None))
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    await settle(store, account, key, "r1", prompt=10, completion=5)
    with contextlib.suppress(Exception):
        await client.xgroup_create(stream, BILLING_GROUP, id="0", mkstream=True)
    await client.xreadgroup(BILLING_GROUP, "c", {stream: ">"})  # delivered, not yet acked
    delivered, oldest_pending = await group_progress(_AckingBetweenCalls(client, stream), stream)  # type: ignore[arg-type]
    assert oldest_pending is None and delivered >= (1, 0)


async def test_the_reaper_loop_outlives_an_unexpected_error(store: QuotaStore) -> None:
    """A bug in one pass is logged; reaping and journal confirmation go on."""
    account, key = await account_with(store, ("g", 1000, 0, None))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    await settle(store, account, key, "r1", prompt=10, completion=5)
    calls = 0
    confirm = store.confirm_journal

    async def failing_once(shard: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug")
        return await confirm(shard)

    store.confirm_journal = failing_once  # type: ignore[method-assign]
    owner = SimpleNamespace(settings=Settings(TOKENGATE_REAPER_INTERVAL=60), quota=store)
    task = asyncio.create_task(GatewayState._reap_forever(owner))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(2.5)  # two journal passes, a second apart
        assert not task.done() and calls >= 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

"""Reconcile: drift reported and repaired; a rebuild keeps the work in progress (stream
backlog, reservations in flight) without losing or double counting it; after Redis lost
everything, requests fail closed until the rebuild and nothing served goes unmetered."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from billing.reconcile import Reconciler
from billing.service import Billing
from billing.streams import Entry
from gateway import keyspace
from gateway.errors import BalanceUnknown
from gateway.quota.keys import grants_key
from gateway.quota.store import QuotaStore

from .helpers import Funded, Pack, conserved, drain, funded, ledger_figures, new_id, request

pytestmark = pytest.mark.timeout(60)


async def _admit(store: QuotaStore, who: Funded, rid: str, max_tokens: int = 40) -> int:
    adm = await store.admit(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        model="m",
        prompt_tokens=10,
        max_tokens=max_tokens,
        max_tokens_ceiling=1000,
        input_pm=1000,
        output_pm=2000,
    )
    return adm.reserve


async def _settle(store: QuotaStore, who: Funded, rid: str, completion: int) -> int:
    event = await store.settle_event(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        prompt_tokens=10,
        completion_tokens=completion,
        status="ok",
        counted_by="upstream",
        stream=True,
        cluster="c",
        endpoint="e",
    )
    assert event is not None
    return event.charge


async def test_drift_is_reported_then_repaired(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(500), Pack(70, days=3, models=["x"])])
    await request(store, who, prompt=30, completion=10)
    await drain(billing, redis)
    reconciler = Reconciler(billing.store, billing.engine, grace_s=0)
    assert not (await reconciler.run(apply=False, account_ids=[who.account_id])).drift
    grant = who.grants[0]["id"]
    await redis.hset(grants_key(who.account_id), grant, "500|0|0|0|")  # spent and expiry lost
    await redis.delete(keyspace.key_hash_key("0" * 64))
    report = await reconciler.run(apply=False, account_ids=[who.account_id])
    [line] = report.drift[who.account_id]
    assert line.startswith(f"{grant} 500|0|0|0| -> 500|0|50|")
    report = await reconciler.run(apply=True, account_ids=[who.account_id])
    assert report.drift and not report.ledger and not report.keys
    assert not (await reconciler.run(apply=False, account_ids=[who.account_id])).drift
    assert await store.balance(who.account_id) == {**await ledger_figures(billing, who.account_id)}


async def test_a_rebuild_keeps_the_backlog_and_the_reservations_in_flight(
    billing: Billing, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis loses the account's balance while: r1 is recorded, r2 settled but not recorded
    yet, r3 settled after reconcile read the stream, r4 still in flight."""
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(1000)])
    await _admit(store, who, "r1")
    charged = await _settle(store, who, "r1", 20)
    await drain(billing, redis)
    await _admit(store, who, "r2")
    charged += await _settle(store, who, "r2", 15)
    await _admit(store, who, "r3")
    charged += await _settle(store, who, "r3", 5)
    held = await _admit(store, who, "r4")
    before = await store.balance(who.account_id)
    assert before == {
        "purchased": 1000,
        "reserved": held,
        "spent": charged,
        "expired": 0,
        "available": 1000 - held - charged,
    }

    read_stream = Reconciler._read_stream

    async def without_r3(self: Reconciler, stream: str, chunk: int = 1000) -> list[Entry]:
        """As if r3 was appended just after reconcile read the stream."""
        entries = await read_stream(self, stream, chunk)
        return [e for e in entries if e.fields.get("request_id") != "r3"]

    monkeypatch.setattr(Reconciler, "_read_stream", without_r3)
    await redis.delete(keyspace.balance_key(who.account_id), grants_key(who.account_id))
    with pytest.raises(BalanceUnknown):
        await request(store, who)
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    assert await store.balance(who.account_id) == before  # nothing lost, nothing twice

    charged += await _settle(store, who, "r4", 30)
    await drain(billing, redis)
    after = await store.balance(who.account_id)
    assert after == await ledger_figures(billing, who.account_id)
    assert after["spent"] == charged and conserved(after)
    monkeypatch.undo()
    assert not (
        await Reconciler(billing.store, billing.engine, grace_s=0).run(
            apply=False, account_ids=[who.account_id]
        )
    ).drift


async def test_after_flushall_nothing_served_goes_unmetered(billing: Billing, redis: Redis) -> None:
    """FLUSHALL with requests in flight and settled events the worker had not read yet."""
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(5000)])
    await drain(billing, redis)
    served: dict[str, int] = {}
    for i in range(3):
        await _admit(store, who, f"done-{i}")
        served[f"done-{i}"] = await _settle(store, who, f"done-{i}", 10 + i)
    for i in range(2):
        await _admit(store, who, f"flying-{i}")
    await redis.flushall()

    with pytest.raises(BalanceUnknown):  # fail closed, with the key record gone too
        await _admit(store, who, new_id("late"))
    for i in range(2):  # the requests in flight end: their gateway still knows them
        served[f"flying-{i}"] = await _settle(store, who, f"flying-{i}", 7)
    replayed = await store.reap(keyspace.shard_of(who.account_id))  # the reaper's pass
    assert replayed == [] and store.journal.replayed == 3

    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    await drain(billing, redis)
    ledger = await ledger_figures(billing, who.account_id)
    assert ledger["spent"] == sum(served.values())
    assert await store.balance(who.account_id) == ledger
    await request(store, who)  # served again after the rebuild (the key was pushed back)

"""The billing worker against real Redis streams and real databases: idempotent records,
acks after commit, claims from dead consumers, dead letters that block nothing."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from billing.db.schema import ledger_legs, usage_records
from billing.service import Billing
from billing.streams import UsageStreams, backlog, entries_of
from billing.trim import StreamTrimmer
from billing.worker import BillingWorker, WorkerOptions
from gateway import keyspace
from gateway.quota.keys import BILLING_GROUP, dead_letter_key
from gateway.quota.store import QuotaStore
from gateway.usage import UsageEvent

from .helpers import Funded, Pack, drain, funded, ledger_figures, new_id, request

pytestmark = pytest.mark.timeout(60)


def event_for(who: Funded, charge: int, grant: int = 0, **changes: object) -> UsageEvent:
    grant_id = who.grants[grant]["id"]
    fields: dict[str, object] = dict(
        request_id=new_id("req"),
        account_id=who.account_id,
        key_id=who.key_id,
        model="m",
        cluster="c",
        endpoint="e",
        prompt_tokens=charge,
        completion_tokens=0,
        cached_tokens=0,
        charge=charge,
        status="ok",
        counted_by="upstream",
        stream=False,
        started_at_ms=1_700_000_000_000,
        finished_at_ms=1_700_000_000_100,
        grants=f"{grant_id}:{charge}" if charge else "",
    )
    fields.update(changes)
    return UsageEvent(**fields)  # type: ignore[arg-type]


async def append(redis: Redis, event: UsageEvent | dict[str, str]) -> str:
    fields = event.to_fields() if isinstance(event, UsageEvent) else event
    account = fields["account_id"]
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    entry_id = await redis.xadd(stream, fields)  # type: ignore[arg-type]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def records(billing: Billing, account_id: str) -> tuple[int, int, int]:
    """(usage records, their charges, the usage legs) of an account."""
    async with billing.engine.connect() as conn:
        n, charged = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(usage_records.c.charge), 0)).where(
                    usage_records.c.account_id == account_id
                )
            )
        ).one()
        legs = (
            await conn.execute(
                select(func.coalesce(func.sum(ledger_legs.c.amount), 0)).where(
                    ledger_legs.c.account_id == account_id, ledger_legs.c.book == "usage"
                )
            )
        ).scalar()
    return int(n), int(charged), int(legs or 0)


async def dead_letters(redis: Redis, account_id: str) -> list[dict[str, str]]:
    shard = keyspace.shard_of(account_id)
    stream = dead_letter_key(shard)
    entries = entries_of(stream, await redis.xrange(stream))
    return [dict(e.fields) for e in entries if e.fields.get("account_id") == account_id]


async def test_events_are_recorded_once_whatever_is_duplicated(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(10_000)])
    events = [await request(store, who, prompt=i, completion=i) for i in range(1, 21)]
    for event in events[:10]:  # the same events again, as a replay or redelivery would
        assert event is not None
        await append(redis, event)
    worker = await drain(billing, redis)
    charges = sum(e.charge for e in events if e is not None)
    assert await records(billing, who.account_id) == (20, charges, charges)
    assert worker.stats.duplicates >= 10 and not await dead_letters(redis, who.account_id)
    for event in events[10:]:
        assert event is not None
        await append(redis, event)
    await drain(billing, redis)  # a second worker, later: still once
    assert await records(billing, who.account_id) == (20, charges, charges)
    bal = await ledger_figures(billing, who.account_id)
    assert bal == {**await store.balance(who.account_id), "reserved": 0}


async def test_poison_goes_to_the_dead_letter_stream_and_blocks_nothing(
    billing: Billing, redis: Redis
) -> None:
    who = await funded(billing, [Pack(100), Pack(50)])
    good = [event_for(who, 5) for _ in range(4)]
    await append(redis, good[0])
    await append(redis, {"account_id": who.account_id, "request_id": "half-an-event"})
    await append(redis, good[1])
    await append(redis, event_for(who, 7, grants="gr_nope:7"))  # no such grant
    await append(redis, event_for(who, 60, grant=1))  # the 50-credit grant: an overdraft
    await append(redis, event_for(who, 9, grants=f"{who.grants[0]['id']}:8"))  # does not add up
    await append(redis, dataclasses.replace(good[0], charge=6, grants=f"{who.grants[0]['id']}:6"))
    await append(redis, good[2])
    await append(redis, good[3])
    await drain(billing, redis)
    assert await records(billing, who.account_id) == (4, 20, 20)
    dead = await dead_letters(redis, who.account_id)
    reasons = sorted(d["dead_reason"].split(":")[0] for d in dead)
    assert reasons == [
        "not a usage event",
        "refused by the ledger",
        "refused by the ledger",
        "refused by the ledger",
        "same request id as a recorded usage, other content",
    ]
    assert all(d["dead_stream_id"] for d in dead)
    assert await backlog(redis) == 0  # everything acknowledged


async def test_entries_a_dead_worker_held_are_claimed_and_recorded(billing: Billing, redis: Redis) -> None:
    who = await funded(billing, [Pack(1000)])
    events = [event_for(who, 3) for _ in range(5)]
    dying = UsageStreams(redis, new_id("dying"))
    await dying.ensure_group()
    for event in events:
        await append(redis, event)
    taken = [e for e in await dying.read(100, 0) if e.fields.get("account_id") == who.account_id]
    assert len(taken) == 5  # ... and it dies without acking them
    survivor = BillingWorker(
        redis, billing.engine, consumer=new_id("survivor"), options=WorkerOptions(claim_idle_ms=0)
    )
    claimed = await survivor._claim()
    assert {e.id for e in taken} <= {e.id for e in claimed}
    await survivor.handle(claimed)
    assert await records(billing, who.account_id) == (5, 15, 15)
    pending = await redis.xpending(
        keyspace.usage_stream_key(keyspace.shard_of(who.account_id)), BILLING_GROUP
    )
    assert pending["pending"] == 0


async def test_an_entry_delivered_too_often_is_dead_lettered(billing: Billing, redis: Redis) -> None:
    who = await funded(billing, [Pack(1000)])
    await append(redis, event_for(who, 3))
    reader = UsageStreams(redis, new_id("crashing"))
    await reader.ensure_group()
    await reader.read(100, 0)
    worker = BillingWorker(
        redis, billing.engine, consumer=new_id("w"), options=WorkerOptions(claim_idle_ms=0, max_deliveries=2)
    )
    for _ in range(2):  # each claim is one more delivery, as a worker crashing on it would do
        await worker.streams.claim(0, 100)
    await worker._claim()
    [dead] = await dead_letters(redis, who.account_id)
    assert "delivered" in dead["dead_reason"]
    assert await records(billing, who.account_id) == (0, 0, 0)


async def test_only_recorded_and_acknowledged_entries_are_trimmed(billing: Billing, redis: Redis) -> None:
    who = await funded(billing, [Pack(1000)])
    stream = keyspace.usage_stream_key(keyspace.shard_of(who.account_id))
    await drain(billing, redis)  # what earlier tests left
    recorded = [await append(redis, event_for(who, 1)) for _ in range(5)]
    await drain(billing, redis)
    waiting = [await append(redis, event_for(who, 1)) for _ in range(3)]  # not recorded yet
    trimmer = StreamTrimmer(redis, billing.engine, "t", every_s=0, margin_s=0)
    point = await trimmer.safe_point(stream)
    assert point is not None and point.entry_id == waiting[0]
    await trimmer.maybe_trim()  # finds the point
    await trimmer.maybe_trim()  # trims up to it, a margin later
    left = [e.id for e in entries_of(stream, await redis.xrange(stream))]
    assert left == waiting and not set(recorded) & set(left)
    await drain(billing, redis)
    assert await records(billing, who.account_id) == (8, 8, 8)


async def test_trimming_keeps_up_with_a_stream_longer_than_one_read(billing: Billing, redis: Redis) -> None:
    """Each pass reads on from where the last stopped, page after page: a busy stream is
    trimmed to its unrecorded tail, not by one page per pass."""
    who = await funded(billing, [Pack(1000)])
    stream = keyspace.usage_stream_key(keyspace.shard_of(who.account_id))
    await drain(billing, redis)
    trimmer = StreamTrimmer(redis, billing.engine, "t", every_s=0, margin_s=0, scan=7)
    await trimmer.maybe_trim()
    for _ in range(3):  # usage keeps coming between passes
        for _ in range(40):
            await append(redis, event_for(who, 1))
        await drain(billing, redis)
        await trimmer.maybe_trim()
    waiting = [await append(redis, event_for(who, 1)) for _ in range(2)]
    await trimmer.maybe_trim()
    await trimmer.maybe_trim()
    assert [e.id for e in entries_of(stream, await redis.xrange(stream))] == waiting


async def test_a_point_is_not_trimmed_to_once_its_stream_was_lost(billing: Billing, redis: Redis) -> None:
    """Redis lost the stream after a point was found: the new stream's entries, whatever
    their ids, stay until checked themselves."""
    who = await funded(billing, [Pack(1000)])
    stream = keyspace.usage_stream_key(keyspace.shard_of(who.account_id))
    await drain(billing, redis)
    for _ in range(3):
        await append(redis, event_for(who, 1))
    await drain(billing, redis)
    waiting = await append(redis, event_for(who, 1))
    trimmer = StreamTrimmer(redis, billing.engine, "t", every_s=0, margin_s=0)
    await trimmer.maybe_trim()  # the point: the unrecorded entry
    await redis.delete(stream)  # lost; the new stream's ids come before that point
    await redis.xadd(stream, event_for(who, 1).to_fields(), id="1-1")  # type: ignore[arg-type]
    await redis.xgroup_create(stream, BILLING_GROUP, id="0")
    await trimmer.maybe_trim()
    assert [e.id for e in entries_of(stream, await redis.xrange(stream))] == ["1-1"]
    assert waiting not in [e.id for e in entries_of(stream, await redis.xrange(stream))]

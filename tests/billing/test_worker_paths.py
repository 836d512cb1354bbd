"""The billing worker's cheaper paths do what the plain ones did: a batch's outcome by
request id, a debit of an unknown grant refused by name, the worker's own SQLite
connection dropped when the file goes away, stream entries and events parsed the same."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, text

from billing.db import migrate
from billing.db.engine import WriterConnection, create_engine, is_unavailable
from billing.db.schema import grants, ledger_legs, usage_records
from billing.ledger import LedgerRefused, record_usage
from billing.service import Billing
from billing.streams import UsageStreams, entries_of
from gateway import keyspace
from gateway.quota.keys import BILLING_GROUP
from gateway.usage import UsageEvent

from .helpers import Pack, drain, funded, new_id
from .test_worker import append, event_for

pytestmark = pytest.mark.timeout(60)


async def _remaining(billing: Billing, grant_id: str) -> int:
    async with billing.engine.connect() as conn:
        found = await conn.execute(select(grants.c.remaining).where(grants.c.id == grant_id))
        return int(found.scalar_one())


async def test_a_batch_sorts_new_duplicate_and_conflicting_ids(billing: Billing) -> None:
    who = await funded(billing, [Pack(1000)])
    old = event_for(who, 4)
    async with billing.engine.begin() as conn:
        assert (await record_usage(conn, [old], billing.clock())).new == [old.request_id]
    fresh, other = event_for(who, 5), event_for(who, 6)
    twin = event_for(who, 7, request_id=fresh.request_id)  # same id, other content
    changed = event_for(who, 8, request_id=old.request_id)
    batch = [fresh, other, dataclasses.replace(fresh), twin, dataclasses.replace(old), changed]
    async with billing.engine.begin() as conn:
        done = await record_usage(conn, batch, billing.clock())
    assert done.new == [fresh.request_id, other.request_id]
    assert sorted(done.duplicates) == sorted([fresh.request_id, old.request_id])
    assert done.conflicts == [twin, changed]
    records = select(usage_records.c.request_id, usage_records.c.charge).where(
        usage_records.c.account_id == who.account_id
    )
    spent = select(func.sum(ledger_legs.c.amount)).where(
        ledger_legs.c.account_id == who.account_id, ledger_legs.c.book == "usage"
    )
    async with billing.engine.connect() as conn:
        found = dict((await conn.execute(records)).all())
        assert found == {old.request_id: 4, fresh.request_id: 5, other.request_id: 6}
        assert (await conn.execute(spent)).scalar_one() == 15
    assert await _remaining(billing, who.grants[0]["id"]) == 1000 - 15


@pytest.mark.parametrize("foreign", [False, True])
async def test_a_debit_of_a_grant_the_account_lacks_is_refused_by_name(
    billing: Billing, foreign: bool
) -> None:
    who, stranger = await funded(billing, [Pack(100)]), await funded(billing, [Pack(100)])
    grant = stranger.grants[0]["id"] if foreign else "gr_" + new_id("nope")
    good, bad = event_for(who, 3), event_for(who, 2, grants=f"{grant}:2")
    with pytest.raises(LedgerRefused) as refused:  # the debits come before the legs
        async with billing.engine.begin() as conn:
            await record_usage(conn, [good, bad], billing.clock())
    assert str(refused.value) == f"account {who.account_id} has no grant {grant}"
    assert await _remaining(billing, who.grants[0]["id"]) == 100  # nothing of the batch


async def _migrated(path: Path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    await migrate.upgrade(engine)
    await engine.dispose()
    return url


async def test_the_writer_keeps_its_sqlite_connection_until_the_file_goes_away(tmp_path: Path) -> None:
    url = await _migrated(tmp_path / "db" / "l.db")
    engine = create_engine(url)
    writer = WriterConnection(engine)
    try:
        for _ in range(2):
            async with writer.begin() as conn:
                await conn.execute(text("SELECT 1"))
            held = writer.conn
            assert held is not None and (tmp_path / "db" / "l.db-wal").exists()  # no close: no checkpoint
        (tmp_path / "db").rename(tmp_path / "away")
        with pytest.raises(Exception) as away:
            async with writer.begin() as conn:
                await conn.execute(text("SELECT 1"))
        assert is_unavailable(away.value) and writer.conn is None
        (tmp_path / "away").rename(tmp_path / "db")
        async with writer.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM usage_records"))).scalar_one() == 0
        assert writer.conn is not None and writer.conn is not held
    finally:
        await writer.close()
        await engine.dispose()


async def test_the_writer_drops_a_connection_to_a_replaced_file(tmp_path: Path) -> None:
    url = await _migrated(tmp_path / "l.db")
    engine = create_engine(url)
    writer = WriterConnection(engine)
    try:
        async with writer.begin() as conn:
            await conn.execute(text("SELECT 1"))
        first = writer.conn
        await _migrated(tmp_path / "other.db")
        (tmp_path / "other.db").replace(tmp_path / "l.db")
        async with writer.begin() as conn:
            await conn.execute(text("SELECT 1"))
        assert writer.conn is not None and writer.conn is not first
    finally:
        await writer.close()
        await engine.dispose()


def test_entries_are_decoded_whatever_the_client_returns() -> None:
    raw = [
        (b"1-0", {b"request_id": b"r1", b"charge": b"3"}),
        (b"2-0", None),  # deleted meanwhile
        ("3-0", {"request_id": "r3", b"charge": b"5"}),
    ]
    entries = entries_of("s", raw)
    assert [(e.id, dict(e.fields)) for e in entries] == [
        ("1-0", {"request_id": "r1", "charge": "3"}),
        ("3-0", {"request_id": "r3", "charge": "5"}),
    ]


def test_events_parse_the_same_from_text_bytes_or_both() -> None:
    event = UsageEvent("r", "a", "k", "m", "c", "e", 1, 2, 0, 5, "ok", "upstream", True, 10, 20, "g1:5")
    fields = event.to_fields()
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    mixed = {**{k: v for k, v in list(fields.items())[:5]}, **dict(list(as_bytes.items())[5:])}
    for form in (fields, as_bytes, mixed, {**fields, "epoch": "3"}):
        assert UsageEvent.from_fields(form) == event
    without = {k: v for k, v in fields.items() if k != "grants"}
    assert UsageEvent.from_fields(without).grants == ""
    with pytest.raises(ValueError, match="lacks field 'charge'"):
        UsageEvent.from_fields({k: v for k, v in fields.items() if k != "charge"})
    with pytest.raises(ValueError, match="stream must be 0 or 1"):
        UsageEvent.from_fields({**fields, "stream": "yes"})
    with pytest.raises(ValueError, match="invalid literal"):  # charge comes before stream
        UsageEvent.from_fields({**fields, "stream": "yes", "charge": "x"})


async def test_entries_of_several_streams_are_acknowledged_together(billing: Billing, redis: Redis) -> None:
    payers = []
    while len({keyspace.shard_of(p.account_id) for p in payers}) < 3:
        payers.append(await funded(billing, [Pack(100)]))
    streams = UsageStreams(redis, new_id("acker"))
    await streams.ensure_group()
    await drain(billing, redis)  # what earlier tests left: else ours may be past the first read
    for who in payers:
        await append(redis, event_for(who, 1))
    mine = {p.account_id for p in payers}
    taken = [e for e in await streams.read(1000, 0) if e.fields["account_id"] in mine]
    assert len(taken) == len(payers)
    await streams.ack(taken)
    for stream in {e.stream for e in taken}:
        pending = await redis.xpending_range(
            stream, BILLING_GROUP, min="-", max="+", count=100, consumername=streams.consumer
        )
        assert pending == []

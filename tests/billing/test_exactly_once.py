"""Exactly once: 10,000 usage events, each appended twice, consumed by billing worker
processes that are SIGKILLed at random points and restarted (sometimes two at once). The
ledger ends with exactly 10,000 usage records whose sums match the events."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from billing.db.schema import grants, ledger_legs, usage_records
from billing.service import Billing
from billing.streams import backlog
from gateway import keyspace
from gateway.quota.keys import dead_letter_key
from gateway.usage import UsageEvent
from tests.redis_servers import RedisServer, redis_server
from tests.support.processes import start_billing_worker

from .helpers import ManualClock, Pack, funded, wait_for

EVENTS = 10_000
ACCOUNTS = 16
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def start_worker(redis_url: str, ledger_url: str, log: Path) -> subprocess.Popen[bytes]:
    return start_billing_worker(
        redis_url, ledger_url, log, "--claim-idle-ms", "300", "--block-ms", "100", "--batch", "250"
    )


def make_events(accounts: list[tuple[str, str, str]], rng: random.Random) -> list[UsageEvent]:
    events = []
    for i in range(EVENTS):
        account, key, grant = accounts[i % len(accounts)]
        prompt, completion = rng.randint(0, 50), rng.randint(0, 50)
        charge = prompt + 2 * completion
        events.append(
            UsageEvent(
                request_id=f"eo-{i}-{rng.getrandbits(32):08x}",
                account_id=account,
                key_id=key,
                model="m",
                cluster="c",
                endpoint="e",
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=0,
                charge=charge,
                status=rng.choice(["ok", "partial", "client_gone"]),
                counted_by="upstream",
                stream=bool(i % 2),
                started_at_ms=1_700_000_000_000 + i,
                finished_at_ms=1_700_000_000_500 + i,
                grants=f"{grant}:{charge}" if charge else "",
            )
        )
    return events


async def append_all(redis: Redis, events: list[UsageEvent]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            stream = keyspace.usage_stream_key(keyspace.shard_of(event.account_id))
            pipe.xadd(stream, event.to_fields())  # type: ignore[arg-type]
        await pipe.execute()


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def test_killed_workers_record_every_event_exactly_once(
    ledger_url: str, own_redis: RedisServer, tmp_path: Path
) -> None:
    async with Redis(port=own_redis.port) as redis:
        billing = Billing.build(ledger_url, redis, ManualClock())
        try:
            await _exactly_once(billing, redis, own_redis, tmp_path, ledger_url)
        finally:
            await billing.close()


async def _exactly_once(
    billing: Billing, redis: Redis, own_redis: RedisServer, tmp_path: Path, ledger_url: str
) -> None:
    rng = random.Random(4)
    accounts = []
    for _ in range(ACCOUNTS):
        who = await funded(billing, [Pack(10**9)])
        accounts.append((who.account_id, who.key_id, who.grants[0]["id"]))
    events = make_events(accounts, rng)
    copies = events + rng.sample(events, len(events))  # every event twice, the copy later
    log = tmp_path / "workers.log"
    await append_all(redis, copies[: len(copies) // 2])

    workers: list[subprocess.Popen[bytes]] = []
    ids = [a for a, _, _ in accounts]
    progress = []
    try:
        for round_ in range(6):
            started = log.read_text().count("started") if log.exists() else 0
            workers = [start_worker(own_redis.url, ledger_url, log) for _ in range(1 + round_ % 2)]
            expected = started + len(workers)
            await wait_for(lambda n=expected: _started(log, n), timeout=60)  # type: ignore[misc]
            if round_ == 2:
                await append_all(redis, copies[len(copies) // 2 :])
            await _until_some_work_is_done(redis, rng)  # a random point of the work
            for worker in workers:
                kill(worker)
            progress.append((await _count(billing, ids), await backlog(redis)))
        workers = [start_worker(own_redis.url, ledger_url, log)]
        await wait_for(lambda: _drained(redis, workers[0], log), timeout=180)
    finally:
        for worker in workers:
            kill(worker)

    async with billing.engine.connect() as conn:
        n, charged = (
            await conn.execute(
                select(func.count(), func.sum(usage_records.c.charge)).where(
                    usage_records.c.account_id.in_(ids)
                )
            )
        ).one()
        debited = (
            await conn.execute(
                select(func.sum(ledger_legs.c.amount)).where(
                    ledger_legs.c.account_id.in_(ids), ledger_legs.c.book == "usage"
                )
            )
        ).scalar()
        left = (
            await conn.execute(select(func.sum(grants.c.remaining)).where(grants.c.account_id.in_(ids)))
        ).scalar()
    total = sum(e.charge for e in events)
    assert (n, charged, debited) == (EVENTS, total, total)
    assert left == ACCOUNTS * 10**9 - total
    for shard in range(keyspace.USAGE_SHARDS):
        assert await redis.xlen(dead_letter_key(shard)) == 0
    killed_midway = [p for p in progress if p[1] > 0]
    assert len(killed_midway) >= 3, progress  # killed with work left, more than once


async def _until_some_work_is_done(redis: Redis, rng: random.Random) -> None:
    """Wait a random time (20-500 ms), cut short once a random share (2-30%) of the backlog
    is recorded, so that the kill lands with work left however fast the workers are."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + rng.uniform(0.02, 0.5)
    left = await backlog(redis) * (1 - rng.uniform(0.02, 0.3))
    while loop.time() < deadline and await backlog(redis) > left:
        await asyncio.sleep(0.005)


async def _started(log: Path, count: int) -> bool:
    return log.exists() and log.read_text().count("started") >= count


async def _count(billing: Billing, ids: list[str]) -> int:
    async with billing.engine.connect() as conn:
        n = (
            await conn.execute(
                select(func.count()).select_from(usage_records).where(usage_records.c.account_id.in_(ids))
            )
        ).scalar()
    return int(n or 0)


async def _drained(redis: Redis, worker: subprocess.Popen[bytes], log: Path) -> bool:
    assert worker.poll() is None, log.read_text()[-3000:]
    return await backlog(redis) == 0

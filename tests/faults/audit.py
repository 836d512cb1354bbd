"""The money audit run after every fault scenario, once the system has settled:

* every request a client saw served has exactly one usage record (the ledger's primary key
  makes it at most one; the audit checks it is there);
* nothing stays reserved (leases of dead gateways expired and were settled by the reaper),
  and the billing worker set no usage aside (no dead letters);
* each account's usage charges equal the ledger's debits, and Redis's balance equals the
  ledger's figures;
* purchased = available + reserved + spent + expired, in Redis and in the ledger;
* every record bills at most what the upstreams generated for it, and a request a client saw
  is billed at least what that client received (less ``short_by`` tokens where the scenario
  allows it: a gateway killed mid-stream had checkpointed up to a second before).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from sqlalchemy import select

from billing.clock import wall_ms
from billing.db.schema import usage_records
from billing.ledger import ledger_balance, ledger_grants
from billing.service import Billing
from billing.streams import backlog
from gateway.keyspace import USAGE_SHARDS
from gateway.quota.keys import dead_letter_key
from gateway.state import RedisClient
from tests.billing.helpers import ManualClock
from tests.faults.stack import FaultStack
from tests.faults.traffic import Seen


@dataclass(frozen=True)
class Billed:
    request_id: str
    account_id: str
    completion_tokens: int
    charge: int
    status: str


async def audit(stack: FaultStack, accounts: list[str], seen: list[Seen], *, short_by: int = 0,
                timeout: float = 60.0) -> dict[str, Billed]:
    """Wait until nothing is reserved or waiting for the ledger, then check the money (see
    the module); the usage records of ``accounts`` by request id."""
    async with stack.connect() as redis:
        billing = Billing.build(stack.database_url, redis, ManualClock())
        try:
            await _settled(billing, redis, accounts, timeout)
            dead = [await redis.xlen(dead_letter_key(shard)) for shard in range(USAGE_SHARDS)]
            assert not any(dead), f"usage dead-lettered by the billing worker: {dead}"
            records = await _records(billing, accounts)
            for account in accounts:
                await _balances(billing, account, [r for r in records.values() if r.account_id == account])
        finally:
            await billing.close()
    _bills(records, seen, stack.generated(), short_by)
    return records


async def _settled(billing: Billing, redis: RedisClient, accounts: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        waiting = await backlog(redis)
        reserved = {a: (await billing.store.balance(a))["reserved"] for a in accounts}
        if waiting == 0 and not any(reserved.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled after {timeout} s: {waiting} usage events waiting, "
                                 f"reserved {reserved}")
        await asyncio.sleep(0.2)


async def _records(billing: Billing, accounts: list[str]) -> dict[str, Billed]:
    columns = (usage_records.c.request_id, usage_records.c.account_id, usage_records.c.completion_tokens,
               usage_records.c.charge, usage_records.c.status)
    async with billing.engine.connect() as conn:
        rows = await conn.execute(select(*columns).where(usage_records.c.account_id.in_(accounts)))
        return {row[0]: Billed(*row) for row in rows}


async def _balances(billing: Billing, account: str, records: list[Billed]) -> None:
    async with billing.engine.connect() as conn:
        ledger = ledger_balance(await ledger_grants(conn, [account]), wall_ms())
    redis_side = await billing.store.balance(account)
    for figures in (ledger, redis_side):
        assert figures["purchased"] == (figures["available"] + figures["reserved"] + figures["spent"]
                                        + figures["expired"]), figures
    assert ledger["spent"] == sum(r.charge for r in records), (ledger, len(records))
    assert redis_side == ledger, (redis_side, ledger)


def _bills(records: dict[str, Billed], seen: list[Seen], generated: dict[str, int], short_by: int) -> None:
    served = [s for s in seen if s.status == 200]
    missing = [s.request_id for s in served if s.request_id not in records]
    assert not missing, f"{len(missing)} served requests without a usage record: {missing[:5]}"
    over = {r.request_id: (r.completion_tokens, generated.get(r.request_id, 0)) for r in records.values()
            if r.completion_tokens > generated.get(r.request_id, 0)}
    assert not over, f"billed more than generated (billed, generated): {list(over.items())[:5]}"
    short = {s.request_id: (records[s.request_id].completion_tokens, s.received) for s in served
             if records[s.request_id].completion_tokens < s.received - short_by}
    assert not short, f"billed < received (billed, received; {short_by} allowed): {list(short.items())[:5]}"

"""No overdraft under a race: many tasks in several processes admit against one balance."""

from __future__ import annotations

import asyncio
import multiprocessing
import random

import pytest

from gateway.quota import QuotaStore

from . import race_worker
from .helpers import BACKENDS, connect, funded_key, server_nodes, settle, usage_events

N = 20  # requests the account can pay for
PROCESSES = 3
PER_WORKER = 10 * N // (PROCESSES + 1)  # 10 x N admissions in all, the test's own included
COST = 10 + 2 * 10  # 10 prompt tokens at 1 credit, 10 max_tokens at 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", BACKENDS)
async def test_exactly_the_funded_requests_are_admitted(
    kind: str, request: pytest.FixtureRequest
) -> None:
    nodes = server_nodes(kind, request)
    client = connect(kind, nodes)
    store = QuotaStore(client, timeout_s=None)
    account, key = await funded_key(store, N * COST)

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES + 1), ctx.Queue()
    workers = []
    for w in range(PROCESSES):
        ids = [f"p{w}-{i}" for i in range(PER_WORKER)]
        job = {"account": account, "key": key, "ids": ids, "barrier": barrier, "results": results}
        workers.append(ctx.Process(target=race_worker.run, args=(kind, nodes, job)))
    for proc in workers:
        proc.start()
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, barrier.wait, 30)
        own = await race_worker.admit_many(
            store, account, key, [f"t-{i}" for i in range(PER_WORKER)]
        )
        theirs = [await loop.run_in_executor(None, results.get, True, 30) for _ in workers]
    finally:
        for proc in workers:
            proc.join(timeout=30)
    assert all(isinstance(r, list) for r in theirs), theirs
    admitted = own + [rid for r in theirs for rid in r]
    assert len(admitted) == N
    bal = await store.balance(account)
    assert (bal["reserved"], bal["available"]) == (N * COST, 0)

    rng = random.Random(7)
    for rid in admitted:  # usage up to twice the reservation: charges are capped
        await settle(
            store, account, key, rid, prompt=rng.randint(0, 20), completion=rng.randint(0, 20)
        )
    after = await store.balance(account)
    events = await usage_events(client, account)
    assert sorted(e.request_id for e in events) == sorted(admitted)
    assert after["reserved"] == 0
    assert after["spent"] <= after["purchased"]
    assert (
        sum(e.charge for e in events)
        == after["spent"]
        == bal["available"] + N * COST - after["available"]
    )
    await client.aclose()

"""Redis killed (with AOF and without), flushed, and slowed under load: admission fails
closed while Redis cannot answer, nothing is served blind, and the audit holds after."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.faults.audit import audit
from tests.faults.stack import AOF, SOAK, FaultStack, fault_stack
from tests.faults.traffic import Traffic

pytestmark = pytest.mark.timeout(240 + 3 * SOAK)


async def test_redis_killed_with_aof_comes_back_with_everything(tmp_path: Path) -> None:
    with fault_stack(tmp_path, redis_args=AOF) as stack:
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        await traffic.wait_served(10)
        stack.server.stop()  # SIGKILL
        await asyncio.sleep(1.0)
        stack.server.start(stack.server.port)  # the same directory: AOF replayed
        await traffic.wait_served(10, after=time.monotonic())
        await asyncio.sleep(SOAK)
        seen = await traffic.stop()
        await audit(stack, [account], seen)


async def test_redis_killed_without_aof_fails_closed_until_reconcile(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as stack:
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        await traffic.wait_served(10)
        stack.server.stop()
        await asyncio.sleep(1.0)
        stack.server.start(stack.server.port)  # empty: balances, reservations, streams gone
        await _rebuilt_by_reconcile(stack, traffic)
        seen = await traffic.stop()
        await audit(stack, [account], seen)


async def test_flushall_under_load_fails_closed_until_reconcile(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as stack:
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        await traffic.wait_served(10)
        async with stack.connect() as redis:
            await redis.flushall()
        await _rebuilt_by_reconcile(stack, traffic)
        seen = await traffic.stop()
        await audit(stack, [account], seen)


async def _rebuilt_by_reconcile(stack: FaultStack, traffic: Traffic) -> None:
    """After Redis lost its data: nothing admitted until reconcile rebuilt the balances from
    the ledger (the gateways replay the usage Redis lost meanwhile), served again after."""
    lost = time.monotonic()
    await asyncio.sleep(1.5)
    rebuilding = time.monotonic()
    await asyncio.to_thread(stack.reconcile)
    await traffic.wait_served(10, after=time.monotonic())
    await asyncio.sleep(SOAK)
    blind = [s for s in traffic.seen if lost + 0.2 < s.started < rebuilding and s.status == 200]
    assert not blind, blind  # admitted against a balance Redis no longer had


async def test_a_slow_redis_slows_admission_and_loses_nothing(tmp_path: Path) -> None:
    """The gateways reach Redis through a proxy of ours: 50 ms each way, then longer than the
    gateways' Redis timeout (2 s: they fail closed, and settlements whose answer came too late
    are retried, once), then fast again."""
    with fault_stack(tmp_path, slow_redis=True) as stack:
        assert stack.proxy is not None
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        await traffic.wait_served(5)
        stack.proxy.delay = 0.05
        await traffic.wait_served(5, after=time.monotonic())
        stack.proxy.delay = 2.5
        await asyncio.sleep(4.0)
        stack.proxy.delay = 0.0
        await traffic.wait_served(10, after=time.monotonic() + 3)
        await asyncio.sleep(SOAK)
        seen = await traffic.stop()
        assert {s.status for s in seen} & {503, 0}  # some were refused while Redis was too slow
        await audit(stack, [account], seen)

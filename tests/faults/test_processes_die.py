"""A data plane or the billing worker SIGKILLed under load: the audit holds."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from tests.faults.audit import audit
from tests.faults.stack import ITL_MS, SOAK, fault_stack
from tests.faults.traffic import Traffic

pytestmark = pytest.mark.timeout(240 + 3 * SOAK)


async def test_a_gateway_killed_with_live_streams_bills_what_its_clients_received(tmp_path: Path) -> None:
    """Streams break off when their data plane dies; another's reaper settles them once their
    lease passes, for what the dead one had checkpointed: at most a second (the progress
    interval) short of what each client received. The lease here is renewed only every 3 s, so
    without the progress checkpoints the streams killed at 2.5 s would be billed nothing."""
    with fault_stack(tmp_path) as stack:
        doomed = stack.add_gateway(TOKENGATE_LEASE_SECONDS="9")
        account, key = stack.fund()
        traffic = Traffic(doomed.base, key, clients=8, streams=1.0, max_tokens=(150, 200)).start()
        await asyncio.sleep(2.5 + SOAK)
        stack.kill_gateway(doomed)
        seen = await traffic.stop()
        second = math.ceil(1500 / ITL_MS)  # tokens in the progress interval, and some slack
        records = await audit(stack, [account], seen, short_by=second)
        broken = [records[s.request_id] for s in seen if s.status == 200 and s.request_id in records
                  and records[s.request_id].status == "expired"]
        assert len(broken) >= 4, [s for s in seen if s.status == 200]
        assert all(r.completion_tokens > 0 for r in broken), broken


async def test_the_billing_worker_killed_mid_batch_loses_and_doubles_nothing(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as stack:
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        for _ in range(3):
            await asyncio.sleep(1.0 + SOAK / 3)
            stack.kill_worker()
            await asyncio.sleep(0.5)
            stack.start_worker()
        seen = await traffic.stop()
        records = await audit(stack, [account], seen)
        assert len(records) >= 20

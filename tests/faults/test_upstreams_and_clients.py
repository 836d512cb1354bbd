"""Upstreams failing (before the first byte, mid-stream, hanging) and clients leaving at
random points, under load: every request is billed for what was generated, no more, and at
least what its client received."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.audit import audit
from tests.faults.stack import MODEL, SOAK, fault_stack
from tests.faults.traffic import Traffic

pytestmark = pytest.mark.timeout(240 + 3 * SOAK)

FAULTS = [
    {"mode": "error_before", "status": 500},  # dies before the first byte: the other endpoint
    {"mode": "reset_after", "after_tokens": 5},  # dies mid-answer
    {"mode": "hang"},  # never answers: the first-byte timeout (2 s)
]


async def test_upstreams_dying_and_hanging(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as stack:
        account, key = stack.fund()
        traffic = Traffic(stack.gateway.base, key, clients=6).start()
        await traffic.wait_served(5)
        for fault in FAULTS:
            stack.sims.set_fault(0, **fault)
            await asyncio.sleep(3.0 + SOAK / 3)
            stack.sims.clear_faults()
            await asyncio.sleep(0.5)
        seen = await traffic.stop()
        records = await audit(stack, [account], seen)
        statuses = {r.status for r in records.values()}
        assert "upstream_error" in statuses or "partial" in statuses, statuses
        with stack.gateway.client(key) as client:  # an ordinary request right after is served
            answer = client.post("/v1/chat/completions", json={
                "model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200, answer.text


async def test_clients_leaving_at_random_points(tmp_path: Path) -> None:
    with fault_stack(tmp_path) as stack:
        account, key = stack.fund()
        seen = await Traffic(stack.gateway.base, key, clients=8, leave=0.5).run_for(5.0 + SOAK)
        records = await audit(stack, [account], seen)
        assert sum(s.left for s in seen) >= 10
        assert any(r.status == "client_gone" for r in records.values())

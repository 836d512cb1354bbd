"""Replicas on a real 3-master Redis Cluster and PostgreSQL: two gateways of two data-plane
processes each (four in all) and two control planes. Limits and balances hold exactly across
them (never N x a limit), and a data-plane process SIGKILLed under load leaves the audit
clean."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.audit import audit
from tests.faults.stack import MODEL, SOAK, FaultStack, fault_stack, own_postgres
from tests.faults.traffic import Traffic
from tests.redis_servers import redis_cluster
from tests.support.processes import Gateway

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300 + 3 * SOAK)]

WORKERS = 2  # data-plane processes per gateway


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    with redis_cluster(3) as cluster, own_postgres() as postgres:
        host, port = cluster.startup_nodes[0]
        with fault_stack(tmp_path_factory.mktemp("replicas"), database_url=postgres.url, redis_url=f"redis+cluster://{host}:{port}",
                         workers=WORKERS) as stack:
            stack.add_gateway(WORKERS)
            yield stack


async def test_limits_and_credits_hold_exactly_across_replicas(replicas: FaultStack) -> None:
    stack = replicas
    urls = [g.base for g in stack.gateways]
    # RPM: 20 a minute for the key, whichever of the four processes each request reaches
    account, key = stack.fund(rpm=20)
    statuses = Counter(await asyncio.gather(*(_chat(urls[i % 2], key) for i in range(60))))
    assert statuses == {200: 20, 429: 40}, statuses
    # Credits: a small balance drained from every process at once never goes below zero
    poor, poor_key = stack.fund(credits=3_000)
    drained = Counter(await asyncio.gather(*(_chat(urls[i % 2], poor_key) for i in range(80))))
    assert drained[200] > 0 and drained[402] > 0, drained
    await audit(stack, [account, poor], [])
    balance = stack.gateway.balance(poor)
    assert balance["available"] >= 0 and balance["spent"] <= 3_000, balance


async def test_a_replica_killed_under_load_leaves_the_audit_clean(replicas: FaultStack) -> None:
    stack = replicas
    account, key = stack.fund()
    traffics = [Traffic(g.base, key, clients=4, seed=i).start() for i, g in enumerate(stack.gateways)]
    await traffics[0].wait_served(10)
    victim = _data_plane_processes(stack.gateways[0])[0]
    os.kill(victim, signal.SIGKILL)  # one of gateway 0's two processes, streams and all
    await asyncio.sleep(2.0 + SOAK)
    seen = [s for t in traffics for s in await t.stop()]
    await audit(stack, [account], seen, short_by=75)


async def _chat(base: str, key: str) -> int:
    """One request on a new connection (so the kernel spreads them over the processes)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        answer = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": MODEL, "max_tokens": 8,
                                         "messages": [{"role": "user", "content": "hi"}]})
    return answer.status_code


def _data_plane_processes(gateway: Gateway) -> list[int]:
    """The worker processes of a ``tokengate serve --workers N`` (its supervisor's children)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == gateway.process.pid:
                children.append(int(entry))
    assert len(children) >= WORKERS, children
    return sorted(children)

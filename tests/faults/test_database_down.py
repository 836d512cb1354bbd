"""The ledger's database down under load: the data plane keeps serving from Redis, the usage
waits in the streams, and once the database is back the worker records all of it, once.

PostgreSQL is a server of the scenario's own, stopped for a minute; SQLite's file is made
unreachable for a while."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from billing.streams import backlog
from tests.faults.audit import audit
from tests.faults.stack import SOAK, FaultStack, fault_stack, own_postgres
from tests.faults.traffic import Traffic

# A minute, as the suite promises; shorter for a quick local run.
DOWN = float(os.environ.get("TOKENGATE_FAULT_DB_DOWN_SECONDS", "60")) + SOAK

pytestmark = pytest.mark.timeout(240 + 2 * DOWN)


async def test_postgresql_down_for_a_minute(tmp_path: Path) -> None:
    with own_postgres() as server, fault_stack(tmp_path, database_url=server.url) as stack:
        await _down_for(stack, DOWN, server.stop, server.start)


async def test_the_sqlite_file_unreachable_for_a_while(tmp_path: Path) -> None:
    """The worker restarted meanwhile must hold the usage, not make a new, empty ledger."""
    folder = tmp_path / "ledger"
    folder.mkdir()
    away = tmp_path / "ledger.away"
    with fault_stack(tmp_path, database_url=f"sqlite:///{folder / 'l.db'}") as stack:

        def go_away() -> None:
            folder.rename(away)
            stack.kill_worker()
            stack.start_worker()

        await _down_for(stack, 10 + SOAK, go_away, lambda: away.rename(folder))


async def _down_for(stack: FaultStack, seconds: float, stop: object, start: object) -> None:
    assert callable(stop) and callable(start)
    account, key = stack.fund()
    traffic = Traffic(stack.gateway.base, key, clients=4).start()
    await traffic.wait_served(5)
    await asyncio.to_thread(stop)
    down = time.monotonic()
    try:
        await traffic.wait_served(20, after=down + 0.5)  # still served, from Redis's balance
        with stack.gateway.admin() as admin:  # the ledger's reads say it is away
            assert admin.get(f"/admin/accounts/{account}/usage").status_code == 503
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - down)))
        async with stack.connect() as redis:
            assert await backlog(redis) >= 20  # the usage waits in the streams
        with stack.gateway.admin() as admin:  # and the operator sees it waiting
            gauges = _gauges(admin.get("/admin/metrics").raise_for_status().text)
        assert gauges["tokengate_ledger_up"] == 0 and gauges["tokengate_usage_backlog"] >= 20, gauges
    finally:
        await asyncio.to_thread(start)
    await traffic.wait_served(5, after=time.monotonic())
    seen = await traffic.stop()
    await audit(stack, [account], seen, timeout=120)
    with stack.gateway.admin() as admin:
        gauges = _gauges(admin.get("/admin/metrics").raise_for_status().text)
    assert gauges["tokengate_ledger_up"] == 1 and gauges["tokengate_usage_backlog"] == 0, gauges
    assert gauges["tokengate_usage_dead_letters"] == 0, gauges


def _gauges(text: str) -> dict[str, float]:
    """The unlabelled gauges of a Prometheus text exposition."""
    return {name: float(value) for name, _, value in
            (line.partition(" ") for line in text.splitlines() if line and not line.startswith("#"))
            if "{" not in name}

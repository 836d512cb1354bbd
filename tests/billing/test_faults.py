"""Faults through the whole system (real gateway, simulator, billing worker, Redis, SQL):

* the database down for a while: the gateway keeps serving from Redis, the backlog grows,
  and it drains completely when the database returns (SQLite: the file made unreachable;
  PostgreSQL: a server of the test's own, stopped and started);
* Redis FLUSHALL during traffic: requests fail closed until reconcile rebuilds; then the
  balances equal the ledger and every request served has its usage record.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from billing.db.schema import usage_records
from billing.service import Billing
from billing.streams import backlog
from tests.redis_servers import RedisServer, redis_server

from .helpers import ManualClock, ledger_figures, wait_for
from .procs import (
    Gateway,
    PostgresServer,
    billing_command,
    reconcile,
    start_gateway,
    start_sim,
    start_worker,
    stop_process,
    write_config,
)

pytestmark = pytest.mark.timeout(240)


@dataclass
class Stack:
    redis_server: RedisServer
    database_url: str
    gateway: Gateway
    tmp: Path
    processes: list = field(default_factory=list)  # type: ignore[type-arg]

    def fund(self, credits: int = 10**6) -> tuple[str, str]:
        """(account id, key) bought through the admin API."""
        with self.gateway.admin() as admin:
            account = admin.post("/admin/accounts", json={"name": "f"}).raise_for_status().json()
            package = (
                admin.post("/admin/packages", json={"name": "p", "credits": credits, "valid_days": 30})
                .raise_for_status()
                .json()
            )
            admin.post(
                f"/admin/accounts/{account['id']}/purchases",
                json={"package_id": package["id"], "order_id": "o-" + account["id"]},
            ).raise_for_status()
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k"})
        return account["id"], key.raise_for_status().json()["key"]


def build_stack(tmp: Path, database_url: str) -> Iterator[Stack]:
    with redis_server() as server:
        sim, port = start_sim(tmp / "sim.log")
        processes = [sim]
        try:
            config = write_config(tmp / "models.yaml", port)
            gateway = start_gateway(config, server.url, database_url, tmp / "gateway.log")
            processes += [gateway.control_process, gateway.process]  # stopped data plane first
            processes.append(start_worker(server.url, database_url, tmp / "worker.log"))
            yield Stack(server, database_url, gateway, tmp, processes)
        finally:
            for process in reversed(processes):
                stop_process(process)


async def recorded(database_url: str, redis: Redis, request_ids: list[str]) -> set[str]:
    billing = Billing.build(database_url, redis, ManualClock())
    try:
        async with billing.engine.connect() as conn:
            rows = await conn.execute(
                select(usage_records.c.request_id).where(usage_records.c.request_id.in_(request_ids))
            )
            return {row[0] for row in rows}
    finally:
        await billing.close()


async def balances_agree(database_url: str, redis: Redis, account_id: str) -> dict[str, int]:
    billing = Billing.build(database_url, redis, ManualClock())
    try:
        redis_side = await billing.store.balance(account_id)
        assert redis_side == await ledger_figures(billing, account_id)
        return redis_side
    finally:
        await billing.close()


@pytest.fixture(params=["sqlite", "postgres"])
def down_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Stack, object]]:
    """A stack whose database the test can take away: a SQLite directory, or its own server."""
    if request.param == "sqlite":
        folder = tmp_path / "ledger"
        yield from ((s, folder) for s in build_stack(tmp_path, f"sqlite:///{folder / 'l.db'}"))
        return
    try:
        server = PostgresServer().init()
    except (FileNotFoundError, KeyError, OSError) as error:
        pytest.skip(f"cannot run a PostgreSQL server of our own: {error}")
    try:
        migrated = billing_command("redis://127.0.0.1:1/0", server.url, "migrate")
        assert migrated.returncode == 0, migrated.stderr
        yield from ((s, server) for s in build_stack(tmp_path, server.url))
    finally:
        server.cleanup()


async def test_the_database_down_for_a_while(down_stack: tuple[Stack, object]) -> None:
    stack, database = down_stack
    async with Redis(port=stack.redis_server.port) as redis:
        await _database_down(stack, database, redis)


async def _database_down(stack: Stack, database: object, redis: Redis) -> None:
    account, key = stack.fund()
    served = [stack.gateway.chat(key).raise_for_status().headers["x-request-id"] for _ in range(10)]
    await wait_for(lambda: _none_waiting(redis), 30)

    away = None
    if isinstance(database, PostgresServer):
        database.stop()
    else:
        away = Path(str(database) + ".away")
        Path(str(database)).rename(away)  # the file is unreachable
    try:
        for _ in range(30):  # still served, from the Redis balance
            served.append(stack.gateway.chat(key).raise_for_status().headers["x-request-id"])
        with stack.gateway.admin() as admin:
            assert admin.get(f"/admin/accounts/{account}/usage").status_code == 503
        await asyncio.sleep(1.0)
        assert await backlog(redis) >= 30  # the usage waits in the streams
    finally:
        if isinstance(database, PostgresServer):
            database.start()
        elif away is not None:
            away.rename(Path(str(database)))
    await wait_for(lambda: _none_waiting(redis), 90)
    assert await recorded(stack.database_url, redis, served) == set(served)
    bal = await balances_agree(stack.database_url, redis, account)
    assert bal["spent"] > 0 and bal["reserved"] == 0


async def _none_waiting(redis: Redis) -> bool:
    return await backlog(redis) == 0


@dataclass
class Traffic:
    """Requests sent one after another from a thread, with their start time and answer."""

    gateway: Gateway
    key: str
    results: list[tuple[float, int, str]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                answer = self.gateway.chat(self.key)
                self.results.append((started, answer.status_code, answer.headers.get("x-request-id", "")))
            except Exception:  # a connection error is no answer: not served
                self.results.append((started, 0, ""))


@pytest.fixture
def stack(ledger_url: str, tmp_path: Path) -> Iterator[Stack]:
    yield from build_stack(tmp_path, ledger_url)


async def test_flushall_during_traffic_fails_closed_until_reconcile(stack: Stack) -> None:
    async with Redis(port=stack.redis_server.port) as redis:
        await _flushall(stack, redis)


async def _flushall(stack: Stack, redis: Redis) -> None:
    account, key = stack.fund()
    streams = [Traffic(stack.gateway, key) for _ in range(3)]
    threads = [threading.Thread(target=t.run) for t in streams]
    for thread in threads:
        thread.start()
    try:
        await wait_for(lambda: _answered(streams, 200, 30), 30)
        await redis.flushall()
        flushed = time.monotonic()
        await asyncio.sleep(1.5)  # refused meanwhile; the gateways replay what Redis lost
        rebuilt = time.monotonic()
        done = reconcile(stack.redis_server.url, stack.database_url, "--grace", "0.5")
        assert done.returncode == 0, done.stdout + done.stderr
        repaired = time.monotonic()
        await wait_for(lambda: _answered(streams, 200, 3, after=repaired), 30)
    finally:
        for t in streams:
            t.stopping.set()
        for thread in threads:
            thread.join(timeout=30)
    results = [r for t in streams for r in t.results]
    # admitted before the flush may finish after it; nothing started later was served
    blind = [r for r in results if flushed + 0.2 < r[0] < rebuilt and r[1] == 200]
    assert not blind, blind
    assert {r[1] for r in results if flushed + 0.2 < r[0] < rebuilt} <= {0, 401, 503}  # 0: no answer
    served = [r[2] for r in results if r[1] == 200]
    await wait_for(lambda: _none_waiting(redis), 60)
    assert await recorded(stack.database_url, redis, served) == set(served)
    await balances_agree(stack.database_url, redis, account)


async def _answered(streams: list[Traffic], status: int, count: int, after: float = 0.0) -> bool:
    return sum(1 for t in streams for r in list(t.results) if r[1] == status and r[0] >= after) >= count

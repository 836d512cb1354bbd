"""The reservation a request holds, against real Redis: its renewals checkpoint what the relay
reports, it settles exactly once (in a task drain waits for), and a reservation found gone
tells the relay to stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.auth import KeyRef
from gateway.metrics import GatewayMetrics
from gateway.quota import QuotaStore
from gateway.relay.meter import Usage
from gateway.relay.outcome import Outcome
from gateway.reservation import ReservationDesk
from tests.quota.helpers import admit, funded_key, new_id, settle
from tests.redis_servers import RedisServer
from tests.relay.scripted import MODEL

LEASE_S = 0.3  # renewed every 100 ms


@pytest.fixture
async def store(redis_standalone: RedisServer) -> AsyncIterator[QuotaStore]:
    client = Redis(port=redis_standalone.port)
    yield QuotaStore(client)
    await client.aclose()


def billed(metrics: GatewayMetrics, kind: str) -> float:
    value = metrics.registry.get_sample_value("tokengate_tokens_total", {"model": MODEL.name, "type": kind})
    return value or 0.0


async def test_renewals_checkpoint_progress_and_settlement_happens_once(store: QuotaStore) -> None:
    metrics = GatewayMetrics()
    desk = ReservationDesk(store, metrics, LEASE_S)
    account, key = await funded_key(store, 1000)
    request_id = new_id("req")
    await admit(store, account, key, request_id=request_id, model=MODEL.name, prompt=10, max_tokens=50,
                lease_ms=int(LEASE_S * 1000))
    held = desk.hold(KeyRef(key, account), MODEL, request_id, stream=True)
    held.progress = lambda: (7, 9)  # what a relay's meter reports
    await asyncio.sleep(LEASE_S * 1.5)  # past the lease admission gave: kept alive by renewals
    record = (await store.reservations(account))[request_id]
    assert (record.checkpoint_completion, record.checkpoint_prompt) == (7, 9)
    assert not held.lost

    held.settle(Outcome(Usage(9, 8)))
    held.settle(Outcome(Usage(9, 80)))  # a second end of the same request is ignored
    assert len(desk.settling) == 1
    await desk.drain(5.0)
    assert not desk.settling
    assert request_id not in await store.reservations(account)
    assert (billed(metrics, "prompt"), billed(metrics, "completion")) == (9, 8)
    assert (await store.balance(account))["available"] == 1000 - 9 - 2 * 8


async def test_a_reservation_found_gone_is_lost(store: QuotaStore) -> None:
    desk = ReservationDesk(store, GatewayMetrics(), LEASE_S)
    account, key = await funded_key(store, 1000)
    request_id = new_id("req")
    await admit(store, account, key, request_id=request_id, model=MODEL.name, max_tokens=5)
    held = desk.hold(KeyRef(key, account), MODEL, request_id, stream=False)
    await settle(store, account, key, request_id, 10, 1)  # settled elsewhere (the reaper's, say)
    await asyncio.sleep(LEASE_S / 3 + 0.1)
    assert held.lost  # the relay stops at its next read
    held.settle(Outcome(Usage(10, 1)))
    await desk.drain(5.0)  # a no-op settlement: counted once, by the first
    assert (await store.balance(account))["available"] == 1000 - 10 - 2 * 1

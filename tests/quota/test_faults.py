"""Redis faults: unreachable Redis fails closed; a Redis that lost its data refuses."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.errors import BalanceUnknown, QuotaUnavailable
from gateway.quota import QuotaStore

from .helpers import admit, funded_key, settle

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer


def fail_fast_client(server: RedisServer) -> Redis:
    return Redis(port=server.port, retry=Retry(NoBackoff(), 1), socket_connect_timeout=0.5)


async def test_unreachable_redis_fails_closed(private_redis: RedisServer) -> None:
    client = fail_fast_client(private_redis)
    store = QuotaStore(client)
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, request_id="r1", max_tokens=10)
    private_redis.stop()
    with pytest.raises(QuotaUnavailable) as err:
        await admit(store, account, key, max_tokens=10)
    assert err.value.status == 503 and err.value.headers["Retry-After"] == "1"
    with pytest.raises(QuotaUnavailable):
        await settle(store, account, key, "r1", prompt=10, completion=5)
    with pytest.raises(QuotaUnavailable):
        await store.checkpoint(request_id="r1", account_id=account, key_id=key, completion_tokens=1)
    with pytest.raises(QuotaUnavailable):
        await store.reap(0)
    with pytest.raises(QuotaUnavailable):
        await store.balance(account)
    await client.aclose()


async def test_a_hung_redis_fails_closed_at_the_deadline(private_redis: RedisServer) -> None:
    client = Redis(port=private_redis.port)  # no socket timeout: it would wait forever
    store = QuotaStore(client, timeout_s=0.3)
    account, key = await funded_key(store, 1000)
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)  # accepts connections, never answers
    try:
        started = time.monotonic()
        with pytest.raises(QuotaUnavailable):
            await admit(store, account, key, max_tokens=10)
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    await client.aclose()


async def test_redis_that_lost_its_data_refuses_until_rebuilt(private_redis: RedisServer) -> None:
    client = fail_fast_client(private_redis)
    store = QuotaStore(client)
    account, key = await funded_key(store, 1000)
    await admit(store, account, key, max_tokens=10)
    private_redis.restart()  # no persistence: an empty Redis, without our scripts loaded
    await store.set_key_record(account, key)  # say the key records were rebuilt first
    with pytest.raises(BalanceUnknown):  # the script reloads itself (NOSCRIPT), then refuses
        await admit(store, account, key, max_tokens=10)
    await store.init_balance(account)  # reconcile rebuilds the balance from the ledger
    await store.credit(account, 1000)
    await admit(store, account, key, max_tokens=10)
    await client.aclose()

"""The gateway on a real 3-master Redis Cluster: the same scripts, keys in one slot each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    CHAT_MODEL,
    Gateway,
    Sims,
    openai_client,
    start_gateway,
    usage_events,
)
from tests.redis_servers import RedisClusterServers

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster_gateway(sims: Sims, gateway: Gateway, redis_cluster_servers: RedisClusterServers,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    host, port = redis_cluster_servers.startup_nodes[0]
    tmp = tmp_path_factory.mktemp("cluster-gateway")
    gw = start_gateway(gateway.config, f"redis+cluster://{host}:{port}", Path(tmp / "gw.log"))
    yield gw
    gw.stop()


def test_metered_requests_on_a_redis_cluster(cluster_gateway: Gateway) -> None:
    accounts = [cluster_gateway.new_account(credits=10_000) for _ in range(6)]  # spread over shards
    for _, key in accounts:
        c = openai_client(cluster_gateway.v1, key)
        c.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                  max_tokens=4)
        chunks = list(c.chat.completions.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True))
        assert chunks
    for account, _ in accounts:
        events = usage_events(cluster_gateway.redis_url, account_id=account)
        balance = cluster_gateway.balance(account)
        assert len(events) == 2 and all(e.status == "ok" for e in events)
        assert balance["spent"] == sum(e.charge for e in events) > 0
        assert balance["reserved"] == 0

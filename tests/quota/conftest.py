"""Quota tests run against real Redis: a standalone server and a 3-master Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.quota import QuotaStore
from gateway.quota.scripts import RedisClient

from .helpers import BACKENDS, connect, server_nodes


@pytest.fixture(params=BACKENDS)
async def client(request: pytest.FixtureRequest) -> AsyncIterator[RedisClient]:
    """A client of the session's standalone server or cluster (shared: use fresh ids)."""
    redis = connect(request.param, server_nodes(request.param, request))
    yield redis
    await redis.aclose()


@pytest.fixture
async def store(client: RedisClient) -> QuotaStore:
    return QuotaStore(client)

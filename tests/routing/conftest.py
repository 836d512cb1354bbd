"""Routing tests: pure ones need nothing; live ones start their own simulators and gateway
(see live.py) and use Redis db 3, flushed once per session."""

from __future__ import annotations

import pytest
import redis

from tests.routing.live import redis_url


@pytest.fixture(scope="session")
def routing_redis() -> str:
    url = redis_url()
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url

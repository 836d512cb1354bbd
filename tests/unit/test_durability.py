"""The start-up warning about Redis settings that can lose settled usage."""

from __future__ import annotations

import asyncio

from gateway.durability import check_durability, durability_warning
from gateway.state import connect_redis
from tests.redis_servers import redis_server


def test_only_aof_with_fsync_always_is_durable() -> None:
    assert durability_warning({"appendonly": "yes", "appendfsync": "always"}) is None
    assert "everysec" in (durability_warning({"appendonly": "yes", "appendfsync": "everysec"}) or "")
    assert "without AOF" in (durability_warning({"appendonly": "no"}) or "")


def test_reads_the_settings_of_a_real_redis() -> None:
    async def check(url: str) -> str | None:
        client = connect_redis(url)
        try:
            return await check_durability(client)
        finally:
            await client.aclose()

    with redis_server("--appendonly", "yes", "--appendfsync", "always") as durable:
        assert asyncio.run(check(durable.url)) is None
    with redis_server() as volatile:  # the test servers run without AOF
        assert "without AOF" in (asyncio.run(check(volatile.url)) or "")

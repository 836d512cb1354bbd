"""Billing tests run against real databases and a real Redis.

``ledger_url`` is parametrized: a PostgreSQL database created for the session on the
server at ``TOKENGATE_TEST_PG`` (default: the local one, user postgres; skipped when it
cannot be reached) and dropped at the end, and a SQLite file in a temporary directory.
Both are migrated with the project's Alembic migrations. Tests share them: use fresh
accounts (every helper here makes new ones).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from redis.asyncio import Redis

from billing.db import migrate
from billing.db.engine import create_engine
from billing.service import Billing
from tests.redis_servers import RedisServer

from .helpers import ManualClock

PG_ADMIN = os.environ.get("TOKENGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


async def _pg(sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this session, migrated (skip if no server answers)."""
    name = "tg_test_" + secrets.token_hex(4)
    try:
        asyncio.run(_pg(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {error}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    try:
        asyncio.run(_migrate(url))
        yield url
    finally:
        asyncio.run(_pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    asyncio.run(_migrate(url))
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The session's ledger database, once per backend."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[dict[str, RedisServer]]:
    """One redis-server per ledger backend, so a worker only meets its own ledger's events."""
    servers: dict[str, RedisServer] = {}
    yield servers
    for server in servers.values():
        server.cleanup()


@pytest.fixture
def redis_server(ledger_url: str, redis_servers: dict[str, RedisServer]) -> RedisServer:
    if ledger_url not in redis_servers:
        redis_servers[ledger_url] = RedisServer().start()
    return redis_servers[ledger_url]


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis(port=redis_server.port)
    yield client
    await client.aclose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def billing(ledger_url: str, redis: Redis, clock: ManualClock) -> AsyncIterator[Billing]:
    """Billing on the session's ledger and Redis, with a clock the test moves."""
    built = Billing.build(ledger_url, redis, clock)
    yield built
    await built.close()

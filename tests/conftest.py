"""Fixtures shared by every test package: real Redis servers started by the tests.

The session servers are shared by all tests of a run: use fresh ids (accounts, keys,
requests) and never FLUSHALL them. A test that kills, hangs or empties a server takes
``private_redis``, a server of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:  # tests/ is a package, or the repository root is on sys.path
    from tests.redis_servers import RedisClusterServers, RedisServer, redis_cluster, redis_server
except ModuleNotFoundError:  # pytest put tests/ itself on sys.path
    from redis_servers import (  # type: ignore[no-redef]
        RedisClusterServers,
        RedisServer,
        redis_cluster,
        redis_server,
    )


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[RedisServer]:
    """A redis-server for the whole session (no persistence)."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_servers() -> Iterator[RedisClusterServers]:
    """A 3-master Redis Cluster for the whole session, started on first use."""
    with redis_cluster() as cluster:
        yield cluster


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test alone: stop, restart or SIGSTOP it at will."""
    with redis_server() as server:
        yield server

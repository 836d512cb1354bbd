"""A lean Redis client for the request path: auto-pipelined connections on hiredis,
standalone or Redis Cluster, and Lua scripts run by SHA with a fallback on NOSCRIPT."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlparse

from redis import exceptions as rx
from redis.exceptions import ResponseError

from gateway.redisio.cluster import PipelinedCluster
from gateway.redisio.connection import Arg, PipelinedConnection

__all__ = ["UNAVAILABLE", "FastRedis", "PipelinedCluster", "PipelinedConnection", "Script", "fast_redis"]

# Errors that mean "Redis cannot answer now" (fail closed: 503), as opposed to a bug in a
# command, with redis-py or with this package's clients (which type error replies alike).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # refused, reset, still loading (BusyLoadingError)
    rx.TimeoutError,
    rx.ClusterError,  # CLUSTERDOWN, MASTERDOWN, retries exhausted
    rx.TryAgainError,  # slot migrating
    rx.ReadOnlyError,  # failed over to a replica
    rx.OutOfMemoryError,
    rx.RedisClusterException,  # redis-py's cluster client reaches no node
    OSError,  # TimeoutError included: a per-call deadline
)


class FastRedis(Protocol):
    async def execute(self, *args: Arg) -> Any: ...

    async def execute_keyed(self, key: Arg, *args: Arg) -> Any: ...

    async def aclose(self) -> None: ...


class Script:
    """A Lua script run with EVALSHA, loaded with EVAL when Redis does not know it yet."""

    def __init__(self, source: str) -> None:
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest()

    async def __call__(self, client: FastRedis, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        first = keys[0] if keys else ""
        try:
            return await client.execute_keyed(first, "EVALSHA", self.sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await client.execute_keyed(first, "EVAL", self.source, len(keys), *keys, *args)


def fast_redis(url: str, timeout: float = 2.0) -> FastRedis:
    """The request-path client for ``REDIS_URL`` (``redis+cluster://`` for a cluster)."""
    if url.startswith("redis+cluster://"):
        parts = urlparse(url)
        return PipelinedCluster([(parts.hostname or "127.0.0.1", parts.port or 6379)],
                                username=parts.username, password=parts.password, timeout=timeout)
    return PipelinedConnection.from_url(url, timeout=timeout)

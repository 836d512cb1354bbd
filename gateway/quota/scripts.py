"""The quota Lua scripts, shipped as package files and registered once per client.

Each ``lua/<name>_v<N>.lua`` is one atomic operation; ``lua/lib_v3.lua`` is prepended to
each so that the shared helpers (Redis time, integer formatting, cost, the reservation
record) exist once in the source. A change in behaviour gets a new version in the file
name, so that gateways of two releases never run different code under one name.
redis-py's ``register_script`` runs them with EVALSHA and reloads on NOSCRIPT (a restarted
or failed-over Redis), and routes them by their keys on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Protocol, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from gateway.redisio import FastRedis, Script

RedisClient: TypeAlias = "Redis | RedisCluster"

LIB = "lib_v3"


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (e.g. ``"admit_v4"``), helpers included."""
    lua = resources.files("gateway.quota") / "lua"
    return (lua / f"{LIB}.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class ScriptCall(Protocol):
    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]: ...


class FastScript:
    """A script on the request path, run by the auto-pipelining client (gateway.redisio)."""

    __slots__ = ("_client", "_script")

    def __init__(self, client: FastRedis, text: str) -> None:
        self._client = client
        self._script = Script(text)

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Awaitable[Any]:
        return self._script(self._client, keys, args)  # the coroutine itself: one frame less


@dataclass(frozen=True, slots=True)
class Scripts:
    admit: ScriptCall | AsyncScript
    settle: ScriptCall | AsyncScript
    checkpoint: ScriptCall | AsyncScript
    expired_leases: AsyncScript
    credit: AsyncScript
    balance: AsyncScript
    rebuild: AsyncScript
    replay: AsyncScript
    withdraw: AsyncScript
    key_spend: AsyncScript
    key_spend_rebuild: AsyncScript

    @classmethod
    def register(cls, client: RedisClient, fast: FastRedis | None = None) -> Scripts:
        """Scripts on ``client``; the request path's three on ``fast`` when given."""

        def hot(name: str) -> ScriptCall | AsyncScript:
            if fast is None:
                return client.register_script(source(name))
            return FastScript(fast, source(name))

        return cls(
            admit=hot("admit_v4"),
            settle=hot("settle_v4"),
            checkpoint=hot("checkpoint_v3"),
            expired_leases=client.register_script(source("expired_leases_v1")),
            credit=client.register_script(source("credit_v2")),
            balance=client.register_script(source("balance_v1")),
            rebuild=client.register_script(source("rebuild_v2")),
            replay=client.register_script(source("replay_v1")),
            withdraw=client.register_script(source("withdraw_v1")),
            key_spend=client.register_script(source("key_spend_v1")),
            key_spend_rebuild=client.register_script(source("key_spend_rebuild_v1")),
        )

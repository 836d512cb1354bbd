"""The quota Lua scripts, shipped as package files and registered once per client.

Each ``lua/<name>_v<N>.lua`` is one atomic operation; ``lua/lib_v2.lua`` is prepended to
each so that the shared helpers (Redis time, integer formatting, cost, the reservation
record) exist once in the source. A change in behaviour gets a new version in the file
name, so that gateways of two releases never run different code under one name.
redis-py's ``register_script`` runs them with EVALSHA and reloads on NOSCRIPT (a restarted
or failed-over Redis), and routes them by their keys on a Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

RedisClient: TypeAlias = "Redis | RedisCluster"

LIB = "lib_v2"


@cache
def source(name: str) -> str:
    """The full text of script ``name`` (e.g. ``"admit_v2"``), helpers included."""
    lua = resources.files("gateway.quota") / "lua"
    return (lua / f"{LIB}.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class Scripts:
    admit: AsyncScript
    settle: AsyncScript
    checkpoint: AsyncScript
    expired_leases: AsyncScript
    credit: AsyncScript
    balance: AsyncScript
    rebuild: AsyncScript
    replay: AsyncScript

    @classmethod
    def register(cls, client: RedisClient) -> Scripts:
        return cls(
            admit=client.register_script(source("admit_v2")),
            settle=client.register_script(source("settle_v2")),
            checkpoint=client.register_script(source("checkpoint_v2")),
            expired_leases=client.register_script(source("expired_leases_v1")),
            credit=client.register_script(source("credit_v2")),
            balance=client.register_script(source("balance_v1")),
            rebuild=client.register_script(source("rebuild_v1")),
            replay=client.register_script(source("replay_v1")),
        )

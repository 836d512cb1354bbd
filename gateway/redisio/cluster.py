"""Redis Cluster on top of pipelined connections: one per master, routed by key slot.

Every quota script touches keys of one hash tag, so a command has one slot and one node.
MOVED refreshes the slot map and retries there; ASK sends ASKING + the command to the
importing node; CLUSTERDOWN/TRYAGAIN and lost connections are retried briefly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.redisio.connection import Arg, PipelinedConnection

SLOTS = 16384
ATTEMPTS = 4

Address = tuple[str, int]


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


class PipelinedCluster:
    def __init__(self, startup: list[Address], *, username: str | None = None,
                 password: str | None = None, timeout: float = 2.0) -> None:
        self._startup = list(startup)
        self._auth = {"username": username, "password": password, "timeout": timeout}
        self._nodes: dict[Address, PipelinedConnection] = {}
        self._slots: list[Address] = []
        self._refreshing: asyncio.Task[None] | None = None

    def node(self, address: Address) -> PipelinedConnection:
        connection = self._nodes.get(address)
        if connection is None:
            connection = self._nodes[address] = PipelinedConnection(
                address[0], address[1], **self._auth)  # type: ignore[arg-type]
        return connection

    async def refresh(self) -> None:
        """Reload the slot map (once, however many tasks ask at the same time)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._load_slots())
        await asyncio.shield(self._refreshing)

    async def _load_slots(self) -> None:
        error: Exception = RedisConnectionError("no cluster node answered CLUSTER SLOTS")
        for address in [*self._nodes, *self._startup]:
            try:
                ranges = await self.node(address).execute("CLUSTER", "SLOTS")
            except (RedisConnectionError, ResponseError) as exc:
                error = exc
                continue
            slots: list[Address] = [address] * SLOTS
            for start, end, master, *_ in ranges:
                host = master[0].decode() if master[0] else address[0]
                for slot in range(int(start), int(end) + 1):
                    slots[slot] = (host, int(master[1]))
            self._slots = slots
            return
        raise error

    async def execute_keyed(self, key: Arg, *args: Arg) -> Any:
        if not self._slots:
            await self.refresh()
        slot = key_slot(key if isinstance(key, bytes) else str(key).encode())
        address = self._slots[slot]
        asking = False
        for attempt in range(ATTEMPTS):
            connection = self.node(address)
            try:
                if asking:
                    return await connection.execute_asking(*args)
                return await connection.execute(*args)
            except ResponseError as exc:
                kind, _, rest = str(exc).partition(" ")
                if kind == "MOVED":
                    address, asking = _address(rest.split()[1]), False
                    await self.refresh()
                elif kind == "ASK":
                    address, asking = _address(rest.split()[1]), True
                elif kind in ("TRYAGAIN", "CLUSTERDOWN") and attempt < ATTEMPTS - 1:
                    await asyncio.sleep(0.05 * (attempt + 1))
                else:
                    raise
            except RedisConnectionError:
                if attempt == ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * attempt)
                await self.refresh()
                address = self._slots[slot]
        raise RedisConnectionError("Redis Cluster redirected too many times")

    async def execute(self, *args: Arg) -> Any:
        """A keyless command, on any node."""
        if not self._slots:
            await self.refresh()
        return await self.node(self._slots[0]).execute(*args)

    async def aclose(self) -> None:
        for connection in self._nodes.values():
            await connection.aclose()

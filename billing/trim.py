"""Trimming the usage streams: only entries acknowledged and recorded, a margin after checking.

An entry may leave its stream once the billing group acknowledged it and the ledger holds
its usage record (or the dead-letter stream holds it). Reconcile counts the charges of the
entries the ledger does not have yet by reading the stream after its SQL snapshot; an entry
trimmed between the two would be counted by neither. So trimming happens in two passes:
one finds the entries that are safe (recorded, by the ledger at that moment) and remembers
the point, the next one, at least ``margin_s`` later, trims up to it. A reconcile pass
that takes less than ``margin_s`` therefore never misses an entry (reconcile checks).
"""

from __future__ import annotations

import logging
import time

from redis import exceptions as rx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.db.schema import usage_records
from billing.streams import entries_of, shard_of_stream
from gateway import keyspace
from gateway.quota.journal import group_progress, stream_id
from gateway.quota.keys import BILLING_GROUP, dead_letter_key
from gateway.quota.scripts import RedisClient

log = logging.getLogger("tokengate.billing")
MARGIN_S = 60.0
IDLE_CONSUMER_MS = 3_600_000


class StreamTrimmer:
    def __init__(
        self,
        redis: RedisClient,
        engine: AsyncEngine,
        consumer: str,
        *,
        every_s: float = 60.0,
        margin_s: float = MARGIN_S,
        scan: int = 1000,
    ) -> None:
        self.redis, self.engine, self.consumer = redis, engine, consumer
        self.every_s, self.margin_s, self.scan = every_s, margin_s, scan
        self._points: dict[str, tuple[str, float]] = {}
        self._next = time.monotonic() + every_s

    async def maybe_trim(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        for stream in keyspace.all_usage_streams():
            point = self._points.get(stream)
            if point is not None and now - point[1] >= self.margin_s:
                await self.redis.xtrim(stream, minid=point[0], approximate=False)
                del self._points[stream]
            if stream not in self._points:
                found = await self.safe_point(stream)
                if found is not None:
                    self._points[stream] = (found, now)
            await self._forget_idle_consumers(stream)

    async def safe_point(self, stream: str) -> str | None:
        """The id below which every entry of the stream is acked and recorded (None: none)."""
        head = entries_of(stream, await self.redis.xrange(stream, "-", "+", count=self.scan))
        if len(head) < 2:
            return None
        delivered, oldest_pending = await group_progress(self.redis, stream)
        dead_stream = dead_letter_key(shard_of_stream(stream))
        dead = entries_of(dead_stream, await self.redis.xrange(dead_stream, "-", "+"))
        dead_ids = {e.fields.get("dead_stream_id") for e in dead}
        ids = [e.id for e in head]
        rids = [e.fields.get("request_id", "") for e in head]
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(usage_records.c.request_id).where(usage_records.c.request_id.in_(rids))
            )
            recorded = {row[0] for row in rows}
        for index, (entry_id, rid) in enumerate(zip(ids, rids, strict=True)):
            sid = stream_id(entry_id)
            acked = sid <= delivered and (oldest_pending is None or sid < oldest_pending)
            if not acked or (rid not in recorded and entry_id not in dead_ids):
                return entry_id if index > 0 else None
        return ids[-1]  # keep the last one: the stream is never emptied by trimming

    async def _forget_idle_consumers(self, stream: str) -> None:
        """Consumers of workers long gone, holding nothing, leave the group."""
        try:
            consumers = await self.redis.xinfo_consumers(stream, BILLING_GROUP)
        except rx.ResponseError:
            return
        for consumer in consumers:
            name = keyspace.reply_text(consumer["name"])
            if (
                name != self.consumer
                and not int(consumer["pending"])
                and (int(consumer["idle"]) > IDLE_CONSUMER_MS)
            ):
                await self.redis.xgroup_delconsumer(stream, BILLING_GROUP, name)

"""Trimming the usage streams: only entries acknowledged and recorded, a margin after checking.

An entry may leave its stream once the billing group acknowledged it and the ledger holds
its usage record (or the dead-letter stream holds it). Reconcile counts the charges of the
entries the ledger does not have yet by reading the stream after its SQL snapshot; an entry
trimmed between the two would be counted by neither. So a point found safe (everything
before it acked and recorded, by the ledger at that moment) is trimmed to only ``margin_s``
later. A reconcile pass that takes less than ``margin_s`` therefore never misses an entry
(reconcile checks).

Every pass (``every_s``) trims to the newest point old enough, then reads on from the last
point found for the next one, in pages: each entry is checked once, so trimming keeps up
with the stream however fast it grows (it once read the stream's first 1,000 entries per
minute, and a stream busier than that grew without end). A point is trimmed to only while
its entry is still there: after Redis lost the stream, a new one may reuse ids.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from redis import exceptions as rx
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.ledger import recorded_ids
from billing.streams import entries_of, shard_of_stream
from gateway.contract import BILLING_GROUP, RedisClient, dead_letter_key, group_progress, keyspace, stream_id

log = logging.getLogger("tokengate.billing")
MARGIN_S = 60.0
IDLE_CONSUMER_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Point:
    """A stream entry that bounds a trim: what is before it may go."""

    entry_id: str
    request_id: str
    found_at: float = 0.0


class StreamTrimmer:
    def __init__(
        self,
        redis: RedisClient,
        engine: AsyncEngine,
        consumer: str,
        *,
        every_s: float = 10.0,
        margin_s: float = MARGIN_S,
        scan: int = 1000,
        max_pages: int = 200,
    ) -> None:
        self.redis, self.engine, self.consumer = redis, engine, consumer
        self.every_s, self.margin_s = every_s, margin_s
        self.scan, self.max_pages = scan, max_pages  # entries per read, reads per stream and pass
        self._points: dict[str, deque[Point]] = {}
        self._next = time.monotonic() + every_s

    async def maybe_trim(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        for stream in keyspace.all_usage_streams():
            points = self._points.setdefault(stream, deque())
            ripe: Point | None = None
            while points and now - points[0].found_at >= self.margin_s:
                ripe = points.popleft()
            if ripe is not None and not await self._trim_to(stream, ripe):
                points.clear()  # the stream is not the one scanned: start over
                ripe = None
            start = points[-1] if points else ripe
            found = await self.safe_point(stream, start.entry_id if start else "-")
            if found is not None and (start is None or found.entry_id != start.entry_id):
                points.append(Point(found.entry_id, found.request_id, now))
            await self._forget_idle_consumers(stream)

    async def _trim_to(self, stream: str, point: Point) -> bool:
        """XTRIM below ``point`` if its entry is still there (False: it is not)."""
        at = entries_of(stream, await self.redis.xrange(stream, point.entry_id, point.entry_id))
        if not at or at[0].fields.get("request_id", "") != point.request_id:
            return False
        await self.redis.xtrim(stream, minid=point.entry_id, approximate=False)
        return True

    async def safe_point(self, stream: str, start: str = "-") -> Point | None:
        """The first entry from ``start`` on that is not yet acked and recorded (everything
        before it may go), else the last one read (the stream is never emptied by trimming);
        None when not even the first entry read is safe."""
        delivered, oldest_pending = await group_progress(self.redis, stream)
        dead_stream = dead_letter_key(shard_of_stream(stream))
        dead = entries_of(dead_stream, await self.redis.xrange(dead_stream, "-", "+"))
        dead_ids = {e.fields.get("dead_stream_id") for e in dead}
        last: Point | None = None
        for _ in range(self.max_pages):
            page = entries_of(stream, await self.redis.xrange(stream, start, "+", count=self.scan))
            rids = [e.fields.get("request_id", "") for e in page]
            async with self.engine.connect() as conn:
                recorded = await recorded_ids(conn, rids)
            for entry, rid in zip(page, rids, strict=True):
                sid = stream_id(entry.id)
                acked = sid <= delivered and (oldest_pending is None or sid < oldest_pending)
                if not acked or (rid not in recorded and entry.id not in dead_ids):
                    return Point(entry.id, rid) if last is not None else None
                last = Point(entry.id, rid)
            if len(page) < self.scan:
                break
            start = "(" + page[-1].id
        return last

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

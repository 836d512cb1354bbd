"""The usage streams as the billing worker uses them: group, reads, claims, acks, dead letters.

There are ``USAGE_SHARDS`` streams (``gateway.keyspace``); one consumer group
(``billing``) spans all workers. An entry is acknowledged only after the ledger committed
it (or the dead-letter stream holds it), so a worker killed at any point leaves its entries
pending, and another worker (or itself, restarted) claims them with XAUTOCLAIM once they
have been idle for ``claim_idle_ms``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx
from redis.asyncio.cluster import RedisCluster

from gateway.contract import BILLING_GROUP, RedisClient, dead_letter_key, keyspace, reply_text


@dataclass(frozen=True, slots=True)
class Entry:
    stream: str
    id: str
    fields: Mapping[str, str]


def entries_of(stream: str, raw: Sequence[Any] | None) -> list[Entry]:
    """Entries from a reply's ``[(id, {field: value}), ...]``; deleted ones are skipped."""
    return [Entry(stream, reply_text(eid), _decoded(fields))
            for eid, fields in raw or [] if fields is not None]


def _decoded(fields: Mapping[Any, Any]) -> dict[str, str]:
    """The fields as text: bytes decoded in one comprehension (the usual reply), else each."""
    try:
        return {k.decode(): v.decode() for k, v in fields.items()}
    except AttributeError:  # a str among them (a client decoding replies itself)
        return {reply_text(k): reply_text(v) for k, v in fields.items()}


def shard_of_stream(stream: str) -> int:
    return keyspace.all_usage_streams().index(stream)


class UsageStreams:
    def __init__(self, redis: RedisClient, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer
        self.streams = keyspace.all_usage_streams()
        self._claim_from = dict.fromkeys(self.streams, "0-0")

    async def ensure_group(self) -> None:
        """Create the billing group on every stream (from its start) if it is missing."""
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, BILLING_GROUP, id="0", mkstream=True)
            except rx.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    async def read(self, count: int, block_ms: int, *, own_pending: bool = False) -> list[Entry]:
        """New entries for this consumer (or, ``own_pending``, those it holds unacked).

        On a standalone Redis one XREADGROUP covers every stream and blocks up to
        ``block_ms``; a Redis Cluster spreads the streams over slots, so each is polled and
        the wait blocks on the first one only.
        """
        start = "0" if own_pending else ">"
        block = None if own_pending or block_ms <= 0 else block_ms
        if not isinstance(self.redis, RedisCluster):
            return await self._read(dict.fromkeys(self.streams, start), count, block)
        entries: list[Entry] = []
        for stream in self.streams:
            entries += await self._read({stream: start}, count, None)
        if not entries and block is not None:
            entries = await self._read({self.streams[0]: start}, count, block)
        return entries

    async def _read(self, streams: dict[Any, Any], count: int, block: int | None) -> list[Entry]:
        try:
            reply: Any = await self.redis.xreadgroup(
                BILLING_GROUP,
                self.consumer,
                streams,
                count=count,
                block=block,
            )
        except rx.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            await self.ensure_group()  # Redis lost the group (data loss): start over
            return []
        replies: list[tuple[Any, Any]] = list(reply or [])
        return [e for name, raw in replies for e in entries_of(reply_text(name), raw)]

    async def claim(self, idle_ms: int, count: int) -> list[Entry]:
        """Take over entries another consumer has held unacked for ``idle_ms`` (it died)."""
        entries: list[Entry] = []
        for stream in self.streams:
            try:
                reply = await self.redis.xautoclaim(
                    stream,
                    BILLING_GROUP,
                    self.consumer,
                    idle_ms,
                    self._claim_from[stream],
                    count=count,
                )
            except rx.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                await self.ensure_group()
                continue
            self._claim_from[stream] = reply_text(reply[0])
            entries += entries_of(stream, reply[1])
        return entries

    async def deliveries(self, entries: Sequence[Entry]) -> dict[str, int]:
        """How many times each entry (held by this consumer) has been delivered."""
        counts: dict[str, int] = {}
        for stream in {e.stream for e in entries}:
            ids = sorted((e.id for e in entries if e.stream == stream), key=_sid)
            pending = await self.redis.xpending_range(
                stream,
                BILLING_GROUP,
                min=ids[0],
                max=ids[-1],
                count=len(ids) * 2 + 10,
                consumername=self.consumer,
            )
            for item in pending:
                counts[reply_text(item["message_id"])] = int(item["times_delivered"])
        return counts

    async def ack(self, entries: Sequence[Entry]) -> None:
        """XACK the entries, one command per stream, all in one round trip (standalone)."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        if isinstance(self.redis, RedisCluster) or len(by_stream) < 2:
            for stream, ids in by_stream.items():
                await self.redis.xack(stream, BILLING_GROUP, *ids)
            return
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in by_stream.items():
            pipe.xack(stream, BILLING_GROUP, *ids)
        await pipe.execute()

    async def dead_letter(self, entry: Entry, reason: str) -> None:
        """Keep an entry the ledger cannot take, with the reason, then acknowledge it."""
        shard = shard_of_stream(entry.stream)
        fields = {**entry.fields, "dead_reason": reason[:500], "dead_stream_id": entry.id}
        await self.redis.xadd(dead_letter_key(shard), fields)  # type: ignore[arg-type]
        await self.ack([entry])


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def backlog(redis: RedisClient) -> int:
    """Entries of the usage streams not yet recorded: undelivered (lag) plus pending."""
    total = 0
    for stream in keyspace.all_usage_streams():
        try:
            groups = await redis.xinfo_groups(stream)
        except rx.ResponseError:  # no stream: nothing waits in it
            continue
        group = next((g for g in groups if reply_text(g.get("name", "")) == BILLING_GROUP), None)
        if group is None:
            total += int(await redis.xlen(stream))
            continue
        total += int(group.get("pending") or 0) + int(group.get("lag") or 0)
    return total

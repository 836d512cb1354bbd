"""The settlement journal: usage events this process appended that billing has not yet acked.

Between settlement and the billing worker's commit the usage stream is the only copy of a
settled request in Redis. A Redis crash with AOF ``always`` loses none of it, but a Redis
that loses its data (FLUSHALL, a fresh replica promoted, a restore from an old snapshot)
does. So each gateway process keeps the events it appended until the billing group has
acknowledged them, and the reaper loop calls :meth:`SettlementJournal.confirm` for each
shard it holds events of, every second (so the journal holds about a second or two of
events under load), which

* replays (``lua/replay_v1.lua``) the events Redis no longer has: the stream is gone, or
  its first entry is newer than the event (a stream only loses entries from its head, and
  only acked, recorded ones are trimmed, long after this process saw them acked);
* forgets the events the group has acknowledged (delivered, and no longer pending).

A replay is harmless to the ledger (the worker is idempotent by request id) and charges a
balance rebuilt since (another epoch) that never saw the charge. The journal is bounded:
past ``limit`` events the oldest are dropped with a warning (billing far behind).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import exceptions as rx

from gateway import keyspace
from gateway.keyspace import reply_text
from gateway.quota.keys import BILLING_GROUP, grants_key
from gateway.quota.scripts import RedisClient, Scripts

log = logging.getLogger("tokengate")


def stream_id(text: str) -> tuple[int, int]:
    """A stream entry id ``'1700000000000-3'`` as a comparable pair."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


_SEP = b"\x00"


@dataclass(frozen=True, slots=True)
class Journaled:
    """One event as appended. Kept packed: the journal holds every event of the last
    second or two (thousands under load), and Redis's reply is some forty bytes objects of
    a few bytes each, four times the size of their joined text."""

    account_id: str
    packed: bytes | tuple[Any, ...]  # field, value, ... joined by NUL (else as Redis sent it)

    @classmethod
    def of(cls, account_id: str, flat: Sequence[Any]) -> Journaled:
        try:
            packed = _SEP.join(flat)
        except TypeError:  # str values (a client that decodes replies): kept as they are
            return cls(account_id, tuple(flat))
        if packed.count(_SEP) != len(flat) - 1:  # a NUL inside a value: it would not split back
            return cls(account_id, tuple(flat))
        return cls(account_id, packed)

    @property
    def flat(self) -> Sequence[Any]:
        """The event as appended: field, value, ... (bytes or str)."""
        return self.packed.split(_SEP) if isinstance(self.packed, bytes) else self.packed

    @property
    def fields(self) -> dict[str, str]:
        text = [reply_text(v) for v in self.flat]
        return dict(zip(text[0::2], text[1::2], strict=True))


class SettlementJournal:
    def __init__(self, limit: int = 20_000, replay_batch: int = 200) -> None:
        self.limit = limit
        self.replay_batch = replay_batch  # replays per confirm call: the reaper pass stays short
        self._shards: dict[int, OrderedDict[str, Journaled]] = {}
        self._size = 0
        self._full = False
        self.replayed = 0  # events appended again since start (a metric for tests and logs)

    def __len__(self) -> int:
        return self._size

    def record(self, entry_id: str, account_id: str, flat: Sequence[Any]) -> None:
        """Remember an event just appended as stream entry ``entry_id`` (kept as Redis sent it:
        decoded only if it has to be replayed)."""
        shard = self._shards.setdefault(keyspace.shard_of(account_id), OrderedDict())
        shard[entry_id] = Journaled.of(account_id, flat)
        self._size += 1
        if self._size > self.limit:
            fullest = max(self._shards.values(), key=len)
            fullest.popitem(last=False)
            self._size -= 1
            if not self._full:
                log.warning("settlement journal full (%d events): is a billing worker running?", self.limit)
        self._full = self._size >= self.limit

    def shards(self) -> list[int]:
        """The shards this journal holds events of."""
        return [shard for shard, entries in self._shards.items() if entries]

    async def confirm(self, client: RedisClient, scripts: Scripts, shard: int) -> int:
        """Replay what Redis lost of this shard, forget what billing acked; the replay count."""
        entries = self._shards.get(shard)
        if not entries:
            return 0
        stream = keyspace.usage_stream_key(shard)
        first = await _first_entry(client, stream)
        lost = [i for i in entries if first is None or stream_id(i) < first]
        for entry_id in lost[: self.replay_batch]:
            await self._replay(client, scripts, stream, entries, entry_id)
        delivered, oldest_pending = await group_progress(client, stream)
        for entry_id in list(entries):
            sid = stream_id(entry_id)
            if sid > delivered or (oldest_pending is not None and sid >= oldest_pending):
                break  # ids are in order: nothing after this one is acknowledged either
            del entries[entry_id]
            self._size -= 1
        return min(len(lost), self.replay_batch)

    async def _replay(
        self,
        client: RedisClient,
        scripts: Scripts,
        stream: str,
        entries: OrderedDict[str, Journaled],
        entry_id: str,
    ) -> None:
        item = entries[entry_id]
        fields = item.fields
        args: list[str] = [fields.get("epoch", "")]
        for name, value in fields.items():
            if name not in ("epoch", "replayed"):
                args += [name, value]
        keys = [keyspace.balance_key(item.account_id), grants_key(item.account_id), stream]
        new_id = reply_text(await scripts.replay(keys=keys, args=args))
        del entries[entry_id]  # only once appended again: a failed replay is retried later
        entries[new_id] = item
        self.replayed += 1
        log.warning("replayed usage event %s: Redis had lost it", fields.get("request_id"))


async def _first_entry(client: RedisClient, stream: str) -> tuple[int, int] | None:
    """The id of the stream's first entry; None when the stream is gone or empty."""
    head = await client.xrange(stream, "-", "+", count=1)
    return stream_id(reply_text(head[0][0])) if head else None


async def group_progress(client: RedisClient, stream: str) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """(last id delivered to the billing group, oldest id still pending in it)."""
    try:
        groups = await client.xinfo_groups(stream)
    except rx.ResponseError:  # no stream
        return (0, 0), None
    for group in groups:
        if reply_text(group.get("name", "")) == BILLING_GROUP:
            delivered = stream_id(reply_text(group.get("last-delivered-id", "0-0")))
            if not int(group.get("pending", 0)):
                return delivered, None
            summary = await client.xpending(stream, BILLING_GROUP)
            return delivered, stream_id(reply_text(summary["min"]))
    return (0, 0), None

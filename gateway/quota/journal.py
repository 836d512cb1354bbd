"""The settlement journal: usage events this process appended that billing has not yet acked.

Between settlement and the billing worker's commit the usage stream is the only copy of a
settled request in Redis. A Redis crash with AOF ``always`` loses none of it, but a Redis
that loses its data (FLUSHALL, a fresh replica promoted, a restore from an old snapshot)
does. So each gateway process keeps the events it appended until the billing group has
acknowledged them, and the reaper loop calls :meth:`SettlementJournal.confirm` for each
shard it holds events of, every second (so the journal holds about a second or two of
events under load), which

* replays (``lua/replay_v1.lua``) the events Redis no longer has. One read tells whether
  there are any: if the oldest journaled event is still in the stream (same id, same
  request), none is lost, because Redis loses a stream whole, never from its middle, and
  trims only acked events, which the journal has forgotten by then. Otherwise the stream
  is read from that id on, and what it does not hold (by id and request) is replayed. Ids
  alone cannot tell: a stream created again after a loss starts over at the clock's
  millisecond, so its ids can repeat those of lost events (the same millisecond, a clock
  behind);
* forgets the events the group has acknowledged (delivered, and no longer pending), but
  only once nothing of the shard is waiting to be replayed.

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

    @property
    def request_id(self) -> str:
        return self.fields.get("request_id", "")


class SettlementJournal:
    def __init__(self, limit: int = 20_000, replay_batch: int = 200) -> None:
        self.limit = limit
        self.replay_batch = replay_batch  # replays per confirm call: the reaper pass stays short
        self._shards: dict[int, OrderedDict[str, Journaled]] = {}
        # Events whose stream id a re-created stream gave to a newer event: lost for sure.
        self._orphans: dict[int, list[Journaled]] = {}
        self._size = 0
        self._full = False
        self.replayed = 0  # events appended again since start (a metric for tests and logs)

    def __len__(self) -> int:
        return self._size

    def record(self, entry_id: str, account_id: str, flat: Sequence[Any]) -> None:
        """Remember an event just appended as stream entry ``entry_id`` (kept as Redis sent it:
        decoded only if it has to be replayed)."""
        self._put(keyspace.shard_of(account_id), entry_id, Journaled.of(account_id, flat))
        if self._size > self.limit:
            fullest = max(self._shards.values(), key=len)
            fullest.popitem(last=False)
            self._size -= 1
            if not self._full:  # once per filling: it is logged again after it drained
                log.warning("settlement journal full (%d events): is a billing worker running?", self.limit)
                self._full = True
        elif self._full and self._size < self.limit // 2:
            self._full = False

    def _put(self, shard: int, entry_id: str, item: Journaled) -> None:
        entries = self._shards.setdefault(shard, OrderedDict())
        previous = entries.pop(entry_id, None)
        if previous is not None:  # Redis never reuses an id in a stream's life: it lost that one
            self._orphans.setdefault(shard, []).append(previous)
        entries[entry_id] = item
        self._size += 1

    def shards(self) -> list[int]:
        """The shards this journal holds events of."""
        return sorted({*(n for n, entries in self._shards.items() if entries),
                       *(n for n, orphans in self._orphans.items() if orphans)})

    async def confirm(self, client: RedisClient, scripts: Scripts, shard: int) -> int:
        """Replay what Redis lost of this shard, forget what billing acked; the replay count."""
        entries = self._shards.setdefault(shard, OrderedDict())
        orphans = self._orphans.setdefault(shard, [])
        stream = keyspace.usage_stream_key(shard)
        lost = await _lost(client, stream, entries)
        replays = 0
        while orphans and replays < self.replay_batch:
            new_id = await self._replay(scripts, stream, orphans[0])
            self._size -= 1  # dropped only once appended again
            self._put(shard, new_id, orphans.pop(0))
            replays += 1
        for entry_id, item in lost[: self.replay_batch - replays]:
            new_id = await self._replay(scripts, stream, item)
            if entries.get(entry_id) is item:
                del entries[entry_id]
            else:  # a replay took its id meanwhile (a clock behind): it was set aside as lost
                orphans.remove(item)
            self._size -= 1
            self._put(shard, new_id, item)
            replays += 1
        if orphans or replays < len(lost):
            return replays  # the rest next time; meanwhile nothing of this shard is forgotten
        delivered, oldest_pending = await group_progress(client, stream)
        for entry_id in list(entries):
            sid = stream_id(entry_id)
            if sid > delivered or (oldest_pending is not None and sid >= oldest_pending):
                break  # ids are in order: nothing after this one is acknowledged either
            del entries[entry_id]
            self._size -= 1
        return replays

    async def _replay(self, scripts: Scripts, stream: str, item: Journaled) -> str:
        """Append ``item`` to ``stream`` again; its new stream id."""
        fields = item.fields
        args: list[str] = [fields.get("epoch", "")]
        for name, value in fields.items():
            if name not in ("epoch", "replayed"):
                args += [name, value]
        keys = [keyspace.balance_key(item.account_id), grants_key(item.account_id), stream]
        new_id = reply_text(await scripts.replay(keys=keys, args=args))
        self.replayed += 1
        log.warning("replayed usage event %s: Redis had lost it", fields.get("request_id"))
        return new_id


async def _lost(
    client: RedisClient, stream: str, entries: OrderedDict[str, Journaled]
) -> list[tuple[str, Journaled]]:
    """The journaled events (id, event) the stream no longer holds (see the module's doc)."""
    if not entries:
        return []
    oldest_id, oldest = next(iter(entries.items()))
    head = await client.xrange(stream, oldest_id, oldest_id, count=1)
    if head and _request_of(head[0][1]) == oldest.request_id:
        return []
    held: set[tuple[str, str]] = set()
    low = min(stream_id(eid) for eid in entries)  # after a loss, insertion is not id order
    start = f"{low[0]}-{low[1]}"
    while True:  # rare (Redis lost data): read what the stream holds from there on
        page = await client.xrange(stream, start, "+", count=1000) or []
        held.update((reply_text(eid), _request_of(fields)) for eid, fields in page)
        if len(page) < 1000:
            break
        start = "(" + reply_text(page[-1][0])
    return [(eid, item) for eid, item in entries.items() if (eid, item.request_id) not in held]


def _request_of(fields: Any) -> str:
    value = fields.get(b"request_id", fields.get("request_id", "")) if isinstance(fields, dict) else ""
    return reply_text(value)


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
            oldest = summary.get("min")  # None: the worker acked it all since XINFO answered
            return delivered, stream_id(reply_text(oldest)) if oldest else None
    return (0, 0), None

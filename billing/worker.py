"""The billing worker: usage streams -> ledger, exactly once (``tokengate billing worker``).

Each batch of stream entries becomes, in ONE transaction, a usage record and a ledger entry
per new request id (``ledger.record_usage``, idempotent on the request id); the entries are
acknowledged (XACK) only after the commit. So:

* killed before the commit: nothing was written; the entries stay pending and are claimed
  again (XAUTOCLAIM after ``claim_idle_ms``) by this or another worker;
* killed between commit and XACK: the entries come again and are recognised as recorded;
* the same event twice (a duplicate, a replay): recorded once, the others acknowledged;
* the database down: the batch is held and retried until it commits; new entries wait in
  the streams (the backlog) and drain when the database is back;
* an entry the ledger refuses (malformed, charges that do not add up, unknown grant,
  overdraft, same id with other content) or delivered ``max_deliveries`` times: copied to
  the shard's dead-letter stream with the reason and acknowledged; the rest goes on.

Any number of workers may run at once: the consumer group shares the entries out, and the
database serialises what two of them might record at the same time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.clock import Clock, wall_ms
from billing.db.engine import WriterConnection, is_unavailable
from billing.ledger import Recorded, record_usage
from billing.streams import Entry, UsageStreams
from billing.trim import StreamTrimmer
from gateway.contract import UNAVAILABLE, RedisClient, UsageEvent, settle_heap

log = logging.getLogger("tokengate.billing")


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class WorkerStats:
    recorded: int = 0
    duplicates: int = 0
    dead: int = 0
    batches: int = 0


@dataclass(frozen=True)
class WorkerOptions:
    # Entries read per stream (XREADGROUP COUNT), all recorded in one transaction. The ledger
    # costs ~20% less CPU per event at 1,000 than at 200 (bench_worker at 2,500 events/s):
    # the commit, the round trips and the index pages the events share are paid per batch.
    batch: int = 1000
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_every_s: float = 5.0
    max_deliveries: int = 10
    # After a batch smaller than ``batch``, wait this long before reading again, so a busy
    # stream is recorded a few hundred entries per transaction instead of one entry per
    # wake-up (one wake-up per request costs more CPU than the ledger insert itself).
    linger_s: float = 0.2
    retry_s: float = 1.0  # first wait while the database is down (doubles up to 30 s)
    trim_every_s: float = 10.0  # a pass reads on from the last; trims what is a margin old


class BillingWorker:
    def __init__(
        self,
        redis: RedisClient,
        engine: AsyncEngine,
        *,
        consumer: str | None = None,
        options: WorkerOptions | None = None,
        clock: Clock = wall_ms,
    ) -> None:
        self.engine = engine
        self.options = options or WorkerOptions()
        self.streams = UsageStreams(redis, consumer or default_consumer())
        self.trimmer = StreamTrimmer(redis, engine, self.streams.consumer, every_s=self.options.trim_every_s)
        self.clock = clock
        self.db: WriterConnection | None = None  # its own connection, while it runs
        self.stats = WorkerStats()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until :meth:`stop`; Redis outages are waited out."""
        self.db = WriterConnection(self.engine)
        try:
            await self._consume()
        finally:
            db, self.db = self.db, None
            await db.close()

    async def _consume(self) -> None:
        settle_heap()  # the start-up heap (modules, SQLAlchemy's caches) out of the collector's way
        own_pending, next_claim, group_ready = True, 0.0, False
        while not self.stopping.is_set():
            try:
                if not group_ready:  # later, a lost group answers NOGROUP: the reads recreate it
                    await self.streams.ensure_group()
                    group_ready = True
                entries: list[Entry] = []
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.options.claim_every_s
                    entries = await self._claim()
                if not entries:
                    entries = await self.streams.read(
                        self.options.batch, self.options.block_ms, own_pending=own_pending
                    )
                    own_pending = own_pending and bool(entries)
                if entries:
                    await self.handle(entries)
                await self.trimmer.maybe_trim()
                if entries and len(entries) < self.options.batch and self.options.linger_s > 0:
                    await self._sleep(self.options.linger_s)
            except UNAVAILABLE as error:
                group_ready = False
                log.warning("billing worker: Redis unavailable (%s)", error.__class__.__name__)
                await self._sleep(1.0)

    def stop(self) -> None:
        self.stopping.set()

    async def _claim(self) -> list[Entry]:
        """Entries a dead consumer left; those delivered too often are dead-lettered."""
        entries = await self.streams.claim(self.options.claim_idle_ms, self.options.batch)
        if not entries:
            return []
        counts = await self.streams.deliveries(entries)
        kept = []
        for entry in entries:
            times = counts.get(entry.id, 0)
            if times > self.options.max_deliveries:
                await self._dead(entry, f"delivered {times} times without being recorded")
            else:
                kept.append(entry)
        return kept

    async def handle(self, entries: Sequence[Entry]) -> None:
        """Record a batch, then acknowledge it (dead letters first)."""
        events: list[tuple[Entry, UsageEvent]] = []
        for entry in entries:
            try:
                events.append((entry, UsageEvent.from_fields(entry.fields)))
            except (ValueError, TypeError) as error:
                await self._dead(entry, f"not a usage event: {error}")
        done = await self._record(events)
        if done is None:
            return  # stopping while the database is down: the entries stay pending
        await self.streams.ack([entry for entry, _ in events])
        self.stats.batches += 1

    async def _record(self, events: list[tuple[Entry, UsageEvent]]) -> Recorded | None:
        """Commit the events (isolating what the ledger refuses); None if stopped meanwhile."""
        wait, attempts = self.options.retry_s, 0
        while events:
            try:
                async with self._begin() as conn:
                    done = await record_usage(conn, [e for _, e in events], self.clock())
            except Exception as error:
                attempts += 1
                if is_unavailable(error) and (attempts <= 3 or not await self._database_answers()):
                    log.warning(
                        "billing worker: database unavailable (%s); holding %d entries",
                        error.__class__.__name__,
                        len(events),
                    )
                    if await self._sleep(wait):
                        return None
                    wait = min(wait * 2, 30.0)
                    continue
                return await self._isolate(events, error)
            self.stats.recorded += len(done.new)
            self.stats.duplicates += len(done.duplicates)
            conflicting = {id(event) for event in done.conflicts}
            for entry, event in events:
                if id(event) in conflicting:
                    await self._dead(entry, "same request id as a recorded usage, other content")
            return done
        return Recorded()

    def _begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction on the worker's own connection (outside :meth:`run`: the engine's)."""
        return self.db.begin() if self.db is not None else self.engine.begin()

    async def _isolate(self, events: list[tuple[Entry, UsageEvent]], error: Exception) -> Recorded | None:
        """One event at a time, so only the one the ledger refuses is dead-lettered."""
        if len(events) == 1:
            await self._dead(events[0][0], f"refused by the ledger: {error}")
            return Recorded()
        total = Recorded()
        for item in events:
            done = await self._record([item])
            if done is None:
                return None
            total.new += done.new
            total.duplicates += done.duplicates
        return total

    async def _dead(self, entry: Entry, reason: str) -> None:
        log.error("billing worker: dead-lettering %s %s: %s", entry.stream, entry.id, reason)
        await self.streams.dead_letter(entry, reason)
        self.stats.dead += 1

    async def _database_answers(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sql("SELECT 1"))
            return True
        except Exception:
            return False

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stopping."""
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

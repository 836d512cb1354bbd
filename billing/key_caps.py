"""Per-key credit caps on billing's side: the cap in SQL and the API, and the Redis counter
rebuilt from the ledger.

A key may be capped at ``credit_limit`` credits per ``credit_period`` (``day``, ``month``:
UTC calendar, by Redis time; ``total``). SQL holds the cap (``api_keys.credit_limit``,
``credit_period``; both or neither) and, through the usage records, what the key spent;
admission enforces the cap on Redis copies: the cap in the key record, and a counter of
what the key spent in the current period and holds in flight (``keyspace.key_spend_key``).

The counter is a copy too, so it is rebuilt like the grants: what the ledger charged the
key since the period's start, plus the charges of stream entries the ledger does not have
yet (``lua/key_spend_rebuild_v1.lua`` adds those appended after our read, and sets
``held`` from the key's reservations in flight, atomically). Reconcile runs it for every
capped key; a cap set on a key runs it for that key, so a key capped at noon has its
morning's spending counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.db.schema import usage_records
from billing.ledger import recorded_ids
from billing.records import KeyCreditLimit
from billing.streams import Entry, entries_of
from billing.trim import MARGIN_S
from gateway.contract import (
    UNAVAILABLE,
    AccountStore,
    CreditLimit,
    QuotaUnavailable,
    dead_letter_key,
    keyspace,
    period_id,
    period_start_ms,
    reply_text,
)


def cap_of(row: Any) -> CreditLimit | None:
    """The cap of an ``api_keys`` row (None: no cap)."""
    if row.credit_limit is None:
        return None
    return CreditLimit(int(row.credit_limit), row.credit_period)


def cap_json(cap: CreditLimit | None) -> KeyCreditLimit | None:
    """The cap as the API shows it: ``{"credits", "period"}`` or null."""
    return None if cap is None else {"credits": cap.credits, "period": cap.period}


def cap_columns(cap: CreditLimit | None) -> dict[str, Any]:
    """The ``api_keys`` columns of a cap (both null: no cap)."""
    if cap is None:
        return {"credit_limit": None, "credit_period": None}
    return {"credit_limit": cap.credits, "credit_period": cap.period}


@dataclass(frozen=True, slots=True)
class SpendCheck:
    """A capped key's counter in Redis against what the ledger (and streams, reservations) say."""

    key_id: str
    period: str
    redis_spent: int
    redis_held: int
    spent: int
    held: int

    @property
    def drift(self) -> bool:
        return (self.redis_spent, self.redis_held) != (self.spent, self.held)

    def line(self) -> str:
        return (
            f"{self.key_id} (credit cap, period {self.period}: spent {self.redis_spent} held "
            f"{self.redis_held} -> spent {self.spent} held {self.held})"
        )


async def check_key_spend(
    store: AccountStore, engine: AsyncEngine, account_id: str, key_id: str, cap: CreditLimit, *, apply: bool
) -> SpendCheck:
    """Compare (``apply``: replace) the key's counter with what it spent in the current period.

    Raises QuotaUnavailable when Redis cannot answer. A period that ends between our count
    and the script is counted again (the script refuses a count for another period), and
    so is a count slower than trimming's margin (an entry could have left the stream unseen).
    """
    shard = keyspace.shard_of(account_id)
    stream = keyspace.usage_stream_key(shard)
    keys = [keyspace.key_spend_key(account_id, key_id), keyspace.reservations_key(account_id), stream]
    try:
        for _attempt in range(3):
            seconds, micros = await store.client.time()
            now = int(seconds) * 1000 + int(micros) // 1000
            period, since = period_id(cap.period, now), period_start_ms(cap.period, now)
            started = time.monotonic()
            counted, last_id = await _counted(store, engine, account_id, key_id, since, shard)
            if time.monotonic() - started >= MARGIN_S:
                continue
            mode = "apply" if apply else "check"
            args: list[str | int] = [mode, account_id, key_id, cap.period, period, since, last_id, counted]
            reply = await store.scripts.key_spend_rebuild(keys=keys, args=args)
            if reply_text(reply[0]) == "ok":
                spent, held, want_spent, want_held = (int(v) for v in reply[2:6])
                return SpendCheck(key_id, reply_text(reply[1]), spent, held, want_spent, want_held)
    except UNAVAILABLE as exc:
        raise QuotaUnavailable(
            "quota service unavailable; retry shortly", code="quota_unavailable", headers={"Retry-After": "1"}
        ) from exc
    raise RuntimeError(f"the period of key {key_id} kept changing while it was counted")


async def _counted(
    store: AccountStore, engine: AsyncEngine, account_id: str, key_id: str, since: int, shard: int
) -> tuple[int, str]:
    """The key's charges since ``since``: the ledger's, plus those of stream entries (dead
    letters too: Redis charged them) the ledger lacks, in one SQL snapshot read before the
    streams; and the id of the last stream entry counted."""
    async with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            ledger = await _ledger_spent(conn, account_id, key_id, since)
            main = await _read(store, keyspace.usage_stream_key(shard))
            dead = await _read(store, dead_letter_key(shard))
            mine = [e.fields for e in main + dead if _counts(e, account_id, key_id, since)]
            recorded = await recorded_ids(conn, {f["request_id"] for f in mine})
    pending: dict[str, int] = {}
    for fields in mine:
        if fields["request_id"] not in recorded:
            pending.setdefault(fields["request_id"], int(fields.get("charge") or 0))
    return ledger + sum(pending.values()), main[-1].id if main else ""


def _counts(entry: Entry, account_id: str, key_id: str, since: int) -> bool:
    f = entry.fields
    return (
        f.get("account_id") == account_id
        and f.get("key_id") == key_id
        and bool(f.get("request_id"))
        and int(f.get("finished_at_ms") or 0) >= since
    )


async def _ledger_spent(conn: AsyncConnection, account_id: str, key_id: str, since: int) -> int:
    c = usage_records.c
    query = select(func.coalesce(func.sum(c.charge), 0)).where(
        c.account_id == account_id, c.key_id == key_id, c.finished_at_ms >= since
    )
    return int((await conn.execute(query)).scalar_one())


async def _read(store: AccountStore, stream: str, chunk: int = 1000) -> list[Entry]:
    out: list[Entry] = []
    start = "-"
    while True:
        batch = entries_of(stream, await store.client.xrange(stream, start, "+", count=chunk))
        out += batch
        if len(batch) < chunk:
            return out
        start = "(" + batch[-1].id

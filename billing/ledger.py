"""Postings to the double-entry ledger, and balances derived from them.

Every change of credits is an entry whose legs sum to zero (the database checks it):

    purchase:<order_id>   grant +credits, sales -credits
    usage:<request_id>    grant -charge, usage +charge      (one pair per grant charged)

A usage event is recorded at most once: its usage record is keyed by request id and the
insert skips an id already there, so a redelivered or duplicated event changes nothing
(``record_usage`` reports it as a duplicate, or as a conflict if its content differs).
``grants.remaining`` moves in the same transaction; its CHECK refuses an overdraft.

Which grants a charge draws from is decided by Redis at settlement (the soonest-expiring
grants valid for the model, see gateway/quota/lua/admit_v3.lua) and carried by the event,
so the ledger and Redis always agree grant by grant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.db.schema import grants, ledger_entries, ledger_legs, usage_records
from gateway.usage import EVENT_FIELDS, UsageEvent


class LedgerRefused(ValueError):
    """The ledger cannot record this input as it is (a poison event, a bad purchase)."""


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: str
    grant_id: str
    book: str  # grant | sales | usage
    amount: int


@dataclass
class Recorded:
    """What one ``record_usage`` call did, by request id."""

    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    conflicts: list[UsageEvent] = field(default_factory=list)  # same id, other content: refused


async def post(
    conn: AsyncConnection, entries: Sequence[tuple[str, str, str, Sequence[Leg]]], now_ms: int
) -> None:
    """Post entries ``(id, kind, account_id, legs)``: all legs first, then the entries."""
    legs = [
        {
            "entry_id": eid,
            "account_id": leg.account_id,
            "grant_id": leg.grant_id,
            "book": leg.book,
            "amount": leg.amount,
        }
        for eid, _kind, _account, entry_legs in entries
        for leg in entry_legs
    ]
    if not legs:
        return
    await conn.execute(ledger_legs.insert(), legs)
    rows = [
        {"id": eid, "kind": kind, "account_id": account, "created_at_ms": now_ms}
        for eid, kind, account, _legs in entries
    ]
    await conn.execute(ledger_entries.insert(), rows)


def purchase_legs(account_id: str, grant_id: str, credits: int) -> list[Leg]:
    return [Leg(account_id, grant_id, "grant", credits), Leg(account_id, grant_id, "sales", -credits)]


def _check(event: UsageEvent) -> list[tuple[str, int]]:
    parts = event.allocation()
    if sum(amount for _, amount in parts) != event.charge:
        raise LedgerRefused(f"grants {event.grants!r} do not add up to the charge {event.charge}")
    return parts


def _usage_row(event: UsageEvent, now_ms: int) -> dict[str, Any]:
    """The usage_records row: every field of the event (the shared contract), plus when."""
    row: dict[str, Any] = {name: getattr(event, name) for name in EVENT_FIELDS}
    row["recorded_at_ms"] = now_ms
    return row


def _insert_ignoring_duplicates(conn: AsyncConnection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return (
        dialect.insert(usage_records)
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(usage_records.c.request_id)
    )


async def record_usage(conn: AsyncConnection, events: Iterable[UsageEvent], now_ms: int) -> Recorded:
    """Record usage events (usage record + ledger entry each), skipping ids already there.

    Raises LedgerRefused (or the database's IntegrityError) for an event the ledger cannot
    take: charges that do not add up, an unknown account or grant, an overdrawn grant. The
    caller's transaction then holds nothing of the batch.
    """
    unique: dict[str, UsageEvent] = {}
    outcome = Recorded()
    for event in events:
        _check(event)
        first = unique.setdefault(event.request_id, event)
        if first is not event:
            same = (first.account_id, first.charge, first.grants) == (
                event.account_id,
                event.charge,
                event.grants,
            )
            if same:
                outcome.duplicates.append(event.request_id)
            else:
                outcome.conflicts.append(event)
    if not unique:
        return outcome
    result = await conn.execute(
        _insert_ignoring_duplicates(conn), [_usage_row(e, now_ms) for e in unique.values()]
    )
    inserted = {row[0] for row in result}
    await _sort_out_existing(conn, [e for rid, e in unique.items() if rid not in inserted], outcome)
    new = [unique[rid] for rid in unique if rid in inserted]
    outcome.new = [e.request_id for e in new]
    debits: dict[tuple[str, str], int] = defaultdict(int)
    entries = []
    for event in new:
        legs = []
        for grant_id, amount in event.allocation():
            debits[(grant_id, event.account_id)] += amount
            legs += [
                Leg(event.account_id, grant_id, "grant", -amount),
                Leg(event.account_id, grant_id, "usage", amount),
            ]
        if legs:
            entries.append((f"usage:{event.request_id}", "usage", event.account_id, legs))
    for (grant_id, account_id), amount in sorted(debits.items()):  # one lock order: no deadlock
        await _debit(conn, grant_id, account_id, amount)
    await post(conn, entries, now_ms)
    return outcome


async def _sort_out_existing(conn: AsyncConnection, events: Sequence[UsageEvent], outcome: Recorded) -> None:
    """Ids already recorded: a duplicate if the content is the same, else a conflict."""
    if not events:
        return
    c = usage_records.c
    rows = await conn.execute(
        select(c.request_id, c.account_id, c.charge, c.grants).where(
            c.request_id.in_([e.request_id for e in events])
        )
    )
    known = {r.request_id: (r.account_id, r.charge, r.grants) for r in rows}
    for event in events:
        if known.get(event.request_id) == (event.account_id, event.charge, event.grants):
            outcome.duplicates.append(event.request_id)
        else:
            outcome.conflicts.append(event)


async def _debit(conn: AsyncConnection, grant_id: str, account_id: str, amount: int) -> None:
    result = await conn.execute(
        update(grants)
        .where(grants.c.id == grant_id, grants.c.account_id == account_id)
        .values(remaining=grants.c.remaining - amount)
    )
    if result.rowcount != 1:
        raise LedgerRefused(f"account {account_id} has no grant {grant_id}")


@dataclass(frozen=True, slots=True)
class LedgerGrant:
    """A grant as the ledger sees it: credits, what was charged, what is left."""

    id: str
    account_id: str
    package_id: str
    order_id: str
    credits: int
    spent: int  # the usage legs
    remaining: int  # the grant legs (= credits - spent)
    remaining_column: int  # grants.remaining, which must equal `remaining`
    models: tuple[str, ...] | None
    valid_from_ms: int
    valid_until_ms: int

    def live(self, now_ms: int) -> bool:
        return now_ms < self.valid_until_ms


async def ledger_grants(conn: AsyncConnection, account_ids: Sequence[str] | None = None) -> list[LedgerGrant]:
    """The grants of some accounts (all: None) with their ledger figures."""
    legs = ledger_legs.c
    sums = (
        select(
            legs.grant_id,
            func.sum(case((legs.book == "usage", legs.amount), else_=0)).label("spent"),
            func.sum(case((legs.book == "grant", legs.amount), else_=0)).label("left"),
        )
        .group_by(legs.grant_id)
        .subquery()
    )
    query = select(grants, sums.c.spent, sums.c.left).outerjoin(sums, sums.c.grant_id == grants.c.id)
    if account_ids is not None:
        query = query.where(grants.c.account_id.in_(list(account_ids)))
    rows = await conn.execute(query.order_by(grants.c.valid_until_ms, grants.c.id))
    return [
        LedgerGrant(
            id=r.id,
            account_id=r.account_id,
            package_id=r.package_id,
            order_id=r.order_id,
            credits=int(r.credits),
            spent=int(r.spent or 0),
            remaining=int(r.left or 0),
            remaining_column=int(r.remaining),
            models=tuple(r.models) if r.models is not None else None,
            valid_from_ms=int(r.valid_from_ms),
            valid_until_ms=int(r.valid_until_ms),
        )
        for r in rows
    ]


def ledger_balance(account_grants: Iterable[LedgerGrant], now_ms: int) -> dict[str, int]:
    """purchased, available, reserved, spent, expired by the ledger alone at ``now_ms``.

    The ledger knows no reservation (that is Redis's, in flight): reserved is 0 and what a
    request holds counts as available (or expired) until its usage is recorded.
    """
    bal = {"purchased": 0, "reserved": 0, "spent": 0, "expired": 0, "available": 0}
    for g in account_grants:
        bal["purchased"] += g.credits
        bal["spent"] += g.spent
        bal["available" if g.live(now_ms) else "expired"] += g.remaining
    return bal

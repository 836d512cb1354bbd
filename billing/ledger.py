"""Postings to the double-entry ledger, and balances derived from them.

Every change of credits is an entry whose legs sum to zero (the database checks it):

    purchase:<order_id>   grant +credits, sales -credits
    usage:<request_id>    grant -charge, usage +charge      (one pair per grant charged)
    adjustment:<id>       (correction) a credit: grant +credits, sales -credits of a new grant;
                          a debit: grant -n, sales +n per grant withdrawn from
    refund:<order_id>     (correction) grant -n, sales +n: what was left of the order's grant

A withdrawal (the last two) takes credits back: ``grants.withdrawn`` rises and
``grants.remaining`` falls in the same transaction, so a grant holds ``credits - withdrawn``
(its sales legs, negated) and ``remaining = credits - withdrawn - spent``.

A usage record's ``uncollected`` (what the request cost beyond what its balance could pay
at settlement) is no entry: no credits moved, so it is no debit.

A usage event is recorded at most once: its usage record is keyed by request id and the
insert skips an id already there, so a redelivered or duplicated event changes nothing
(``record_usage`` reports it as a duplicate, or as a conflict if its content differs).
``grants.remaining`` moves in the same transaction; its CHECK refuses an overdraft.

Which grants a charge draws from is decided by Redis at settlement (the soonest-expiring
grants valid for the model, see gateway/quota/lua/admit_v4.lua) and carried by the event,
so the ledger and Redis always agree grant by grant.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from sqlalchemy import Table, bindparam, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.db.schema import grants, ledger_entries, ledger_legs, usage_records
from gateway.contract import EVENT_FIELDS, UsageEvent


class LedgerRefused(ValueError):
    """The ledger cannot record this input as it is (a poison event, a bad purchase)."""


# The books a leg posts to: a grant's credits, what was sold, what was used.
Book = Literal["grant", "sales", "usage"]
# What an entry records: a package bought, a request's usage, an operator's correction.
EntryKind = Literal["purchase", "usage", "correction"]
Entry = tuple[str, EntryKind, str, Sequence["Leg"]]  # (id, kind, account_id, legs)


@dataclass(frozen=True, slots=True)
class Leg:
    account_id: str
    grant_id: str
    book: Book
    amount: int


@dataclass
class Recorded:
    """What one ``record_usage`` call did, by request id."""

    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    conflicts: list[UsageEvent] = field(default_factory=list)  # same id, other content: refused


async def post(
    conn: AsyncConnection, entries: Sequence[Entry], now_ms: int
) -> None:
    """Post entries ``(id, kind, account_id, legs)``: all legs first, then the entries."""
    legs = [
        (eid, leg.account_id, leg.grant_id, leg.book, leg.amount)
        for eid, _kind, _account, entry_legs in entries
        for leg in entry_legs
    ]
    if not legs:
        return
    await insert_rows(conn, ledger_legs, _LEG_COLUMNS, legs)
    rows = [(eid, kind, account, now_ms) for eid, kind, account, _legs in entries]
    await insert_rows(conn, ledger_entries, _ENTRY_COLUMNS, rows)


_LEG_COLUMNS = ("entry_id", "account_id", "grant_id", "book", "amount")
_ENTRY_COLUMNS = ("id", "kind", "account_id", "created_at_ms")
_USAGE_COLUMNS = (*EVENT_FIELDS, "recorded_at_ms")
_event_values = attrgetter(*EVENT_FIELDS)
_inserts: dict[tuple[str, str, str, tuple[str, ...]], str] = {}


def _insert_sql(conn: AsyncConnection, table: Table, columns: tuple[str, ...]) -> str:
    """The INSERT of ``columns`` in the connection's SQL and parameter style, compiled once."""
    key = (conn.dialect.name, conn.dialect.paramstyle, table.name, columns)
    sql = _inserts.get(key)
    if sql is None:
        compiled = table.insert().compile(dialect=conn.dialect, column_keys=list(columns))
        if tuple(compiled.positiontup or ()) != columns:  # the tuples are built in this order
            raise RuntimeError(f"{table.name}: parameters {compiled.positiontup} are not {columns}")
        sql = _inserts[key] = str(compiled)
    return sql


async def insert_rows(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert rows given as tuples (in ``columns`` order) with one driver executemany.

    The same INSERT as Core's, minus Core's per-row parameter processing (none of these
    columns has a bind processor the drivers need: strings, integers, booleans).
    """
    if rows:
        await conn.exec_driver_sql(_insert_sql(conn, table, columns), rows)


def purchase_legs(account_id: str, grant_id: str, credits: int) -> list[Leg]:
    return [Leg(account_id, grant_id, "grant", credits), Leg(account_id, grant_id, "sales", -credits)]


def withdrawal_legs(account_id: str, taken: Iterable[tuple[str, int]]) -> list[Leg]:
    """Credits taken back from grants: the purchase's legs reversed, per grant."""
    legs: list[Leg] = []
    for grant_id, n in taken:
        legs += [Leg(account_id, grant_id, "grant", -n), Leg(account_id, grant_id, "sales", n)]
    return legs


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
    outcome = Recorded()
    unique = _unique(events, outcome)
    if not unique:
        return outcome
    if conn.dialect.name == "sqlite":
        new = await _insert_new_sqlite(conn, unique, now_ms, outcome)
    else:
        new = await _insert_new(conn, unique, now_ms, outcome)
    outcome.new = [e.request_id for e, _ in new]
    debits: dict[tuple[str, str], int] = defaultdict(int)
    entries: list[Entry] = []
    for event, parts in new:
        legs = []
        for grant_id, amount in parts:
            debits[(grant_id, event.account_id)] += amount
            legs += [
                Leg(event.account_id, grant_id, "grant", -amount),
                Leg(event.account_id, grant_id, "usage", amount),
            ]
        if legs:
            entries.append((f"usage:{event.request_id}", "usage", event.account_id, legs))
    await _debit_all(conn, sorted(debits.items()))  # one lock order: no deadlock
    await post(conn, entries, now_ms)
    return outcome


Checked = tuple[UsageEvent, list[tuple[str, int]]]  # an event and its charge by grant


def _unique(events: Iterable[UsageEvent], outcome: Recorded) -> dict[str, Checked]:
    """The batch by request id (first wins); repeats within it are duplicates or conflicts."""
    unique: dict[str, Checked] = {}
    for event in events:
        parts = _check(event)
        first = unique.setdefault(event.request_id, (event, parts))[0]
        if first is not event:
            if _same(first, _identity(event)):
                outcome.duplicates.append(event.request_id)
            else:
                outcome.conflicts.append(event)
    return unique


def _identity(event: UsageEvent) -> tuple[Any, ...]:
    """What must match for a repeat of a request id to be a duplicate, not a conflict."""
    return (event.account_id, event.charge, event.grants, event.uncollected)


def _same(event: UsageEvent, known: tuple[Any, ...] | None) -> bool:
    """Whether a record (account, charge, grants, uncollected) is this event's."""
    return known == _identity(event)


async def _insert_new(
    conn: AsyncConnection, unique: dict[str, Checked], now_ms: int, outcome: Recorded
) -> list[Checked]:
    """Insert the records, skipping ids already there (INSERT .. ON CONFLICT .. RETURNING)."""
    result = await conn.execute(
        _insert_ignoring_duplicates(conn), [_usage_row(e, now_ms) for e, _ in unique.values()]
    )
    inserted = {row[0] for row in result}
    await _sort_out_existing(conn, [e for rid, (e, _) in unique.items() if rid not in inserted], outcome)
    return [checked for rid, checked in unique.items() if rid in inserted]


async def _insert_new_sqlite(
    conn: AsyncConnection, unique: dict[str, Checked], now_ms: int, outcome: Recorded
) -> list[Checked]:
    """Look the ids up, then insert the others: the same outcome as ON CONFLICT .. RETURNING.

    Exact because a SQLite transaction of the ledger begins IMMEDIATE (billing.db.engine):
    it holds the write lock from the start, so no record can appear between the look-up
    and the insert (if one ever did, the primary key would refuse the batch, not lose it).
    It spares the multi-row INSERT .. RETURNING that SQLAlchemy builds and parses row by row.
    """
    known = await _recorded(conn, list(unique))
    new: list[Checked] = []
    for rid, (event, parts) in unique.items():
        if rid not in known:
            new.append((event, parts))
        elif _same(event, known[rid]):
            outcome.duplicates.append(rid)
        else:
            outcome.conflicts.append(event)
    rows = [(*_event_values(event), now_ms) for event, _ in new]
    await insert_rows(conn, usage_records, _USAGE_COLUMNS, rows)
    return new


async def _recorded(conn: AsyncConnection, request_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """(account, charge, grants, uncollected) of the ids already recorded, in chunks."""
    c = usage_records.c
    known: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(request_ids), _IN_CHUNK):
        chunk = request_ids[start : start + _IN_CHUNK]
        rows = await conn.execute(
            select(c.request_id, c.account_id, c.charge, c.grants, c.uncollected).where(
                c.request_id.in_(chunk)
            )
        )
        known.update((r[0], (r[1], int(r[2]), r[3], int(r[4]))) for r in rows)
    return known


_IN_CHUNK = 500  # ids per IN (...): well under SQLite's bound-parameter limit


async def recorded_ids(conn: AsyncConnection, request_ids: Iterable[str]) -> set[str]:
    """Which of ``request_ids`` the ledger holds a usage record of (chunks of bound parameters)."""
    ids, found = sorted(set(request_ids)), set[str]()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        c = usage_records.c
        rows = await conn.execute(select(c.request_id).where(c.request_id.in_(chunk)))
        found.update(row[0] for row in rows)
    return found


async def _sort_out_existing(conn: AsyncConnection, events: Sequence[UsageEvent], outcome: Recorded) -> None:
    """Ids already recorded: a duplicate if the content is the same, else a conflict."""
    if not events:
        return
    known = await _recorded(conn, [e.request_id for e in events])
    for event in events:
        if _same(event, known.get(event.request_id)):
            outcome.duplicates.append(event.request_id)
        else:
            outcome.conflicts.append(event)


async def _debit_all(conn: AsyncConnection, debits: list[tuple[tuple[str, str], int]]) -> None:
    """Take the charges off ``grants.remaining`` (its CHECK refuses an overdraft).

    One executemany where the driver counts the rows it updated (SQLite): each (grant,
    account) matches at most one row (the grant's id is the key), so the sum of the counts
    equals the number of debits exactly when every one found its grant. Elsewhere (asyncpg
    reports no count for an executemany) one UPDATE per grant.
    """
    if not debits:
        return
    if not conn.dialect.supports_sane_multi_rowcount:
        for (grant_id, account_id), amount in debits:
            await _debit(conn, grant_id, account_id, amount)
        return
    rows = [{"g": grant_id, "a": account_id, "amount": amount} for (grant_id, account_id), amount in debits]
    result = await conn.execute(_DEBIT, rows)
    if result.rowcount != len(rows):
        await _name_missing_grant(conn, debits)


_DEBIT = (
    update(grants)
    .where(grants.c.id == bindparam("g"), grants.c.account_id == bindparam("a"))
    .values(remaining=grants.c.remaining - bindparam("amount"))
)


async def _name_missing_grant(conn: AsyncConnection, debits: list[tuple[tuple[str, str], int]]) -> None:
    """Raise LedgerRefused naming a (grant, account) of ``debits`` that the ledger lacks."""
    wanted = [key for key, _ in debits]
    rows = await conn.execute(
        select(grants.c.id, grants.c.account_id).where(grants.c.id.in_([g for g, _ in wanted]))
    )
    found = {(r[0], r[1]) for r in rows}
    grant_id, account_id = next((key for key in wanted if key not in found), wanted[0])
    raise LedgerRefused(f"account {account_id} has no grant {grant_id}")


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
    credits: int  # what the grant holds: bought less withdrawn (as Redis holds it)
    spent: int  # the usage legs
    remaining: int  # the grant legs (= credits - spent)
    remaining_column: int  # grants.remaining, which must equal `remaining`
    models: tuple[str, ...] | None
    valid_from_ms: int
    valid_until_ms: int  # a grant closed by a refund: the close
    withdrawn: int = 0  # grants.withdrawn: taken back (included in `credits`)
    sold: int | None = None  # the sales legs negated, which must equal `credits`

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
            func.sum(case((legs.book == "sales", legs.amount), else_=0)).label("sales"),
        )
        .group_by(legs.grant_id)
        .subquery()
    )
    query = select(grants, sums.c.spent, sums.c.left, sums.c.sales).outerjoin(
        sums, sums.c.grant_id == grants.c.id
    )
    if account_ids is not None:
        query = query.where(grants.c.account_id.in_(list(account_ids)))
    rows = await conn.execute(query.order_by(grants.c.valid_until_ms, grants.c.id))
    return [
        LedgerGrant(
            id=r.id,
            account_id=r.account_id,
            package_id=r.package_id,
            order_id=r.order_id,
            credits=int(r.credits) - int(r.withdrawn),
            spent=int(r.spent or 0),
            remaining=int(r.left or 0),
            remaining_column=int(r.remaining),
            models=tuple(r.models) if r.models is not None else None,
            valid_from_ms=int(r.valid_from_ms),
            valid_until_ms=int(r.valid_until_ms),
            withdrawn=int(r.withdrawn),
            sold=-int(r.sales or 0),
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

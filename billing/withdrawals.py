"""Withdrawals: credits taken back from grants (a debit adjustment, a refund), in Redis first,
then in the ledger, each once per operation id.

Redis decides what is taken (``AccountStore.withdraw``, ``lua/withdraw_v1.lua``): only it
knows what requests in flight hold, and it records the outcome under the operation id, so
a retry reads the same outcome back. The ledger then posts exactly that outcome
(:func:`post_withdrawal`): one entry whose id is the operation id, kind ``correction``,
legs grant -n / sales +n per grant, with ``grants.withdrawn`` raised, ``grants.remaining``
lowered and (a closed grant) ``grants.valid_until_ms`` set to the close, in one transaction.

Between the two steps the withdrawal exists in Redis only. Nothing is lost or doubled by a
crash there: a retry with the same operation id completes it, reconcile posts what Redis
made and the ledger lacks (:meth:`Withdrawals.unposted`), and its rebuild keeps such
withdrawals (``rebuild_v2.lua``) rather than "repairing" them away.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.clock import Clock, wall_ms
from billing.db.engine import transaction
from billing.db.schema import grants, ledger_entries, ledger_legs
from billing.errors import Conflict
from billing.ledger import LedgerRefused, post, withdrawal_legs
from billing.tiers import refresh_tier
from gateway.contract import AccountStore, NotFound, ServiceUnavailable, Withdrawal


async def posted_ids(conn: AsyncConnection, account_id: str, done: Iterable[Withdrawal]) -> set[str]:
    """Which of an account's withdrawals the ledger holds.

    A withdrawal that took credits is held once its entry is; one that took nothing (a
    grant closed with nothing left) has no entry, and is held once its grant is closed.
    """
    done = [w for w in done if w.applied]
    ids = [w.op_id for w in done if w.allocation]
    held: set[str] = set()
    if ids:
        rows = await conn.execute(
            select(ledger_entries.c.id).where(
                ledger_entries.c.id.in_(ids), ledger_entries.c.account_id == account_id
            )
        )
        held = {row[0] for row in rows}
    closes = {w.closed_grant: w for w in done if not w.allocation and w.closed_grant}
    if closes:
        rows = await conn.execute(
            select(grants.c.id, grants.c.valid_until_ms).where(grants.c.id.in_(list(closes)))
        )
        held |= {closes[r.id].op_id for r in rows if int(r.valid_until_ms) <= closes[r.id].closed_ms}
    return held


async def post_withdrawal(conn: AsyncConnection, account_id: str, done: Withdrawal, now_ms: int) -> bool:
    """Post a withdrawal Redis made, in the caller's transaction; False if already posted.

    The grants it touches are locked first (PostgreSQL; a SQLite transaction holds the
    database), so two callers posting one withdrawal queue and the second finds it posted.
    LedgerRefused if a grant is not the account's (the ledger and Redis disagree).
    """
    if not done.applied:
        return False
    touched = sorted({g for g, _ in done.allocation} | ({done.closed_grant} if done.closed_grant else set()))
    mine = grants.c.id.in_(touched), grants.c.account_id == account_id
    locked = await conn.execute(select(grants.c.id).where(*mine).order_by(grants.c.id).with_for_update())
    if len(list(locked)) != len(touched):
        raise LedgerRefused(f"withdrawal {done.op_id}: account {account_id} lacks a grant of {touched}")
    if done.op_id in await posted_ids(conn, account_id, [done]):
        return False
    for grant_id, n in sorted(done.allocation):
        await conn.execute(
            update(grants)
            .where(grants.c.id == grant_id)
            .values(withdrawn=grants.c.withdrawn + n, remaining=grants.c.remaining - n)
        )
    if done.closed_grant:
        await conn.execute(
            update(grants)
            .where(grants.c.id == done.closed_grant, grants.c.valid_until_ms > done.closed_ms)
            .values(valid_until_ms=done.closed_ms)
        )
    legs = withdrawal_legs(account_id, done.allocation)
    await post(conn, [(done.op_id, "correction", account_id, legs)], now_ms)
    return True


class Withdrawals:
    """Withdrawals from grants, for refunds (:meth:`withdraw_grant`) and reconcile."""

    def __init__(self, engine: AsyncEngine, store: AccountStore, clock: Clock = wall_ms) -> None:
        self.engine, self.store, self.clock = engine, store, clock

    async def withdraw_grant(self, grant_id: str, op_id: str) -> int:
        """Withdraw what is left of one grant, once per ``op_id``; the credits withdrawn.

        What is left is what the grant holds that is neither spent nor reserved by a request
        in flight, live or already expired. It is taken in Redis and the grant is closed
        there (expiry now), so what its reservations release later lapses as expired and
        never becomes available again; then the ledger posts entry ``op_id`` (kind
        ``correction``: grant -n, sales +n), raises ``grants.withdrawn`` by n and sets the
        grant's ``valid_until`` to the close, in one transaction.

        ``op_id`` names the operation, e.g. ``refund:<order id>``: it is the ledger entry's
        id and the key of the outcome Redis keeps. Calling again with it (a retry, a
        concurrent call, after a crash anywhere) withdraws nothing more and answers the
        same n; a crash between Redis and the ledger is completed by that retry or by
        reconcile. n may be 0 (all spent or reserved): the grant is closed all the same.

        Raises NotFound (unknown grant), Conflict (``op_id`` already withdrew from another
        grant or account), BalanceUnknown (Redis lost the account's balance: retry after
        reconcile), QuotaUnavailable or LedgerUnavailable (retry later).
        """
        async with transaction(self.engine) as conn:
            grant = (await conn.execute(select(grants).where(grants.c.id == grant_id))).first()
            if grant is None:
                raise NotFound(f"no grant {grant_id!r}")
            legs = await _entry_legs(conn, op_id)
        if legs:
            if {(a, g) for a, g, _ in legs} != {(grant.account_id, grant_id)}:
                raise Conflict(f"operation {op_id!r} withdrew from another grant")
            return sum(n for _, _, n in legs)
        done = await self.store.withdraw(
            grant.account_id, op_id, grant_id=grant_id, not_before_ms=int(grant.valid_from_ms) + 1
        )
        if done is None:  # Redis lacks the grant: its purchase was not applied there yet
            await self._apply(grant)
            done = await self.store.withdraw(
                grant.account_id, op_id, grant_id=grant_id, not_before_ms=int(grant.valid_from_ms) + 1
            )
            if done is None:
                raise ServiceUnavailable(
                    f"grant {grant_id} is not in Redis yet; reconcile applies it",
                    code="grant_not_applied",
                    headers={"Retry-After": "5"},
                )
        if done.closed_grant != grant_id:
            raise Conflict(f"operation {op_id!r} withdrew from another grant")
        await self.post(grant.account_id, done)
        await refresh_tier(self.engine, self.store, grant.account_id, self.clock())  # it was the best?
        return done.credits

    async def post(self, account_id: str, done: Withdrawal) -> bool:
        """The ledger's half of a withdrawal Redis made; False if already posted."""
        async with transaction(self.engine) as conn:
            return await post_withdrawal(conn, account_id, done, self.clock())

    async def unposted(self, account_id: str) -> list[Withdrawal]:
        """The account's withdrawals that Redis made and the ledger lacks (reconcile posts them)."""
        done = [w for w in (await self.store.withdrawals(account_id)).values() if w.applied]
        if not done:
            return []
        async with transaction(self.engine) as conn:
            held = await posted_ids(conn, account_id, done)
        return [w for w in done if w.op_id not in held]

    async def _apply(self, grant: Any) -> None:
        """Credit a grant Redis lacks with what the ledger says it holds (once per grant id)."""
        holds = int(grant.credits) - int(grant.withdrawn)
        if holds > 0:
            await self.store.credit(
                grant.account_id,
                holds,
                grant_id=grant.id,
                expires_ms=int(grant.valid_until_ms),
                models=grant.models,
            )


async def _entry_legs(conn: AsyncConnection, entry_id: str) -> list[tuple[str, str, int]]:
    """(account, grant, credits withdrawn) of a posted withdrawal entry's sales legs."""
    legs = ledger_legs.c
    rows = await conn.execute(
        select(legs.account_id, legs.grant_id, func.sum(legs.amount))
        .where(legs.entry_id == entry_id, legs.book == "sales")
        .group_by(legs.account_id, legs.grant_id)
    )
    return [(r[0], r[1], int(r[2])) for r in rows]

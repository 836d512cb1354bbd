"""Adjustments: an operator's signed correction of an account's credits, once per
(account, idempotency key).

A credit (+N) is a new grant of the ``adjustment`` package holding N credits for 36,500
days: the adjustment row (``applied``), the grant and its ledger entry ``adjustment:<id>``
(kind ``correction``: grant +N, sales -N) and the audit line commit together, then Redis
is credited (once per grant id; reconcile applies a grant Redis lacks).

A debit (-N) never takes the account below zero, and only Redis knows what is available
now (requests in flight hold reservations nowhere else). So: the row is recorded
``pending``; Redis takes N from the live grants in drawing order, or refuses and changes
nothing (``withdraw_v1.lua``, once per operation ``adjustment:<id>``); then the ledger
posts what Redis took (billing/withdrawals.py) and the row becomes ``applied``, or
``refused`` (409, ``insufficient_balance``), with its audit line, in one transaction. A
crash in between leaves the row ``pending``: a retry with the key, or reconcile, completes
it with the outcome Redis recorded, never taking twice.

The same key again with the same credits and reason answers the same adjustment (a refused
debit is refused again); with other content it is a Conflict.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, exc, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing import audit
from billing.clock import DAY_MS, Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import ADJUSTMENT_PACKAGE, accounts, adjustments, grants
from billing.directory import decode_cursor, encode_cursor
from billing.errors import Conflict
from billing.ledger import post, purchase_legs
from billing.records import Adjustment, AdjustmentPage, Withdrawn
from billing.withdrawals import Withdrawals, post_withdrawal
from gateway.contract import (
    AccountStore,
    BadRequest,
    BalanceUnknown,
    NotFound,
    QuotaUnavailable,
    Withdrawal,
    format_allocation,
    parse_allocation,
)

log = logging.getLogger("tokengate.billing")

VALID_DAYS = 36_500  # a credit adjustment's grant: as good as never expiring
MAX_CREDITS = 2**50
MAX_LISTED = 500


def adjustment_of(row: Any) -> Adjustment:
    allocation: list[Withdrawn] | None = None
    if row.allocation is not None:
        allocation = [{"grant_id": g, "credits": n} for g, n in parse_allocation(row.allocation)]
    return {
        "id": row.id,
        "account_id": row.account_id,
        "credits": int(row.credits),
        "reason": row.reason,
        "idempotency_key": row.idempotency_key,
        "status": row.status,
        "grant_id": row.grant_id,
        "allocation": allocation,
        "created_at": ms_to_iso(row.created_at_ms),
    }


def op_id(adjustment_id: str) -> str:
    """The withdrawal's operation id and the ledger entry's id of an adjustment."""
    return f"adjustment:{adjustment_id}"


def _check(credits: int, reason: str, key: str) -> None:
    if isinstance(credits, bool) or not isinstance(credits, int) or not 0 < abs(credits) <= MAX_CREDITS:
        raise BadRequest("credits is a non-zero whole number (negative: a debit)", param="credits")
    if not 1 <= len(reason) <= 500:
        raise BadRequest("reason is 1 to 500 characters", param="reason")
    if not 1 <= len(key) <= 200:
        raise BadRequest("idempotency_key is 1 to 200 characters", param="idempotency_key")


def _refused(row: Any) -> Conflict:
    return Conflict(
        f"adjustment {row.id} refused: account {row.account_id} had fewer than {-int(row.credits)} "
        "credits available (reserved credits are not available); nothing changed",
        code="insufficient_balance",
    )


class AdjustmentService:
    def __init__(self, engine: AsyncEngine, store: AccountStore, clock: Clock = wall_ms) -> None:
        self.engine, self.store, self.clock = engine, store, clock
        self.withdrawals = Withdrawals(engine, store, clock)

    async def adjust(
        self, account_id: str, credits: int, reason: str, idempotency_key: str, actor: str = "admin"
    ) -> tuple[Adjustment, bool]:
        """(the adjustment, created). NotFound (account), BadRequest, Conflict (the key was
        used with other content; a debit past the available balance: ``insufficient_balance``),
        BalanceUnknown / QuotaUnavailable for a debit Redis cannot do now (it stays pending)."""
        _check(credits, reason, idempotency_key)
        row, created = await self._record(account_id, credits, reason, idempotency_key, actor)
        if int(row.credits) > 0:
            await self._apply_grant(row.grant_id)
        elif row.status == "pending":
            row = await self.complete(row)
        if row.status == "refused":
            raise _refused(row)
        return adjustment_of(row), created

    async def complete(self, row: Any) -> Any:
        """Finish a pending debit: Redis's outcome (taken now, or the one it recorded before),
        then the ledger, the row's status and the audit line in one transaction. The row."""
        done = await self.store.withdraw(row.account_id, op_id(row.id), credits=-int(row.credits))
        if done is None:  # only a withdrawal of one grant can find it missing
            raise RuntimeError(f"withdrawal {op_id(row.id)}: Redis answered 'missing' to an amount")
        async with transaction(self.engine) as conn:
            current = await _locked(conn, row.id)
            if current.status != "pending":
                return current  # completed meanwhile (a concurrent retry, reconcile)
            await self._finish(conn, current, done)
            return await _locked(conn, row.id)

    async def pending(self, account_ids: Sequence[str]) -> list[Any]:
        """The debits left pending (a crash between Redis and the ledger), oldest first."""
        c, ids, found = adjustments.c, list(account_ids), []
        async with transaction(self.engine) as conn:
            for start in range(0, len(ids), 500):  # bound parameters per query stay few
                query = select(adjustments).where(
                    c.status == "pending", c.account_id.in_(ids[start : start + 500])
                )
                found += list(await conn.execute(query))
        return sorted(found, key=lambda r: (r.created_at_ms, r.id))

    async def list_adjustments(
        self, account_id: str, limit: int = 100, cursor: str | None = None
    ) -> AdjustmentPage:
        """The account's adjustments, newest first, paged like the other admin lists."""
        if not 1 <= limit <= MAX_LISTED:
            raise BadRequest(f"limit must be between 1 and {MAX_LISTED}", param="limit")
        c = adjustments.c
        query = select(adjustments).where(c.account_id == account_id)
        if cursor:
            at, last = decode_cursor(cursor)
            query = query.where(or_(c.created_at_ms < at, and_(c.created_at_ms == at, c.id < last)))
        query = query.order_by(c.created_at_ms.desc(), c.id.desc()).limit(limit + 1)
        async with transaction(self.engine) as conn:
            if not await _account_exists(conn, account_id):
                raise NotFound(f"no account {account_id!r}")
            rows = list(await conn.execute(query))
        more, rows = len(rows) > limit, rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at_ms, rows[-1].id) if more and rows else None
        return {"data": [adjustment_of(r) for r in rows], "next_cursor": next_cursor}

    async def _record(
        self, account_id: str, credits: int, reason: str, key: str, actor: str
    ) -> tuple[Any, bool]:
        """The adjustment of this key: found (same content) or recorded now. A credit's grant,
        entry and audit line commit with it; a debit is recorded pending."""
        try:
            async with transaction(self.engine) as conn:
                existing = await _by_key(conn, account_id, key)
                if existing is not None:
                    return _same(existing, credits, reason), False
                if not await _account_exists(conn, account_id):
                    raise NotFound(f"no account {account_id!r}")
                row = await self._insert(conn, account_id, credits, reason, key, actor)
                return row, True
        except exc.IntegrityError:  # the same key, committed by a concurrent request
            async with transaction(self.engine) as conn:
                existing = await _by_key(conn, account_id, key)
            if existing is None:
                raise
            return _same(existing, credits, reason), False

    async def _insert(
        self, conn: AsyncConnection, account_id: str, credits: int, reason: str, key: str, actor: str
    ) -> Any:
        now = self.clock()
        adjustment_id = "adj_" + secrets.token_hex(8)
        grant_id = None
        if credits > 0:
            grant_id = "gr_" + secrets.token_hex(8)
            await conn.execute(
                grants.insert().values(
                    id=grant_id,
                    account_id=account_id,
                    package_id=ADJUSTMENT_PACKAGE,
                    order_id=op_id(adjustment_id),
                    credits=credits,
                    remaining=credits,
                    models=None,
                    valid_from_ms=now,
                    valid_until_ms=now + VALID_DAYS * DAY_MS,
                    list_price=None,
                )
            )
        await conn.execute(
            adjustments.insert().values(
                id=adjustment_id,
                account_id=account_id,
                idempotency_key=key,
                credits=credits,
                reason=reason,
                status="applied" if credits > 0 else "pending",
                grant_id=grant_id,
                allocation=None,
                actor=actor,
                created_at_ms=now,
            )
        )
        if grant_id is not None:
            legs = purchase_legs(account_id, grant_id, credits)
            await post(conn, [(op_id(adjustment_id), "correction", account_id, legs)], now)
            await audit.record(
                conn,
                at_ms=now,
                actor=actor,
                action="adjustment.applied",
                target=f"account:{account_id}",
                detail={
                    "adjustment_id": adjustment_id,
                    "credits": credits,
                    "reason": reason,
                    "idempotency_key": key,
                    "grant_id": grant_id,
                },
            )
        return await _locked(conn, adjustment_id)

    async def _finish(self, conn: AsyncConnection, row: Any, done: Withdrawal) -> None:
        """Post a debit's outcome: the withdrawal and ``applied``, or ``refused``; audited."""
        now = self.clock()
        detail: dict[str, Any] = {
            "adjustment_id": row.id,
            "credits": int(row.credits),
            "reason": row.reason,
            "idempotency_key": row.idempotency_key,
            "available": done.available,
        }
        if done.applied:
            await post_withdrawal(conn, row.account_id, done, now)
            allocation = format_allocation(done.allocation)
            values: dict[str, Any] = {"status": "applied", "allocation": allocation}
            detail["allocation"] = allocation
        else:
            values = {"status": "refused"}
        await conn.execute(update(adjustments).where(adjustments.c.id == row.id).values(**values))
        await audit.record(
            conn,
            at_ms=now,
            actor=row.actor,
            action=f"adjustment.{values['status']}",
            target=f"account:{row.account_id}",
            detail=detail,
        )

    async def _apply_grant(self, grant_id: str) -> None:
        """Credit a credit adjustment's grant to Redis (a no-op once done; reconcile if it fails)."""
        async with transaction(self.engine) as conn:
            grant = (await conn.execute(select(grants).where(grants.c.id == grant_id))).one()
        holds = int(grant.credits) - int(grant.withdrawn)
        if holds <= 0:
            return
        try:
            await self.store.credit(
                grant.account_id,
                holds,
                grant_id=grant.id,
                expires_ms=int(grant.valid_until_ms),
                models=grant.models,
            )
        except (BalanceUnknown, QuotaUnavailable) as error:
            log.warning(
                "grant %s not in Redis yet (%s): reconcile applies it", grant.id, error.__class__.__name__
            )


async def _account_exists(conn: AsyncConnection, account_id: str) -> bool:
    return (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is not None


async def _by_key(conn: AsyncConnection, account_id: str, key: str) -> Any:
    c = adjustments.c
    return (
        await conn.execute(select(adjustments).where(c.account_id == account_id, c.idempotency_key == key))
    ).first()


async def _locked(conn: AsyncConnection, adjustment_id: str) -> Any:
    """The row, locked until the transaction ends (PostgreSQL; SQLite holds the database)."""
    query = select(adjustments).where(adjustments.c.id == adjustment_id).with_for_update()
    return (await conn.execute(query)).one()


def _same(existing: Any, credits: int, reason: str) -> Any:
    if (int(existing.credits), existing.reason) != (credits, reason):
        raise Conflict(
            f"idempotency key {existing.idempotency_key!r} was used for another adjustment ({existing.id})",
            code="idempotency_conflict",
        )
    return existing

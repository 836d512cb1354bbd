"""An account's balance and grants as the API shows them.

The figures come from Redis, by Redis time, in one script: they include the reservations
of requests in flight, so ``purchased = available + reserved + spent + expired`` holds at
the instant they were read, per grant and in total. The ledger adds what Redis does not
keep (package, validity start). When Redis lost the balance, the admin view falls back to
the ledger's own figures (no reservation known) and says so in ``balance_source``.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.clock import Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import grants
from billing.ledger import ledger_balance, ledger_grants
from billing.records import Balance, GrantBalance, Totals
from gateway.contract import AccountStore, BalanceUnknown, GrantState


def _grant(state: GrantState, meta: Any) -> GrantBalance:
    return {
        "id": state.id,
        "package_id": meta.package_id if meta is not None else None,
        "credits": state.credits,
        "remaining": state.available + state.reserved,  # neither spent nor expired
        "available": state.available,
        "reserved": state.reserved,
        "spent": state.spent,
        "expired": state.expired,
        "models": list(state.models) if state.models is not None else None,
        "valid_from": ms_to_iso(meta.valid_from_ms) if meta is not None else None,
        "valid_until": ms_to_iso(state.expires_ms) if state.expires_ms else None,
    }


async def account_balance(
    engine: AsyncEngine,
    store: AccountStore,
    account_id: str,
    *,
    ledger_fallback: bool = False,
    clock: Clock = wall_ms,
) -> Balance:
    """The account's totals and grants; BalanceUnknown unless ``ledger_fallback``."""
    try:
        view = await store.view(account_id)
    except BalanceUnknown:
        if not ledger_fallback:
            raise
        return await _from_ledger(engine, account_id, clock())
    async with transaction(engine) as conn:
        rows = await conn.execute(select(grants).where(grants.c.account_id == account_id))
        meta = {row.id: row for row in rows}
    return {
        "balance": cast(Totals, view.totals()),
        "grants": [_grant(g, meta.get(g.id)) for g in view.grants],
        "balance_source": "redis",
    }


async def _from_ledger(engine: AsyncEngine, account_id: str, now_ms: int) -> Balance:
    async with transaction(engine) as conn:
        found = await ledger_grants(conn, [account_id])
    listed = []
    for g in found:
        live = g.live(now_ms)
        state = GrantState(
            id=g.id,
            credits=g.credits,
            available=g.remaining if live else 0,
            reserved=0,
            spent=g.spent,
            expired=0 if live else g.remaining,
            expires_ms=g.valid_until_ms,
            models=g.models,
        )
        listed.append(_grant(state, g))
    totals = cast(Totals, ledger_balance(found, now_ms))
    return {"balance": totals, "grants": listed, "balance_source": "ledger"}

"""Adjustments and withdrawals through the service, on each ledger backend and a real Redis:
a credit or a debit applies once per idempotency key, a debit never takes the available
balance below zero (reserved credits are not available), a grant's rest is withdrawn once
and the grant closed, a crash between Redis and the ledger is completed by a retry or by
reconcile, and a rebuild keeps every withdrawal."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from billing.adjustments import op_id
from billing.db.schema import ADJUSTMENT_PACKAGE, adjustments, audit_log, grants, ledger_entries, ledger_legs
from billing.errors import Conflict
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway import keyspace
from gateway.errors import BalanceExhausted, NotFound
from gateway.quota.keys import grants_key, withdrawals_key
from gateway.quota.store import QuotaStore

from .helpers import Funded, Pack, conserved, drain, funded, ledger_figures, new_id, redis_now

pytestmark = pytest.mark.timeout(60)


async def admit(store: QuotaStore, who: Funded, rid: str, max_tokens: int = 20) -> int:
    """Hold a reservation: 10 prompt tokens at 1 credit, ``max_tokens`` at 2."""
    adm = await store.admit(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        model="m",
        prompt_tokens=10,
        max_tokens=max_tokens,
        max_tokens_ceiling=1000,
        input_pm=1000,
        output_pm=2000,
    )
    return adm.reserve


async def settle(store: QuotaStore, who: Funded, rid: str, completion: int) -> int:
    event = await store.settle_event(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        prompt_tokens=10,
        completion_tokens=completion,
        status="ok",
        counted_by="upstream",
        stream=False,
        cluster="c",
        endpoint="e",
    )
    assert event is not None
    return event.charge


async def ledger_state(billing: Billing, account_id: str) -> dict[str, Any]:
    """What the ledger holds of an account: its entries, the legs' sums, its grants' columns."""
    async with billing.engine.connect() as conn:
        entries = {
            r[0]
            for r in await conn.execute(
                select(ledger_entries.c.id).where(ledger_entries.c.account_id == account_id)
            )
        }
        unbalanced = list(
            await conn.execute(
                select(ledger_legs.c.entry_id)
                .where(ledger_legs.c.account_id == account_id)
                .group_by(ledger_legs.c.entry_id)
                .having(func.sum(ledger_legs.c.amount) != 0)
            )
        )
        rows = await conn.execute(
            select(grants.c.id, grants.c.remaining, grants.c.withdrawn, grants.c.valid_until_ms).where(
                grants.c.account_id == account_id
            )
        )
        columns = {r.id: (int(r.remaining), int(r.withdrawn), int(r.valid_until_ms)) for r in rows}
    assert unbalanced == []  # every entry's legs sum to zero
    return {"entries": entries, "grants": columns}


async def assert_agree(billing: Billing, store: QuotaStore, account_id: str) -> dict[str, int]:
    """With no request in flight and all usage recorded: the ledger equals Redis, grant by grant."""
    view = await store.view(account_id)
    bal = view.totals()
    assert conserved(bal) and bal["reserved"] == 0
    assert await ledger_figures(billing, account_id, view.now_ms) == bal
    async with billing.engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(select(grants).where(grants.c.account_id == account_id))}
    for g in view.grants:
        row = rows[g.id]
        assert (g.credits, g.expires_ms) == (int(row.credits) - int(row.withdrawn), int(row.valid_until_ms))
    return bal


async def no_drift(billing: Billing, account_id: str, *, apply: bool = False) -> None:
    report = await Reconciler(billing.store, billing.engine, grace_s=0).run(
        apply=apply, account_ids=[account_id]
    )
    assert not report.drift and not report.ledger and not report.pending, report.lines()


async def test_a_credit_applies_once_per_key(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100)])
    key = new_id("key")
    first, created = await billing.adjustments.adjust(who.account_id, 250, "goodwill", key)
    assert created and first["status"] == "applied" and first["credits"] == 250
    assert first["grant_id"] and first["allocation"] is None
    assert set(first) == {
        "id",
        "account_id",
        "credits",
        "reason",
        "idempotency_key",
        "status",
        "grant_id",
        "allocation",
        "created_at",
    }
    again, created = await billing.adjustments.adjust(who.account_id, 250, "goodwill", key)
    assert (again, created) == (first, False)
    for credits, reason in ((251, "goodwill"), (250, "other"), (-250, "goodwill")):
        with pytest.raises(Conflict):
            await billing.adjustments.adjust(who.account_id, credits, reason, key)
    bal = await assert_agree(billing, store, who.account_id)
    assert bal["purchased"] == bal["available"] == 350
    state = await ledger_state(billing, who.account_id)
    assert op_id(first["id"]) in state["entries"]
    async with billing.engine.connect() as conn:
        grant = (await conn.execute(select(grants).where(grants.c.id == first["grant_id"]))).one()
        audit = list(
            await conn.execute(select(audit_log).where(audit_log.c.target == f"account:{who.account_id}"))
        )
    assert grant.package_id == ADJUSTMENT_PACKAGE and grant.order_id == op_id(first["id"])
    assert [a.action for a in audit] == ["adjustment.applied"] and audit[0].detail["credits"] == 250
    await no_drift(billing, who.account_id)


async def test_a_debit_never_takes_the_available_balance_below_zero(billing: Billing, redis: Redis) -> None:
    """A request in flight holds 50 of 100 credits: a debit of 51 is refused, 50 applies."""
    store, r1 = QuotaStore(redis), new_id("r")
    who = await funded(billing, [Pack(100)])
    held = await admit(store, who, r1)
    assert held == 50
    before_redis, before_ledger = (
        await store.balance(who.account_id),
        await ledger_state(billing, who.account_id),
    )
    key = new_id("key")
    for _ in range(2):  # refused, and refused again with the same key: nothing changes
        with pytest.raises(Conflict) as refused:
            await billing.adjustments.adjust(who.account_id, -51, "chargeback", key)
        assert refused.value.code == "insufficient_balance" and refused.value.status == 409
        assert await store.balance(who.account_id) == before_redis
        assert await ledger_state(billing, who.account_id) == before_ledger
    [row] = (await billing.adjustments.list_adjustments(who.account_id))["data"]
    assert row["status"] == "refused" and row["allocation"] is None

    debit, created = await billing.adjustments.adjust(who.account_id, -50, "chargeback", new_id("key"))
    grant = who.grants[0]["id"]
    assert created and debit["status"] == "applied"
    assert debit["allocation"] == [{"grant_id": grant, "credits": 50}]
    bal = await store.balance(who.account_id)
    assert bal == {"purchased": 50, "available": 0, "reserved": 50, "spent": 0, "expired": 0}
    with pytest.raises(BalanceExhausted):
        await admit(store, who, new_id("r"), max_tokens=1)
    charged = await settle(store, who, r1, 5)  # 20: the 30 released become available again
    assert await store.balance(who.account_id) == {
        "purchased": 50,
        "available": 30,
        "reserved": 0,
        "spent": charged,
        "expired": 0,
    }
    await drain(billing, redis)
    await assert_agree(billing, store, who.account_id)
    state = await ledger_state(billing, who.account_id)
    assert state["grants"][grant][:2] == (30, 50)  # remaining, withdrawn
    async with billing.engine.connect() as conn:
        actions = [
            r[0]
            for r in await conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.target == f"account:{who.account_id}")
                .order_by(audit_log.c.id)
            )
        ]
    assert actions == ["adjustment.refused", "adjustment.applied"]
    await no_drift(billing, who.account_id)


async def test_a_debit_draws_the_soonest_expiring_grants_first(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100, days=30), Pack(80, days=3, models=["x"])])
    late, soon = who.grants[0]["id"], who.grants[1]["id"]
    debit, _ = await billing.adjustments.adjust(who.account_id, -120, "correction", new_id("key"))
    assert debit["allocation"] == [{"grant_id": soon, "credits": 80}, {"grant_id": late, "credits": 40}]
    bal = await assert_agree(billing, store, who.account_id)
    assert bal["purchased"] == bal["available"] == 60
    listed = await billing.adjustments.list_adjustments(who.account_id)
    assert [a["id"] for a in listed["data"]] == [debit["id"]] and listed["next_cursor"] is None
    with pytest.raises(NotFound):
        await billing.adjustments.adjust("acct-nobody", 5, "x", "k")
    with pytest.raises(NotFound):
        await billing.adjustments.list_adjustments("acct-nobody")
    await no_drift(billing, who.account_id)


async def test_withdraw_grant_takes_the_rest_once_and_closes_the_grant(
    billing: Billing, redis: Redis
) -> None:
    """A request in flight holds 50 of the grant's 100: 50 are withdrawn; what the request
    releases later lapses as expired instead of becoming available."""
    store, r1 = QuotaStore(redis), new_id("r")
    who = await funded(billing, [Pack(100), Pack(40, days=60)])
    grant, other = who.grants[0]["id"], who.grants[1]["id"]
    assert await admit(store, who, r1) == 50  # from the grant that expires first
    op = f"refund:{new_id('order')}"
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, op) == 50
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, op) == 50  # once
    view = await store.view(who.account_id)
    closed = {g.id: g for g in view.grants}[grant]
    assert (closed.credits, closed.available, closed.reserved) == (50, 0, 50)
    assert closed.expires_ms <= view.now_ms
    state = await ledger_state(billing, who.account_id)
    assert state["grants"][grant] == (50, 50, closed.expires_ms) and op in state["entries"]
    with pytest.raises(Conflict):
        await billing.adjustments.withdrawals.withdraw_grant(other, op)
    with pytest.raises(NotFound):
        await billing.adjustments.withdrawals.withdraw_grant("gr_nothing", new_id("refund"))

    charged = await settle(store, who, r1, 5)
    bal = await store.balance(who.account_id)
    assert bal == {"purchased": 90, "available": 40, "reserved": 0, "spent": charged, "expired": 50 - charged}
    await drain(billing, redis)
    await assert_agree(billing, store, who.account_id)
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, op) == 50
    await no_drift(billing, who.account_id)
    # Another operation on the closed grant takes what lapsed there (expired credits are left
    # too), and closes it no further.
    lapsed = 50 - charged
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, f"refund:{new_id('again')}") == lapsed
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, f"refund:{new_id('more')}") == 0
    bal = await assert_agree(billing, store, who.account_id)
    assert bal == {"purchased": 40 + charged, "available": 40, "reserved": 0, "spent": charged, "expired": 0}
    assert (await ledger_state(billing, who.account_id))["grants"][grant] == (
        0,
        100 - charged,
        closed.expires_ms,
    )
    await no_drift(billing, who.account_id)


async def test_a_debit_cut_short_by_a_crash_is_completed_by_a_retry(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100)])
    key = new_id("key")
    row, created = await billing.adjustments._record(who.account_id, -40, "chargeback", key, "admin")
    assert created and row.status == "pending"
    done = await store.withdraw(who.account_id, op_id(row.id), credits=40)  # Redis, then the crash
    assert done is not None and done.applied and done.credits == 40
    assert (await store.balance(who.account_id))["purchased"] == 60
    assert (await ledger_figures(billing, who.account_id))["purchased"] == 100
    report = await Reconciler(billing.store, billing.engine, grace_s=0).run(
        apply=False, account_ids=[who.account_id]
    )
    assert not report.drift and report.pending == [op_id(row.id)]  # no "repair" of the withdrawal

    adjusted, created = await billing.adjustments.adjust(who.account_id, -40, "chargeback", key)
    assert not created and adjusted["status"] == "applied" and adjusted["id"] == row.id
    bal = await assert_agree(billing, store, who.account_id)
    assert bal["purchased"] == 60
    await no_drift(billing, who.account_id)


async def test_reconcile_completes_what_a_crash_left_half_done(billing: Billing, redis: Redis) -> None:
    """A debit recorded but never sent to Redis, a debit Redis made, a refund Redis made:
    reconcile finishes all three, once, and the ledger then equals Redis."""
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100), Pack(100, days=60)])
    never, _ = await billing.adjustments._record(who.account_id, -10, "a", new_id("key"), "admin")
    half, _ = await billing.adjustments._record(who.account_id, -20, "b", new_id("key"), "admin")
    await store.withdraw(who.account_id, op_id(half.id), credits=20)
    refund = f"refund:{new_id('order')}"
    taken = await store.withdraw(who.account_id, refund, grant_id=who.grants[1]["id"])
    assert taken is not None and taken.credits == 100

    report = await Reconciler(billing.store, billing.engine, grace_s=0).run(
        apply=True, account_ids=[who.account_id]
    )
    assert not report.drift and not report.ledger and not report.pending, report.lines()
    async with billing.engine.connect() as conn:
        statuses = {
            r.id: r.status
            for r in await conn.execute(select(adjustments).where(adjustments.c.account_id == who.account_id))
        }
    assert statuses == {never.id: "applied", half.id: "applied"}
    state = await ledger_state(billing, who.account_id)
    assert {op_id(never.id), op_id(half.id), refund} <= state["entries"]
    bal = await assert_agree(billing, store, who.account_id)
    assert bal["purchased"] == 70 and bal["available"] == 70
    assert await billing.adjustments.withdrawals.withdraw_grant(who.grants[1]["id"], refund) == 100
    await no_drift(billing, who.account_id)


async def test_a_rebuild_restores_what_grants_hold_after_withdrawals(billing: Billing, redis: Redis) -> None:
    """Redis loses the account (balance, grants, withdrawals) after credits, debits, a refund
    and usage: the rebuild restores the credits the grants hold and the closed grant's expiry."""
    store, r1 = QuotaStore(redis), new_id("r")
    who = await funded(billing, [Pack(300), Pack(100, days=60)])
    await billing.adjustments.adjust(who.account_id, 70, "goodwill", new_id("key"))
    await billing.adjustments.adjust(who.account_id, -90, "chargeback", new_id("key"))
    await admit(store, who, r1)
    await settle(store, who, r1, 7)
    await billing.adjustments.withdrawals.withdraw_grant(who.grants[1]["id"], f"refund:{new_id('o')}")
    await drain(billing, redis)
    before = await store.view(who.account_id)
    await assert_agree(billing, store, who.account_id)
    await redis.delete(
        keyspace.balance_key(who.account_id), grants_key(who.account_id), withdrawals_key(who.account_id)
    )
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    after = await store.view(who.account_id)
    assert after.totals() == before.totals()
    assert [(g.id, g.credits, g.spent, g.expires_ms) for g in after.grants] == [
        (g.id, g.credits, g.spent, g.expires_ms) for g in before.grants
    ]
    await assert_agree(billing, store, who.account_id)
    await no_drift(billing, who.account_id)


async def test_a_rebuild_keeps_a_withdrawal_the_ledger_lacks(
    billing: Billing, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The balance is lost while a refund and a debit are between Redis and the ledger (made
    after reconcile completed what was pending): the rebuild keeps both withdrawals, the
    closed grant's expiry too (they are not repaired away); the next pass posts them once."""
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100), Pack(60, days=60)])
    refund = f"refund:{new_id('order')}"
    await store.withdraw(who.account_id, refund, grant_id=who.grants[1]["id"])
    debit, _ = await billing.adjustments._record(who.account_id, -30, "b", new_id("key"), "admin")
    await store.withdraw(who.account_id, op_id(debit.id), credits=30)
    before = await store.view(who.account_id)
    assert before.totals()["purchased"] == 70
    await redis.delete(keyspace.balance_key(who.account_id), grants_key(who.account_id))

    async def too_early(self: Reconciler, ids: Any, apply: bool, report: Any) -> list[str]:
        return []  # as if both withdrawals were made just after this step

    with monkeypatch.context() as patch:
        patch.setattr(Reconciler, "_complete_withdrawals", too_early)
        await Reconciler(billing.store, billing.engine, grace_s=0).run(
            apply=True, account_ids=[who.account_id]
        )
    after = await store.view(who.account_id)
    assert after.totals() == before.totals()
    assert [(g.id, g.credits, g.expires_ms) for g in after.grants] == [
        (g.id, g.credits, g.expires_ms) for g in before.grants
    ]
    assert (await ledger_figures(billing, who.account_id))["purchased"] == 160
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    await assert_agree(billing, store, who.account_id)
    assert {refund, op_id(debit.id)} <= (await ledger_state(billing, who.account_id))["entries"]
    await no_drift(billing, who.account_id)


async def test_a_withdrawal_from_a_grant_redis_lacks_applies_the_grant_first(
    billing: Billing, redis: Redis
) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100)])
    grant = who.grants[0]["id"]
    await redis.hdel(grants_key(who.account_id), grant)  # its purchase never reached Redis
    assert await billing.adjustments.withdrawals.withdraw_grant(grant, f"refund:{new_id('o')}") == 100
    bal = await assert_agree(billing, store, who.account_id)
    assert bal["purchased"] == 0
    assert (await redis_now(redis)) >= (await store.view(who.account_id)).grants[0].expires_ms
    await no_drift(billing, who.account_id)

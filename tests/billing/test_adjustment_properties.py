"""Property-based test (hypothesis) of adjustments and withdrawals among purchases and usage,
against the real databases and Redis.

A state machine buys packages (some for one model, some expiring within the run), admits
and settles requests through the QuotaStore (recording each usage event in the ledger as
the billing worker would), credits and debits the account with idempotency keys (and
repeats them), withdraws what is left of grants (as refunds do), lets time pass and runs
reconcile. After every step:

* Redis, per grant and in total: credits = available + reserved + spent + expired, and
  reserved + spent <= credits;
* the ledger equals Redis: the same credits (bought less withdrawn), spent and expiry per
  grant, the same totals but for what requests in flight hold (the ledger counts it as
  available, or expired);
* every ledger entry's legs sum to zero, grants.remaining equals the legs, and each grant's
  sales legs equal the credits it holds.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from billing.clock import DAY_MS
from billing.db.engine import transaction
from billing.db.schema import ledger_legs
from billing.errors import Conflict
from billing.ledger import LedgerGrant, ledger_balance, ledger_grants, record_usage
from billing.reconcile import Reconciler
from gateway.errors import BalanceExhausted
from gateway.quota.grants import BalanceView
from gateway.quota.store import QuotaStore

from .helpers import Pack, funded, new_id, redis_now
from .machines import BillingMachine
from .test_properties import funded_more

T = TypeVar("T")
PICK = st.integers(0, 1000)  # an index, taken modulo: the draws never depend on Redis's state


def pick(items: list[T], i: int) -> T:
    return items[i % len(items)]


class AdjustmentMachine(BillingMachine):

    def __init__(self) -> None:
        super().__init__()
        self.store = QuotaStore(self.redis)
        self.in_flight: dict[str, tuple[int, int]] = {}  # request id -> (prompt, completion)
        self.adjusted: list[tuple[str, int, str, str | None]] = []  # key, credits, reason, entry id
        self.withdrawn: dict[str, tuple[str, int]] = {}  # operation id -> (grant, credits)

    def view(self) -> BalanceView:
        return self.run(self.store.view(self.who.account_id))

    @initialize(credits=st.integers(1, 300))
    def open_account(self, credits: int) -> None:
        self.who = self.run(funded(self.billing, [Pack(credits, days=30)]))

    @rule(
        credits=st.integers(1, 300),
        models=st.none() | st.just(["y"]),
        expire_ms=st.none() | st.integers(50, 500),
    )
    def buy(self, credits: int, models: list[str] | None, expire_ms: int | None) -> None:
        start = None if expire_ms is None else self.run(redis_now(self.redis)) + expire_ms - DAY_MS
        self.run(funded_more(self.billing, self.who.account_id, credits, models, start))

    @rule(
        model=st.sampled_from(["x", "y"]),
        prompt=st.integers(0, 40),
        completion=st.integers(0, 60),
        keep=st.booleans(),
    )
    def request(self, model: str, prompt: int, completion: int, keep: bool) -> None:
        rid = new_id("r")
        try:
            self.run(
                self.store.admit(
                    request_id=rid,
                    account_id=self.who.account_id,
                    key_id=self.who.key_id,
                    model=model,
                    prompt_tokens=prompt,
                    max_tokens=completion or 1,
                    max_tokens_ceiling=100,
                    input_pm=1000,
                    output_pm=2000,
                )
            )
        except BalanceExhausted:
            event("request: balance exhausted")
            return
        self.in_flight[rid] = (prompt, completion)
        if not keep:
            self.settle(rid)

    def settle(self, rid: str) -> None:
        """Settle in Redis, then record the usage event in the ledger as the worker does."""
        prompt, completion = self.in_flight.pop(rid)
        usage = self.run(
            self.store.settle_event(
                request_id=rid,
                account_id=self.who.account_id,
                key_id=self.who.key_id,
                prompt_tokens=prompt,
                completion_tokens=completion,
                status="ok",
                counted_by="upstream",
                stream=False,
                cluster="c",
                endpoint="e",
            )
        )
        assert usage is not None

        async def record() -> None:
            async with transaction(self.billing.engine) as conn:
                outcome = await record_usage(conn, [usage], self.billing.clock())
            assert outcome.new == [rid]

        self.run(record())

    @precondition(lambda self: self.in_flight)
    @rule(i=PICK)
    def settle_one(self, i: int) -> None:
        self.settle(pick(sorted(self.in_flight), i))

    @rule(credits=st.integers(1, 200))
    def credit(self, credits: int) -> None:
        key = new_id("key")
        entry, created = self.run(
            self.billing.adjustments.adjust(self.who.account_id, credits, "goodwill", key)
        )
        assert created and entry["status"] == "applied" and entry["grant_id"]
        self.adjusted.append((key, credits, "goodwill", entry["id"]))

    @rule(credits=st.integers(1, 300))
    def debit(self, credits: int) -> None:
        key, before = new_id("key"), self.view()
        try:
            entry, created = self.run(
                self.billing.adjustments.adjust(self.who.account_id, -credits, "chargeback", key)
            )
        except Conflict as refused:
            assert refused.code == "insufficient_balance"
            after = self.view()
            assert credits > after.totals()["available"]  # live credits only fall as time passes
            assert after.totals()["purchased"] == before.totals()["purchased"]
            event("debit: refused")
            self.adjusted.append((key, -credits, "chargeback", None))
            return
        assert created and entry["status"] == "applied"
        assert entry["allocation"] is not None and sum(a["credits"] for a in entry["allocation"]) == credits
        assert credits <= before.totals()["available"]
        assert self.view().totals()["purchased"] == before.totals()["purchased"] - credits
        self.adjusted.append((key, -credits, "chargeback", entry["id"]))

    @precondition(lambda self: self.adjusted)
    @rule(i=PICK)
    def repeat_adjustment(self, i: int) -> None:
        """The same key and content again: the same outcome, nothing more taken or given."""
        key, credits, reason, entry_id = pick(self.adjusted, i)
        before = self.view().totals()
        try:
            entry, created = self.run(
                self.billing.adjustments.adjust(self.who.account_id, credits, reason, key)
            )
            assert not created and entry["id"] == entry_id
        except Conflict as refused:
            assert entry_id is None and refused.code == "insufficient_balance"
        after = self.view().totals()
        assert [after[k] for k in ("purchased", "spent", "reserved")] == [
            before[k] for k in ("purchased", "spent", "reserved")
        ]

    @rule(i=PICK, repeat=st.booleans())
    def withdraw_grant(self, i: int, repeat: bool) -> None:
        """What is left of a grant (as a refund takes it), or the same operation again."""
        if repeat and self.withdrawn:
            op = pick(sorted(self.withdrawn), i)
            grant_id, credits = self.withdrawn[op]
            assert self.run(self.billing.adjustments.withdrawals.withdraw_grant(grant_id, op)) == credits
            return
        grant = pick(list(self.view().grants), i)
        rest = grant.credits - grant.reserved - grant.spent
        op = f"refund:{new_id('order')}"
        assert self.run(self.billing.adjustments.withdrawals.withdraw_grant(grant.id, op)) == rest
        after = {g.id: g for g in self.view().grants}[grant.id]
        assert (after.available, after.credits) == (0, grant.credits - rest)
        self.withdrawn[op] = (grant.id, rest)

    @rule()
    def time_passes(self) -> None:
        self.run(asyncio.sleep(0.2))

    @rule()
    def reconcile(self) -> None:
        reconciler = Reconciler(self.billing.store, self.billing.engine, grace_s=0)
        report = self.run(reconciler.run(apply=True, account_ids=[self.who.account_id]))
        assert not report.ledger and not report.drift and not report.keys and not report.pending

    @invariant()
    def ledger_equals_redis_and_both_conserve(self) -> None:
        if not hasattr(self, "who"):
            return
        view = self.view()
        for g in view.grants:
            assert g.credits == g.available + g.reserved + g.spent + g.expired
            assert g.reserved + g.spent <= g.credits and min(g.available, g.expired) >= 0
        bal = view.totals()
        assert bal["purchased"] == bal["available"] + bal["reserved"] + bal["spent"] + bal["expired"]
        found, unbalanced, total = self.run(self.ledger())
        assert unbalanced == 0 and total == 0  # every entry, and so all of them, sums to zero
        by_id = {g.id: g for g in found}
        assert set(by_id) == {g.id for g in view.grants}
        for g in view.grants:
            row = by_id[g.id]
            assert (row.credits, row.spent, row.valid_until_ms) == (g.credits, g.spent, g.expires_ms)
            assert (
                row.remaining == row.remaining_column == row.credits - row.spent and row.sold == row.credits
            )
        held_live = sum(g.reserved for g in view.grants if view.now_ms < g.expires_ms)
        assert ledger_balance(found, view.now_ms) == {
            **bal,
            "reserved": 0,
            "available": bal["available"] + held_live,
            "expired": bal["expired"] + bal["reserved"] - held_live,
        }

    async def ledger(self) -> tuple[list[LedgerGrant], int, int]:
        """The account's ledger grants, how many of its entries do not balance, its legs' sum."""
        legs = ledger_legs.c
        async with self.billing.engine.connect() as conn:
            found = await ledger_grants(conn, [self.who.account_id])
            sums = (
                select(func.sum(legs.amount).label("s"))
                .where(legs.account_id == self.who.account_id)
                .group_by(legs.entry_id)
                .subquery()
            )
            unbalanced = (
                await conn.execute(select(func.count()).select_from(sums).where(sums.c.s != 0))
            ).scalar()
            total = (
                await conn.execute(
                    select(func.coalesce(func.sum(legs.amount), 0)).where(
                        legs.account_id == self.who.account_id
                    )
                )
            ).scalar()
        return found, int(unbalanced or 0), int(total or 0)


@pytest.mark.timeout(300)
def test_adjustments_and_withdrawals_conserve_credits(
    ledger_url: str, request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server")

    class Machine(AdjustmentMachine):
        pass

    Machine.ledger_url, Machine.redis_port = ledger_url, server.port
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=10,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

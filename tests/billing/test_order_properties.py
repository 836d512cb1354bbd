"""Property-based test of orders (hypothesis), against the real databases and Redis.

A state machine places orders for packages on sale, reports payments (right, repeated,
concurrent, of another amount or currency), lets orders expire, spends credits, and refunds
paid orders. At every step:

* each order has at most one grant, and only a paid or refunded order has one;
* Redis: purchased = available + reserved + spent + expired;
* the ledger equals Redis (purchased, available, spent), once the usage is recorded;
* purchased = the credits of the paid orders' packages - what refunds withdrew.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import func, select

from billing.db.schema import grants
from billing.orders import MAX_PENDING, Payment
from billing.packages import NewPackage
from billing.payments.testpay import TestProvider
from gateway.accounts import KeyLimits
from gateway.errors import BalanceExhausted, RateLimited
from gateway.quota.store import QuotaStore

from .helpers import Funded, conserved, drain, ledger_figures, request
from .machines import BillingMachine

T = TypeVar("T")
PACKAGES = {"small": (100, 990), "large": (700, 4900)}  # credits, price in fen


class OrderMachine(BillingMachine):
    orders = Bundle("orders")

    def __init__(self) -> None:
        super().__init__()
        self.billing.orders.provider = TestProvider("http://control.test")
        self.store = QuotaStore(self.redis)
        self.credits_of: dict[str, int] = {}  # order id -> its package's credits
        self.paid: set[str] = set()
        self.withdrawn = 0
        self.placed_at: dict[str, int] = {}  # order id -> when it was placed (the billing clock)
        self.paid_once: set[str] = set()  # paid at some point (refunded or not)

    @initialize()
    def open_shop(self) -> None:
        self.package_ids = {}
        for name, (credits, price) in PACKAGES.items():
            package, _ = self.run(
                self.billing.packages.create_package(
                    NewPackage(
                        name=name,
                        credits=credits,
                        valid_days=30,
                        price={"amount": price, "currency": "CNY"},
                        for_sale=True,
                    )
                )
            )
            self.package_ids[name] = package["id"]
        account = self.run(self.billing.accounts.create_account("buyer"))
        key = self.run(self.billing.accounts.create_key(account["id"], "k", KeyLimits()))
        self.who = Funded(account["id"], key["id"], key["key"], [])

    def waiting(self) -> int:
        """The orders still pending by the model (unpaid, not expired)."""
        ttl = self.billing.orders.ttl_ms
        return sum(
            1 for o, at in self.placed_at.items() if o not in self.paid_once and self.clock.now < at + ttl
        )

    @precondition(lambda self: self.waiting() < MAX_PENDING)
    @rule(target=orders, package=st.sampled_from(sorted(PACKAGES)))
    def place(self, package: str) -> str:
        order = self.run(self.billing.orders.create(self.who.account_id, self.package_ids[package]))
        self.credits_of[order["id"]] = PACKAGES[package][0]
        self.placed_at[order["id"]] = self.clock.now
        return order["id"]

    @precondition(lambda self: self.waiting() >= MAX_PENDING)
    @rule()
    def place_one_too_many(self) -> None:
        with pytest.raises(RateLimited):
            self.run(self.billing.orders.create(self.who.account_id, self.package_ids["small"]))

    @rule(order_id=orders, copies=st.integers(1, 4))
    def pay(self, order_id: str, copies: int) -> None:
        order = self.run(self.billing.orders.get(order_id))
        payment = Payment(order_id, order["amount"], order["currency"].lower(), actor="provider:stripe")

        async def at_once() -> list[str]:
            return list(await asyncio.gather(*(self.billing.orders.pay(payment) for _ in range(copies))))

        outcomes = self.run(at_once())
        if order["status"] in ("pending", "expired"):
            assert sorted(outcomes) == ["already_paid"] * (copies - 1) + ["paid"]
            event(f"paid a {order['status']} order")
            self.paid.add(order_id)
            self.paid_once.add(order_id)
        else:
            assert set(outcomes) <= {"already_paid", "refunded"}

    @rule(order_id=orders, amount_off=st.integers(-500, 500), currency=st.sampled_from(["CNY", "USD"]))
    def pay_wrongly(self, order_id: str, amount_off: int, currency: str) -> None:
        order = self.run(self.billing.orders.get(order_id))
        if amount_off == 0 and currency == "CNY":
            amount_off = 1
        payment = Payment(order_id, order["amount"] + amount_off, currency, actor="provider:stripe")
        assert self.run(self.billing.orders.pay(payment)) == "mismatch"
        assert self.run(self.billing.orders.get(order_id))["status"] == order["status"]

    @rule(minutes=st.integers(1, 120))
    def time_passes(self, minutes: int) -> None:
        self.clock.set(self.clock.now + minutes * 60_000)

    @rule(prompt=st.integers(1, 200), completion=st.integers(0, 200))
    def spend(self, prompt: int, completion: int) -> None:
        with contextlib.suppress(BalanceExhausted):
            self.run(request(self.store, self.who, prompt=prompt, completion=completion, max_tokens=200))

    @rule(order_id=orders)
    def refund(self, order_id: str) -> None:
        before = self.run(self.store.balance(self.who.account_id))
        if order_id not in self.paid:
            return
        order = self.run(self.billing.orders.refund(order_id, "property test"))
        assert order["status"] == "refunded"
        after = self.run(self.store.balance(self.who.account_id))
        taken = before["purchased"] - after["purchased"]
        assert 0 <= taken <= self.credits_of[order_id] and after["available"] <= before["available"]
        again = self.run(self.billing.orders.refund(order_id, "again"))  # idempotent
        assert again["status"] == "refunded" and self.run(self.store.balance(self.who.account_id)) == after
        self.withdrawn += taken
        event("refunded " + ("part" if 0 < taken < self.credits_of[order_id] else "all" if taken else "none"))
        self.paid.discard(order_id)

    @invariant()
    def one_grant_per_paid_order(self) -> None:
        if not self.credits_of:
            return

        async def count() -> dict[str, int]:
            async with self.billing.engine.connect() as conn:
                rows = await conn.execute(
                    select(grants.c.order_id, func.count())
                    .where(grants.c.order_id.in_(list(self.credits_of)))
                    .group_by(grants.c.order_id)
                )
                return {row[0]: int(row[1]) for row in rows}

        found = self.run(count())
        assert all(n == 1 for n in found.values())
        statuses = {
            o["id"]: o["status"]
            for o in self.run(self.billing.orders.list(account_id=self.who.account_id, limit=500))["data"]
        }
        assert {o for o in found} == {o for o, s in statuses.items() if s in ("paid", "refunded")}

    @invariant()
    def balances_agree(self) -> None:
        if not hasattr(self, "who"):
            return
        redis_balance = self.run(self.store.balance(self.who.account_id))
        assert conserved(redis_balance) and redis_balance["reserved"] == 0
        expected = sum(self.credits_of[o] for o in self.credits_of if o in self.paid or self._refunded(o))
        assert redis_balance["purchased"] == expected - self.withdrawn
        self.run(drain(self.billing, self.redis))
        ledger = self.run(ledger_figures(self.billing, self.who.account_id))
        for figure in ("purchased", "available", "spent"):
            assert ledger[figure] == redis_balance[figure], (figure, ledger, redis_balance)

    def _refunded(self, order_id: str) -> bool:
        return (
            order_id not in self.paid and self.run(self.billing.orders.get(order_id))["status"] == "refunded"
        )


@pytest.mark.timeout(300)
def test_order_properties(ledger_url: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("redis_server")

    class Machine(OrderMachine):
        pass

    Machine.ledger_url, Machine.redis_port = ledger_url, server.port
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

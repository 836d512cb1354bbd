"""Property-based tests of the ledger (hypothesis), against the real databases and Redis.

A state machine buys packages (some valid for one model, some expiring within the run),
admits, settles and abandons requests, runs the billing worker and reconcile, and checks
at every step:

* per grant and per account in Redis: credits = available + reserved + spent + expired,
  reserved + spent <= credits (no overdraft);
* the ledger: purchased = available + spent + expired at any instant; the usage records'
  charges equal the usage legs; grants.remaining equals the legs;
* each settlement: charge + uncollected = the full cost of the tokens reported, at least
  the part of it within the reserve collected;
* once the worker drained the streams: the ledger equals Redis at Redis time, grant by
  grant (but for what requests in flight hold); each request id recorded once.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from billing.clock import DAY_MS
from billing.ledger import LedgerGrant, ledger_balance, ledger_grants
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway.errors import BalanceExhausted
from gateway.quota import cost
from gateway.quota.store import QuotaStore
from gateway.usage import UsageEvent, format_allocation, parse_allocation

from .helpers import Pack, drain, funded, new_id, redis_now
from .machines import BillingMachine
from .test_worker import records

T = TypeVar("T")
MODELS = st.sampled_from(["x", "y"])


class LedgerMachine(BillingMachine):

    def __init__(self) -> None:
        super().__init__()
        self.store = QuotaStore(self.redis)
        self.in_flight: dict[str, int] = {}
        self.charged: dict[str, int] = {}

    @initialize(credits=st.integers(1, 300), models=st.none() | st.just(["x"]))
    def open_account(self, credits: int, models: list[str] | None) -> None:
        self.who = self.run(funded(self.billing, [Pack(credits, days=30, models=models)]))

    @rule(
        credits=st.integers(1, 300),
        models=st.none() | st.just(["y"]),
        expire_ms=st.none() | st.integers(50, 500),
    )
    def buy(self, credits: int, models: list[str] | None, expire_ms: int | None) -> None:
        """A package valid 30 days, or made to expire ``expire_ms`` from now (Redis time)."""
        start = None
        if expire_ms is not None:
            start = self.run(redis_now(self.redis)) + expire_ms - DAY_MS
        more = self.run(funded_more(self.billing, self.who.account_id, credits, models, start))
        self.who.grants.append(more)

    @rule(model=MODELS, prompt=st.integers(0, 40), completion=st.integers(0, 60), keep=st.booleans())
    def request(self, model: str, prompt: int, completion: int, keep: bool) -> None:
        rid = new_id("r")
        try:
            adm = self.run(
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
        self.in_flight[rid] = adm.reserve
        if not keep:
            self.settle(rid, prompt, completion)

    def settle(self, rid: str, prompt: int, completion: int) -> None:
        usage: UsageEvent | None = self.run(
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
        reserve, due = self.in_flight.pop(rid), cost(prompt, completion, 1000, 2000)
        assert usage is not None and usage.charge + usage.uncollected == due  # billed = reported
        assert usage.charge >= min(due, reserve)  # the reserve part is always collected
        if due > reserve:
            event("settle: uncollected" if usage.uncollected else "settle: excess collected")
        self.charged[rid] = usage.charge

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), prompt=st.integers(0, 40), completion=st.integers(0, 200))
    def settle_one(self, data: st.DataObject, prompt: int, completion: int) -> None:
        self.settle(data.draw(st.sampled_from(sorted(self.in_flight))), prompt, completion)

    @rule()
    def time_passes(self) -> None:
        self.run(asyncio.sleep(0.2))

    @rule()
    def worker_drains(self) -> None:
        self.run(drain(self.billing, self.redis))
        n, charged, legs = self.run(records(self.billing, self.who.account_id))
        assert n == len(self.charged) and charged == legs == sum(self.charged.values())
        view = self.run(self.store.view(self.who.account_id))
        ledger = self.run(self.ledger(view.now_ms))
        in_flight = sum(self.in_flight.values())
        redis_bal = view.totals()
        assert redis_bal["reserved"] == in_flight
        assert ledger == {**redis_bal, "reserved": 0, **self._unreserved(redis_bal, view.now_ms)}

    def _unreserved(self, bal: dict[str, int], now_ms: int) -> dict[str, int]:
        """The ledger counts held credits as available (or expired): it knows no reservation."""
        view = self.run(self.store.view(self.who.account_id))
        held_live = sum(g.reserved for g in view.grants if not g.expires_ms or now_ms < g.expires_ms)
        return {
            "available": bal["available"] + held_live,
            "expired": bal["expired"] + bal["reserved"] - held_live,
        }

    @rule()
    def reconcile(self) -> None:
        reconciler = Reconciler(self.billing.store, self.billing.engine, grace_s=0)
        before = self.run(self.store.view(self.who.account_id))
        report = self.run(reconciler.run(apply=True, account_ids=[self.who.account_id]))
        assert not report.ledger and not report.drift and not report.keys
        after = self.run(self.store.view(self.who.account_id))
        # The same grants (a grant may have expired meanwhile: available became expired)
        assert [(g.id, g.credits, g.reserved, g.spent, g.available + g.expired) for g in after.grants] == [
            (g.id, g.credits, g.reserved, g.spent, g.available + g.expired) for g in before.grants
        ]

    async def ledger(self, now_ms: int) -> dict[str, int]:
        async with self.billing.engine.connect() as conn:
            found = await ledger_grants(conn, [self.who.account_id])
        assert all(g.remaining == g.remaining_column >= 0 for g in found)
        return ledger_balance(found, now_ms)

    @invariant()
    def conserved_and_never_overdrawn(self) -> None:
        if not hasattr(self, "who"):
            return
        view = self.run(self.store.view(self.who.account_id))
        for g in view.grants:
            assert g.credits == g.available + g.reserved + g.spent + g.expired
            assert g.reserved + g.spent <= g.credits and min(g.available, g.expired) >= 0
        bal = view.totals()
        if bal["expired"]:
            event("some credits expired")
        assert bal["purchased"] == bal["available"] + bal["reserved"] + bal["spent"] + bal["expired"]
        assert bal["spent"] == sum(self.charged.values())
        ledger = self.run(self.ledger(view.now_ms))
        assert ledger["purchased"] == ledger["available"] + ledger["spent"] + ledger["expired"]
        assert ledger["purchased"] == bal["purchased"]


async def funded_more(
    billing: Billing, account_id: str, credits: int, models: list[str] | None, start: int | None
) -> dict[str, object]:
    from billing.packages import NewPackage

    package, _ = await billing.packages.create_package(
        NewPackage(name="p", credits=credits, valid_days=1 if start else 30, models=models)
    )
    if start is not None:
        billing.packages.clock = lambda: start
    try:
        grant, _ = await billing.packages.purchase(account_id, package["id"], new_id("order"))
    finally:
        billing.packages.clock = billing.clock
    return grant


@pytest.mark.timeout(300)
def test_ledger_properties(
    ledger_url: str, redis_servers: dict[str, object], request: pytest.FixtureRequest
) -> None:
    server = request.getfixturevalue("redis_server")

    class Machine(LedgerMachine):
        pass

    Machine.ledger_url, Machine.redis_port = ledger_url, server.port
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=12,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9_]{1,12}", fullmatch=True), st.integers(0, 10**12))))
def test_allocations_round_trip(parts: list[tuple[str, int]]) -> None:
    text = format_allocation(parts)
    assert parse_allocation(text) == [(g, n) for g, n in parts if n > 0]


GRANTS = st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 100), st.integers(0, 10**4)), max_size=8)


@given(GRANTS, st.integers(0, 10**4))
def test_ledger_balances_are_conserved_at_any_instant(grants: list[tuple[int, int, int]], now: int) -> None:
    """purchased = available + spent + expired whatever the instant; expiry only moves credits
    from available to expired, at valid_until exactly."""
    found = [
        LedgerGrant(
            id=f"g{i}",
            account_id="a",
            package_id="p",
            order_id=f"o{i}",
            credits=credits,
            spent=credits * pct // 100,
            remaining=credits - credits * pct // 100,
            remaining_column=credits - credits * pct // 100,
            models=None,
            valid_from_ms=0,
            valid_until_ms=until + 1,
        )
        for i, (credits, pct, until) in enumerate(grants)
    ]
    bal = ledger_balance(found, now)
    assert bal["purchased"] == bal["available"] + bal["spent"] + bal["expired"] and bal["reserved"] == 0
    assert bal["expired"] == sum(g.remaining for g in found if g.valid_until_ms <= now)
    later = ledger_balance(found, now + 1)
    assert later["spent"] == bal["spent"] and later["expired"] >= bal["expired"]

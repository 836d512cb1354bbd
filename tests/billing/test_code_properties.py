"""Property-based test of redemption codes (hypothesis), against the real databases and Redis.

A state machine mints batches (some expiring), redeems known, unknown, retyped and expired
codes from several accounts and addresses, one at a time or many at once, lets days pass,
and crashes between the commit and Redis (then reconciles). A model predicts each sequential
answer (201, 404, 409, or 429 past the failures allowed), and at every step:

* each code has at most one grant, and a grant exactly when it is redeemed, for its redeemer;
* the credits granted by codes = the credits of the redeemed codes' packages (conservation);
* every account's ledger balance = its Redis balance = what the model says it redeemed.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, TypeVar

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
from sqlalchemy import select

from billing.clock import DAY_MS
from billing.code_attempts import FailureLimiter
from billing.code_format import new_code
from billing.codes import CodeService
from billing.db.schema import grants, redemption_codes
from billing.errors import Conflict
from billing.ledger import ledger_balance, ledger_grants
from billing.packages import NewPackage
from billing.reconcile import Reconciler
from gateway.errors import NotFound, RateLimited
from gateway.quota.store import QuotaStore

from .helpers import funded
from .machines import BillingMachine

T = TypeVar("T")
LIMIT = 8  # failures allowed per account and per address: small, so the limit is met in a run
ACCOUNTS, ADDRESSES = 3, 3


@dataclass
class Minted:
    code: str
    credits: int
    expires_ms: int | None
    redeemed_by: str | None = None


class CodeMachine(BillingMachine):

    def __init__(self) -> None:
        super().__init__()
        self.codes = CodeService(
            self.billing.engine, self.billing.packages, FailureLimiter(self.redis, limit=LIMIT), self.clock
        )
        self.minted: list[Minted] = []
        self.batches: list[str] = []
        self.failures: dict[str, int] = {}

    @initialize()
    def open_accounts(self) -> None:
        self.accounts = [self.run(funded(self.billing, [])).account_id for _ in range(ACCOUNTS)]
        self.addresses = [f"test-{secrets.token_hex(6)}" for _ in range(ADDRESSES)]  # this run's own

    @rule(credits=st.integers(1, 500), count=st.integers(1, 3), days=st.none() | st.integers(1, 3))
    def mint(self, credits: int, count: int, days: int | None) -> None:
        package, _ = self.run(
            self.billing.packages.create_package(NewPackage(name="gift", credits=credits, valid_days=30))
        )
        batch = self.run(self.codes.mint(package["id"], count, days))
        self.batches.append(batch["batch_id"])
        expires = None if days is None else self.clock.now + days * DAY_MS
        self.minted += [Minted(c["code"], credits, expires) for c in batch["data"]]

    def expected(self, target: Minted | None, account: str, address: str) -> int:
        if self.failures.get(account, 0) >= LIMIT or self.failures.get(address, 0) >= LIMIT:
            return 429
        if target is None:
            return 404
        if target.redeemed_by is not None:
            return 409
        if target.expires_ms is not None and target.expires_ms <= self.clock.now:
            return 404
        return 201

    async def attempt(self, typed: str, account: str, address: str) -> tuple[int, Any]:
        try:
            return 201, await self.codes.redeem(account, typed, address)
        except RateLimited:
            return 429, None
        except NotFound:
            return 404, None
        except Conflict:
            return 409, None

    def observe(self, status: int, grant: Any, target: Minted | None, account: str, address: str) -> None:
        event(f"redeem: {status}")
        if status in (404, 409):
            self.failures[account] = self.failures.get(account, 0) + 1
            self.failures[address] = self.failures.get(address, 0) + 1
        if status == 201:
            assert target is not None and target.redeemed_by is None
            assert grant["credits"] == target.credits and grant["account_id"] == account
            target.redeemed_by = account

    @rule(
        data=st.data(),
        who=st.integers(0, ACCOUNTS - 1),
        where=st.integers(0, ADDRESSES - 1),
        retype=st.booleans(),
        known=st.booleans(),
    )
    def redeem(self, data: st.DataObject, who: int, where: int, retype: bool, known: bool) -> None:
        target = data.draw(st.sampled_from(self.minted)) if known and self.minted else None
        typed = target.code if target else data.draw(st.sampled_from([new_code(), "TG-NOPE", ""]))
        if retype:
            typed = " " + typed.lower().replace("-", " ")
        account, address = self.accounts[who], self.addresses[where]
        expected = self.expected(target, account, address)
        status, grant = self.run(self.attempt(typed, account, address))
        assert status == expected, (status, expected)
        self.observe(status, grant, target, account, address)

    @precondition(lambda self: self.minted)
    @rule(
        data=st.data(),
        tries=st.lists(
            st.tuples(st.integers(0, ACCOUNTS - 1), st.integers(0, ADDRESSES - 1)), min_size=2, max_size=8
        ),
    )
    def redeem_at_once(self, data: st.DataObject, tries: list[tuple[int, int]]) -> None:
        """Several redemptions of one code at the same time: one wins at most."""
        target = data.draw(st.sampled_from(self.minted))
        redeemable = self.expected(target, "-", "-") == 201
        pairs = [(self.accounts[a], self.addresses[b]) for a, b in tries]
        results = self.run(self.at_once(target.code, pairs))
        won = [s for s, _ in results if s == 201]
        assert len(won) <= 1 and (redeemable or not won)
        if redeemable and any(s != 429 for s, _ in results):
            assert len(won) == 1  # someone got past the limit: the code went to someone
        for (status, grant), (account, address) in zip(results, pairs, strict=True):
            assert status in (201, 404, 409, 429)
            self.observe(status, grant, target, account, address)

    @precondition(lambda self: self.minted)
    @rule(data=st.data(), who=st.integers(0, ACCOUNTS - 1))
    def crash_before_redis_then_reconcile(self, data: st.DataObject, who: int) -> None:
        """The process dies between the commit and the Redis credit; reconcile applies the grant."""
        target = data.draw(st.sampled_from(self.minted))
        account, address = self.accounts[who], self.addresses[0]
        expected = self.expected(target, account, address)
        applied = self.billing.packages.apply

        async def dies(grant: Any) -> bool:
            return False

        self.billing.packages.apply = dies  # type: ignore[method-assign]
        try:
            status, grant = self.run(self.attempt(target.code, account, address))
        finally:
            self.billing.packages.apply = applied  # type: ignore[method-assign]
        assert status == expected
        self.observe(status, grant, target, account, address)
        reconciler = Reconciler(self.billing.store, self.billing.engine, grace_s=0)
        self.run(reconciler.run(apply=True, account_ids=[account]))

    @rule(days=st.integers(0, 2), ms=st.integers(0, DAY_MS))
    def time_passes(self, days: int, ms: int) -> None:
        self.clock.set(self.clock.now + days * DAY_MS + ms)

    @invariant()
    def each_code_grants_once_and_credits_are_conserved(self) -> None:
        if not self.batches:
            return
        rows, code_grants = self.run(self.ledger_rows())
        by_order: dict[str, list[Any]] = {}
        for g in code_grants:
            by_order.setdefault(g.order_id, []).append(g)
        for row in rows:
            mine = by_order.get(f"code:{row.id}", [])
            assert len(mine) == (1 if row.redeemed_at_ms is not None else 0)
            if mine:
                assert (mine[0].id, mine[0].account_id) == (row.grant_id, row.redeemed_by)
        redeemed = [m for m in self.minted if m.redeemed_by is not None]
        assert len(redeemed) == sum(1 for r in rows if r.redeemed_at_ms is not None)
        assert sum(g.credits for g in code_grants) == sum(m.credits for m in redeemed)

    @invariant()
    def ledger_and_redis_agree(self) -> None:
        if not hasattr(self, "accounts"):
            return
        store = QuotaStore(self.redis)
        for account in self.accounts:
            view = self.run(store.view(account))
            redis_bal = view.totals()
            ledger = self.run(self.ledger_balance(account, view.now_ms))
            model = sum(m.credits for m in self.minted if m.redeemed_by == account)
            assert redis_bal["purchased"] == redis_bal["available"] == model
            assert ledger["purchased"] == ledger["available"] == model

    async def at_once(self, typed: str, pairs: list[tuple[str, str]]) -> list[tuple[int, Any]]:
        return await asyncio.gather(*(self.attempt(typed, a, b) for a, b in pairs))

    async def ledger_rows(self) -> tuple[list[Any], list[Any]]:
        async with self.billing.engine.connect() as conn:
            rows = list(
                await conn.execute(
                    select(redemption_codes).where(redemption_codes.c.batch_id.in_(self.batches))
                )
            )
            orders = [f"code:{r.id}" for r in rows]
            found = list(await conn.execute(select(grants).where(grants.c.order_id.in_(orders))))
        return rows, found

    async def ledger_balance(self, account: str, now_ms: int) -> dict[str, int]:
        async with self.billing.engine.connect() as conn:
            found = await ledger_grants(conn, [account])
        return ledger_balance(found, now_ms)


@pytest.mark.timeout(600)
def test_code_properties(ledger_url: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue("redis_server")

    class Machine(CodeMachine):
        pass

    Machine.ledger_url, Machine.redis_port = ledger_url, server.port
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=15,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

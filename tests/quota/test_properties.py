"""Property test: random credit/admit/checkpoint/settle/expire sequences keep the invariants.

Accounting (what the invariants below check, per account):
  purchased == available + reserved + spent + expired   (available is derived)
  reserved  == sum of the reserves of the requests in flight
  spent     == sum of the charges of the account's usage events, ``expired`` ones included
  charge    == the full cost of the tokens when the balance can pay it: up to the reserve from
               the reservation, the excess from the available credits, never below zero;
               charge + uncollected == the full cost, always
  expired   == 0 here: it is billing's (credits of lapsed packages), never a lease expiry
  reserved + spent + expired <= purchased, and each request id has at most one event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway import keyspace
from gateway.errors import BalanceExhausted
from gateway.quota import QuotaStore, cost

from .helpers import BACKENDS, connect, new_id, server_nodes, usage_events

T = TypeVar("T")
SHORT_MS, LONG_MS = 5, 600_000
PRICES = st.sampled_from([(1000, 2000), (333, 1001), (0, 1500), (2250, 0), (0, 0)])
STATUSES = st.sampled_from(["ok", "partial", "client_gone", "upstream_error"])


@dataclass
class InFlight:
    reserve: int
    prompt: int
    in_pm: int
    out_pm: int
    short: bool
    ck_completion: int = 0
    ck_prompt: int | None = None

    def expiry_cost(self) -> int:
        """The full cost of an expired lease: its checkpoint's tokens (see settle_v4.lua)."""
        if self.ck_prompt is not None:
            prompt = self.ck_prompt
        else:
            prompt = self.prompt if self.ck_completion > 0 else 0
        return cost(prompt, self.ck_completion, self.in_pm, self.out_pm)


class QuotaMachine(RuleBasedStateMachine):
    requests = Bundle("requests")
    kind = "standalone"
    nodes: ClassVar[list[tuple[str, int]]] = []

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = connect(self.kind, self.nodes)
        self.store = QuotaStore(self.client)
        self.account, self.key = new_id("acct"), new_id("key")
        self.purchased = self.spent = self.uncollected = self.due = 0
        self.in_flight: dict[str, InFlight] = {}
        self.finished: set[str] = set()

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    @initialize(credits=st.integers(0, 3000))
    def open_account(self, credits: int) -> None:
        self.run(self.store.init_balance(self.account))
        self.run(self.store.set_key_record(self.account, self.key))
        if credits:
            self.credit(credits)

    @rule(credits=st.integers(1, 400))
    def credit(self, credits: int) -> None:
        self.run(self.store.credit(self.account, credits))
        self.purchased += credits

    @rule(
        target=requests,
        prompt=st.integers(0, 60),
        max_tokens=st.integers(1, 120) | st.none(),
        ceiling=st.integers(1, 150),
        prices=PRICES,
        short=st.booleans(),
    )
    def admit(
        self,
        prompt: int,
        max_tokens: int | None,
        ceiling: int,
        prices: tuple[int, int],
        short: bool,
    ) -> str:
        rid = new_id("r")
        available = self.run(self.store.balance(self.account))["available"]
        try:
            adm = self.run(
                self.store.admit(
                    request_id=rid,
                    account_id=self.account,
                    key_id=self.key,
                    model="m",
                    prompt_tokens=prompt,
                    max_tokens=max_tokens,
                    max_tokens_ceiling=ceiling,
                    input_pm=prices[0],
                    output_pm=prices[1],
                    lease_ms=SHORT_MS if short else LONG_MS,
                )
            )
        except BalanceExhausted:
            assert cost(prompt, 1, *prices) > available
            event("admit: balance exhausted")
            return rid
        event("admit: clamped" if adm.clamped else "admit: as asked")
        assert 1 <= adm.max_tokens <= min(ceiling, max_tokens or ceiling)
        assert adm.reserve == cost(prompt, adm.max_tokens, *prices) <= available
        self.in_flight[rid] = InFlight(adm.reserve, prompt, prices[0], prices[1], short)
        return rid

    def collectable(self, req: InFlight, due: int) -> int:
        """What settling ``req`` at cost ``due`` charges now: up to its reserve, then what the
        balance has free once its reservation is released (one grant kind here)."""
        part = min(due, req.reserve)
        reserved = sum(r.reserve for r in self.in_flight.values())
        free = self.purchased - (reserved - req.reserve) - (self.spent + part)
        return part + max(0, min(due - part, free))

    def charged(self, rid: str, due: int, charge: int, uncollected: int) -> None:
        """Book a settlement the store reported (the request leaves the flight)."""
        req = self.in_flight[rid]
        assert charge == self.collectable(req, due)
        assert charge + uncollected == due
        event("settle: above the reserve" if due > req.reserve else "settle: within the reserve")
        if uncollected:
            event("settle: uncollected")
        del self.in_flight[rid]
        self.spent += charge
        self.uncollected += uncollected
        self.due += due
        self.finished.add(rid)

    def live(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(list(self.in_flight)), label="in flight")

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), completion=st.integers(0, 150), prompt=st.none() | st.integers(0, 80))
    def checkpoint_live(self, data: st.DataObject, completion: int, prompt: int | None) -> None:
        self.checkpoint(self.live(data), completion, prompt)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), prompt=st.integers(0, 70), completion=st.integers(0, 140))
    def settle_live(self, data: st.DataObject, prompt: int, completion: int) -> None:
        self.settle(self.live(data), prompt, completion, "ok")

    @rule(rid=requests, completion=st.integers(0, 150), prompt=st.none() | st.integers(0, 80))
    def checkpoint(self, rid: str, completion: int, prompt: int | None) -> None:
        req = self.in_flight.get(rid)
        lease = SHORT_MS if req is None or req.short else LONG_MS
        alive = self.run(
            self.store.checkpoint(
                request_id=rid,
                account_id=self.account,
                key_id=self.key,
                completion_tokens=completion,
                prompt_tokens=prompt,
                lease_ms=lease,
            )
        )
        assert alive == (req is not None)
        if req is not None:
            req.ck_completion = max(req.ck_completion, completion)
            req.ck_prompt = prompt if prompt is not None else req.ck_prompt

    @rule(rid=requests, prompt=st.integers(0, 200), completion=st.integers(0, 300), status=STATUSES)
    def settle(self, rid: str, prompt: int, completion: int, status: str) -> None:
        charged = self.run(
            self.store.settle(
                request_id=rid,
                account_id=self.account,
                key_id=self.key,
                prompt_tokens=prompt,
                completion_tokens=completion,
                status=status,
                counted_by="upstream",
                stream=True,
                cluster="c",
                endpoint="e",
            )
        )
        req = self.in_flight.get(rid)
        if req is None:
            assert charged is None
            event("settle: duplicate or never admitted")
            return
        assert charged is not None
        due = cost(prompt, completion, req.in_pm, req.out_pm)
        self.charged(rid, due, charged.charge, charged.uncollected)

    @rule()
    def expire(self) -> None:
        self.run(asyncio.sleep(2 * SHORT_MS / 1000))
        events = self.run(self.store.reap(keyspace.shard_of(self.account), limit=1000))
        for usage in events:
            if usage.account_id != self.account:
                continue  # a stale lease another test left on the shared server
            req = self.in_flight[usage.request_id]
            assert req.short and usage.status == "expired"
            event("expire: checkpointed" if req.ck_completion else "expire: no checkpoint")
            self.charged(usage.request_id, req.expiry_cost(), usage.charge, usage.uncollected)
        assert not [r for r in self.in_flight.values() if r.short]

    @invariant()
    def balance_is_conserved(self) -> None:
        bal = self.run(self.store.balance(self.account))
        assert bal["purchased"] == self.purchased
        assert bal["expired"] == 0
        assert bal["reserved"] == sum(r.reserve for r in self.in_flight.values())
        assert bal["spent"] == self.spent
        assert bal["reserved"] + bal["spent"] + bal["expired"] <= bal["purchased"]
        assert bal["available"] >= 0

    @invariant()
    def one_event_per_finished_request(self) -> None:
        events = self.run(usage_events(self.client, self.account))
        assert sorted(e.request_id for e in events) == sorted(self.finished)
        assert sum(e.charge for e in events) == self.spent
        assert sum(e.uncollected for e in events) == self.uncollected
        assert self.spent + self.uncollected == self.due
        assert set(self.run(self.store.reservations(self.account))) == set(self.in_flight)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", BACKENDS)
def test_quota_invariants_hold(kind: str, request: pytest.FixtureRequest) -> None:
    nodes = server_nodes(kind, request)

    class Machine(QuotaMachine):
        pass

    Machine.kind, Machine.nodes = kind, nodes
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=40 if kind == "standalone" else 15,
            stateful_step_count=30,
            deadline=None,
        ),
    )

"""Property test under concurrency: a key's credit cap is never exceeded.

A key capped at random credits in total, on an account whose balance may bind first, and an
uncapped key of the same account. Rounds of admissions on both keys run concurrently
(asyncio.gather) with the settlements of the previous round, whose actual usage falls below
or far above the reserve; between rounds the period may roll over (the counter's period is
made stale, as a new day or month does). After every round, by Redis:

  spent + held <= cap and spent <= cap              (never past the cap, holds included)
  held == the reserves of the capped key's requests in flight
  spent == the capped key's charges since the last rollover
  charge + uncollected == the full cost of each settled request
  a refusal of the capped key names the cap or the balance; the uncapped key never hits the cap
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import keyspace
from gateway.errors import BalanceExhausted
from gateway.quota import QuotaStore, cost
from gateway.quota.store import Charged

from .helpers import BACKENDS, connect, new_id, server_nodes

PRICES = st.sampled_from([(1000, 2000), (333, 1001), (0, 1500), (2250, 0)])


@dataclass(frozen=True)
class Ask:
    """One request: which key, what admission estimates, then what the upstream reports."""

    capped: bool
    prompt: int
    max_tokens: int
    choices: int
    actual_prompt: int
    actual_completion: int
    prices: tuple[int, int]

    @property
    def due(self) -> int:
        return cost(self.actual_prompt, self.actual_completion, *self.prices)


ASKS = st.builds(
    Ask,
    capped=st.booleans() | st.just(True),
    prompt=st.integers(0, 40),
    max_tokens=st.integers(1, 60),
    choices=st.sampled_from([1, 1, 2]),
    actual_prompt=st.integers(0, 80),
    actual_completion=st.integers(0, 60) | st.integers(60, 400),
    prices=PRICES,
)
ROUNDS = st.lists(st.tuples(st.lists(ASKS, min_size=1, max_size=10), st.booleans()), min_size=1, max_size=5)


@dataclass
class Run:
    store: QuotaStore
    account: str
    capped: str
    free: str
    cap: int
    flying: dict[str, tuple[Ask, int]] = field(default_factory=dict)  # request id -> (ask, reserve)
    spent: int = 0  # the capped key's charges since the last rollover

    async def admit(self, ask: Ask) -> None:
        rid = new_id("r")
        try:
            adm = await self.store.admit(
                request_id=rid, account_id=self.account, key_id=self.capped if ask.capped else self.free,
                model="m", prompt_tokens=ask.prompt, max_tokens=ask.max_tokens, max_tokens_ceiling=100,
                input_pm=ask.prices[0], output_pm=ask.prices[1], choices=ask.choices,
            )  # fmt: skip
        except BalanceExhausted as refused:
            assert refused.code in (("key_credit_limit", "insufficient_quota") if ask.capped
                                    else ("insufficient_quota",))  # fmt: skip
            return
        assert adm.key_cap == ask.capped
        self.flying[rid] = (ask, adm.reserve)

    async def settle(self, rid: str) -> None:
        ask, _ = self.flying[rid]
        charged = await self.store.settle(
            request_id=rid, account_id=self.account, key_id=self.capped if ask.capped else self.free,
            prompt_tokens=ask.actual_prompt, completion_tokens=ask.actual_completion,
            status="ok", counted_by="upstream", stream=False, cluster="c", endpoint="e",
        )  # fmt: skip
        assert isinstance(charged, Charged)
        assert charged.charge + charged.uncollected == ask.due
        del self.flying[rid]
        if ask.capped:
            self.spent += charged.charge

    async def check(self) -> None:
        counter = await self.store.key_spend(self.account, self.capped, "total")
        held = sum(reserve for ask, reserve in self.flying.values() if ask.capped)
        assert counter.held == held
        assert counter.spent == self.spent
        assert counter.spent + counter.held <= self.cap and counter.spent <= self.cap
        totals = await self.store.balance(self.account)
        assert totals["reserved"] == sum(reserve for _, reserve in self.flying.values())

    async def roll_over(self) -> None:
        """A new period: what was spent belongs to the last one; what is held stays held."""
        await self.store.client.hset(keyspace.key_spend_key(self.account, self.capped), "period", "stale")
        self.spent = 0


async def one_example(
    store: QuotaStore, cap: int, credits: int, rounds: list[tuple[list[Ask], bool]]
) -> None:
    account, capped, free = new_id("acct"), new_id("key"), new_id("key")
    await store.init_balance(account)
    await store.credit(account, credits)
    await store.set_key_record(account, capped, credit_limit=cap, credit_period="total")
    await store.set_key_record(account, free)
    run = Run(store, account, capped, free, cap)
    for asks, roll in rounds:
        settling = list(run.flying)
        await asyncio.gather(*(run.admit(a) for a in asks), *(run.settle(rid) for rid in settling))
        await run.check()
        if roll:
            await run.roll_over()
            await run.check()
    await asyncio.gather(*(run.settle(rid) for rid in list(run.flying)))
    await run.check()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", BACKENDS)
def test_a_cap_is_never_exceeded_under_concurrency(kind: str, request: pytest.FixtureRequest) -> None:
    nodes = server_nodes(kind, request)
    loop = asyncio.new_event_loop()
    client = connect(kind, nodes)
    store = QuotaStore(client)

    @settings(
        max_examples=40 if kind == "standalone" else 10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(cap=st.integers(1, 400), credits=st.integers(50, 3000), rounds=ROUNDS)
    def check(cap: int, credits: int, rounds: list[tuple[list[Ask], bool]]) -> None:
        loop.run_until_complete(one_example(store, cap, credits, rounds))

    try:
        check()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()

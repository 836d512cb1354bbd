"""Property test under concurrency: settlement beyond the reserve never overdraws a grant.

Random grants (some for another model only, some lapsed), rounds of admissions running
concurrently (asyncio.gather) with the settlements of the previous round, whose actual usage
falls below or far above their reserve. After every round, by Redis:

  reserved + spent <= credits for every grant (no overdraft, the excess included)
  purchased == available + reserved + spent + expired, none of them negative
  reserved == the reserves of the requests in flight
  spent == the sum of the charges, per grant as the events' allocations say
  sum of charges + sum of uncollected == sum of the full costs of the settled requests
  no grant for another model and no lapsed grant ever pays
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import BalanceExhausted
from gateway.quota import QuotaStore, cost
from gateway.quota.store import Charged
from gateway.usage import UsageEvent

from .helpers import BACKENDS, account_with, connect, new_id, redis_ms, server_nodes, usage_events

PRICES = st.sampled_from([(1000, 2000), (333, 1001), (0, 1500), (2250, 0)])
GRANTS = st.lists(
    st.tuples(
        st.integers(1, 300),
        st.sampled_from(["never", "later", "lapsed"]),
        st.sampled_from([None, ["m"], ["x"]]),
    ),
    min_size=1,
    max_size=5,
)


@dataclass(frozen=True)
class Ask:
    """One request: what admission estimates, then what the upstream reports."""

    prompt: int
    max_tokens: int
    actual_prompt: int
    actual_completion: int
    prices: tuple[int, int]

    @property
    def due(self) -> int:
        return cost(self.actual_prompt, self.actual_completion, *self.prices)


ASKS = st.builds(
    Ask,
    prompt=st.integers(0, 40),
    max_tokens=st.integers(1, 60),
    actual_prompt=st.integers(0, 80),
    # mostly within the reservation, sometimes far above it
    actual_completion=st.integers(0, 60) | st.integers(60, 400),
    prices=PRICES,
)
ROUNDS = st.lists(st.lists(ASKS, min_size=1, max_size=10), min_size=1, max_size=4)


class Run:
    """One account under test and what the test expects of it."""

    def __init__(self, store: QuotaStore, account: str, key: str, kinds: dict[str, str]) -> None:
        self.store, self.account, self.key = store, account, key
        self.grant_kinds = kinds  # grant id -> 'never' | 'later' | 'lapsed' | 'other-model'
        self.flying: dict[str, tuple[Ask, int]] = {}  # request id -> (ask, reserve)
        self.charges = self.uncollected = self.due = 0

    async def admit(self, ask: Ask) -> None:
        rid = new_id("r")
        try:
            adm = await self.store.admit(
                request_id=rid, account_id=self.account, key_id=self.key, model="m",
                prompt_tokens=ask.prompt, max_tokens=ask.max_tokens, max_tokens_ceiling=100,
                input_pm=ask.prices[0], output_pm=ask.prices[1],
            )  # fmt: skip
        except BalanceExhausted:
            return
        self.flying[rid] = (ask, adm.reserve)

    async def settle(self, rid: str) -> None:
        ask, _ = self.flying[rid]
        charged = await self.store.settle(
            request_id=rid, account_id=self.account, key_id=self.key,
            prompt_tokens=ask.actual_prompt, completion_tokens=ask.actual_completion,
            status="ok", counted_by="upstream", stream=False, cluster="c", endpoint="e",
        )  # fmt: skip
        assert isinstance(charged, Charged)
        assert charged.charge + charged.uncollected == ask.due
        del self.flying[rid]
        self.charges += charged.charge
        self.uncollected += charged.uncollected
        self.due += ask.due

    async def check(self, events: list[UsageEvent]) -> None:
        view = await self.store.view(self.account)
        for g in view.grants:
            assert g.reserved + g.spent <= g.credits, g
            assert min(g.available, g.reserved, g.spent, g.expired) >= 0, g
            assert g.credits == g.available + g.reserved + g.spent + g.expired, g
        totals = view.totals()
        assert totals["reserved"] == sum(reserve for _, reserve in self.flying.values())
        assert totals["spent"] == self.charges == sum(e.charge for e in events)
        assert sum(e.uncollected for e in events) == self.uncollected
        assert self.charges + self.uncollected == self.due
        paid: Counter[str] = Counter()
        for e in events:
            assert sum(n for _, n in e.allocation()) == e.charge
            for grant_id, n in e.allocation():
                paid[grant_id] += n
        for grant_id in paid:
            assert self.grant_kinds[grant_id] in ("never", "later"), grant_id  # valid for m, live
        assert {g.id: g.spent for g in view.grants if g.spent} == dict(paid)


async def one_example(store: QuotaStore, grants: list[tuple[int, str, list[str] | None]],
                      rounds: list[list[Ask]]) -> None:  # fmt: skip
    now = await redis_ms(store.client)
    expiry = {"never": 0, "later": now + 600_000, "lapsed": now - 1}
    specs, kinds = [], {}
    for i, (credits, when, models) in enumerate(grants):
        grant_id = f"g{i}"
        specs.append((grant_id, credits, expiry[when], models))
        kinds[grant_id] = when if models != ["x"] else "other-model"
    account, key = await account_with(store, *specs)
    run = Run(store, account, key, kinds)
    for asks in rounds:
        settling = list(run.flying)
        await asyncio.gather(*(run.admit(a) for a in asks), *(run.settle(rid) for rid in settling))
        await run.check(await usage_events(store.client, account))
    await asyncio.gather(*(run.settle(rid) for rid in list(run.flying)))
    await run.check(await usage_events(store.client, account))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", BACKENDS)
def test_excess_settlement_under_concurrency(kind: str, request: pytest.FixtureRequest) -> None:
    nodes = server_nodes(kind, request)
    loop = asyncio.new_event_loop()
    client = connect(kind, nodes)
    store = QuotaStore(client)

    @settings(
        max_examples=30 if kind == "standalone" else 10,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(grants=GRANTS, rounds=ROUNDS)
    def check(grants: list[tuple[int, str, list[str] | None]], rounds: list[list[Ask]]) -> None:
        loop.run_until_complete(one_example(store, grants, rounds))

    try:
        check()
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()

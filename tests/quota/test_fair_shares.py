"""Fair shares at a full model (gateway/flow.py): who gets the next turn, in what proportion,
and what a waiter that times out or leaves does to the others."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.catalog import Model
from gateway.errors import RateLimited
from gateway.flow import FairShares, ModelQueue
from gateway.routing.config import RoutingConfig


class _Cap:
    """A router whose model has room for ``cap`` requests at once."""

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def has_room(self, model: Model, out: int) -> bool:
        return out < self.cap


MODEL = Model.__new__(Model)
object.__setattr__(MODEL, "name", "m")


def _flow(cap: int, weights: dict[str, int] | None = None, queue_seconds: float = 5.0,
          newcomer_slots: int = 0) -> FairShares:
    async def weigh(account: str) -> int:
        return (weights or {}).get(account, 1)

    config = RoutingConfig(queue_seconds=queue_seconds, newcomer_slots=newcomer_slots)
    return FairShares(_Cap(cap), weigh, config)  # type: ignore[arg-type]


Request = Callable[[str], Awaitable[None]]


def _holding(flow: FairShares, started: list[str], release: asyncio.Event) -> Request:
    """A request for an account: it takes its turn, notes the account in ``started``, and
    holds the turn until ``release`` is set."""

    async def request(account: str) -> None:
        turn = await flow.turn(MODEL, account)
        started.append(account)
        await release.wait()
        turn.release()

    return request


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=4),
       turns=st.integers(20, 120))
def test_backlogged_accounts_get_turns_in_proportion_to_their_weight(weights: list[int], turns: int) -> None:
    """With every account always waiting, after any number of turns, any two accounts' turns
    per unit of weight differ by at most 1/w_i + 1/w_j (start-time fair queuing's bound)."""

    async def run() -> Counter[str]:
        queue = ModelQueue(MODEL, _Cap(0).has_room)  # full: everything waits
        accounts = {f"a{i}": w for i, w in enumerate(weights)}
        for account, weight in accounts.items():
            for _ in range(turns):
                queue.enqueue(account, weight)
        given_to: Counter[str] = Counter()
        for _ in range(turns):
            before = {a: len(q) for a, q in queue.waiting.items()}
            queue._has_room = lambda model, out: out < 1  # one turn free
            queue.dispatch()
            queue._has_room = _Cap(0).has_room
            (taker,) = [a for a in before if len(queue.waiting.get(a, ())) < before[a]]
            given_to[taker] += 1
            queue.out -= 1  # that request ends (without dispatching: the loop gives the next)
            for i, wi in accounts.items():
                for j, wj in accounts.items():
                    lag = abs(given_to[i] / wi - given_to[j] / wj)
                    assert lag <= 1 / wi + 1 / wj + 1e-9, (given_to, accounts)
        return given_to

    asyncio.run(run())


async def test_a_quiet_account_waits_about_one_turn_behind_a_flood() -> None:
    order: list[str] = []
    release = asyncio.Event()
    request = _holding(_flow(cap=2), order, release)
    flood = [asyncio.create_task(request("flood")) for _ in range(20)]
    await asyncio.sleep(0.01)  # two flood requests run, eighteen wait
    quiet = asyncio.create_task(request("quiet"))
    await asyncio.sleep(0.01)
    release.set()  # from now on every request ends at once: turns go round
    await asyncio.gather(*flood, quiet)
    assert order.index("quiet") <= 3, order  # after the two running and at most one more flood


async def test_a_slot_kept_for_newcomers_lets_a_quiet_tenant_start_at_once() -> None:
    """With ``newcomer_slots: 1`` a flood holds at most cap - 1 turns, so a quiet account's
    request starts at once; the flood's own requests wait for their fair turn."""
    running: list[str] = []
    release = asyncio.Event()
    request = _holding(_flow(cap=4, newcomer_slots=1), running, release)
    flood = [asyncio.create_task(request("flood")) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert running == ["flood"] * 3  # the fourth turn is kept
    quiet = asyncio.create_task(request("quiet"))
    await asyncio.sleep(0.01)
    assert running[-1] == "quiet"  # started at once, while the flood waits
    release.set()
    await asyncio.gather(*flood, quiet)
    assert running.count("flood") == 10


async def test_a_weighted_account_gets_its_share() -> None:
    flow = _flow(cap=1, weights={"gold": 3})
    order: list[str] = []

    async def request(account: str) -> None:
        turn = await flow.turn(MODEL, account)
        order.append(account)
        await asyncio.sleep(0)
        turn.release()

    first = await flow.turn(MODEL, "other")  # holds the only slot while the queues fill
    tasks = [asyncio.create_task(request(a)) for a in ["gold"] * 30 + ["basic"] * 30]
    await asyncio.sleep(0.01)
    first.release()
    await asyncio.gather(*tasks)
    window = Counter(order[:20])
    assert window["gold"] == 15 and window["basic"] == 5, order[:20]


async def test_a_wait_past_queue_seconds_is_429_and_a_leaver_passes_its_turn_on() -> None:
    flow = _flow(cap=1, queue_seconds=0.1)
    held = await flow.turn(MODEL, "a")
    with pytest.raises(RateLimited) as refused:
        await flow.turn(MODEL, "b")
    assert refused.value.code == "model_overloaded" and refused.value.headers["Retry-After"] == "1"
    assert flow.timeouts == 1 and flow.waiting() == {"m": 0}
    leaver = asyncio.create_task(flow.turn(MODEL, "c"))
    stayer = asyncio.create_task(flow.turn(MODEL, "d"))
    await asyncio.sleep(0.01)
    leaver.cancel()
    held.release()  # the turn skips the one that left
    turn = await asyncio.wait_for(stayer, 1)
    turn.release()
    assert flow.waiting() == {"m": 0}
    again = await asyncio.wait_for(flow.turn(MODEL, "e"), 1)  # nothing leaked: room again
    again.release()


async def test_off_means_no_waiting() -> None:
    async def weigh(account: str) -> int:
        return 1

    flow = FairShares(_Cap(0), weigh, RoutingConfig(fair_shares=False))  # type: ignore[arg-type]
    turn = await asyncio.wait_for(flow.turn(MODEL, "a"), 1)
    turn.release()

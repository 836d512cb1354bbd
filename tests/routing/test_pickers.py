"""Pickers with a seeded random source and stub scores."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.routing.affinity import rendezvous
from gateway.routing.pickers import Best, PowerOfTwo, affine_target, weighted_choice
from gateway.routing.plugins import PickContext
from gateway.routing.registry import EndpointState
from tests.routing.helpers import context, names, state


def by_in_flight(s: EndpointState, ctx: PickContext) -> float:
    return 1.0 / (1 + s.in_flight)


def test_weighted_choice_follows_weights_and_skips() -> None:
    pool = [state("a"), state("b", weight=3), state("c")]
    draw = random.Random(1).random
    counts = Counter(names([weighted_choice(pool, None, draw)])[0] for _ in range(5000))
    assert 2700 < counts["b"] < 3300 and 700 < counts["a"] < 1300
    assert all(weighted_choice(pool, pool[1], draw) is not pool[1] for _ in range(200))


def test_p2c_keeps_the_better_of_two() -> None:
    idle, busy, busier = state("idle"), state("busy", in_flight=5), state("busier", in_flight=9)
    pool = [idle, busy, busier]
    picker = PowerOfTwo(random.Random(2).random, 1.25)
    counts = Counter(names([picker(pool, context(pool), by_in_flight)])[0] for _ in range(3000))
    # idle wins whenever drawn (2/3 of pairs), busy wins the busy/busier pair, busier never
    assert counts["busier"] == 0 and 1800 < counts["idle"] < 2200 and 800 < counts["busy"] < 1200


def test_p2c_with_affinity_keeps_the_target_unless_another_scores_higher() -> None:
    pool = [state("a"), state("b"), state("c")]
    picker = PowerOfTwo(random.Random(3).random, 1.25)
    target = rendezvous(pool, 42, uniform=True)
    ctx = context(pool, affinity=42)
    assert all(picker(pool, ctx, lambda s, c: 1.0) is target for _ in range(100))  # ties: the target
    assert ctx.affine is target
    target.in_flight = 10
    assert all(picker(pool, context(pool, affinity=42), by_in_flight) is not target for _ in range(100))


@pytest.mark.parametrize(
    ("target_load", "others", "keeps"),
    [
        (0, (0, 0), True),  # idle
        (3, (0, 0), True),  # 3 <= 2 * 3/3 + 1: a hot prefix may run a few ahead
        (4, (0, 0), False),  # 4 > 2 * 4/3 + 1
        (10, (4, 4), True),  # 10 <= 2 * 18/3 + 1
        (14, (2, 2), False),  # 14 > 2 * 18/3 + 1: a slow endpoint piles up requests
        (9, (1, 1), False),
    ],
)
def test_affinity_has_a_bounded_load(target_load: int, others: tuple[int, int], keeps: bool) -> None:
    """Even when every score ties (no queue shows), an affinity target holding more than
    its share of the requests in flight loses the prefix, so slowness cannot pile up."""
    pool = [state("a"), state("b"), state("c")]
    target = rendezvous(pool, 42, uniform=True)
    rest = [s for s in pool if s is not target]
    target.in_flight = target_load
    for s, load in zip(rest, others, strict=True):
        s.in_flight = load
    assert (affine_target(pool, context(pool, affinity=42), 2.0) is target) is keeps
    ctx = context(pool, affinity=42)
    picker = PowerOfTwo(random.Random(5).random, 2.0)
    picks = Counter(picker(pool, ctx, lambda s, c: 1.0) is target for _ in range(300))
    assert (picks[True] == 300) is keeps


def test_single_candidate_needs_no_draw() -> None:
    only = [state("a")]
    picker = PowerOfTwo(lambda: 1 / 0, 1.25)  # type: ignore[arg-type,return-value]
    assert picker(only, context(only), by_in_flight) is only[0]


def test_best_scores_every_candidate() -> None:
    pool = [state("a", in_flight=3), state("b", in_flight=1), state("c", in_flight=2)]
    picker = Best(random.Random(4).random, 1.25)
    assert all(picker(pool, context(pool), by_in_flight) is pool[1] for _ in range(50))

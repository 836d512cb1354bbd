"""Pickers: choose one endpoint of the filtered candidates.

``p2c`` (the default) is the power of two choices: draw two candidates, keep the better
scored. It costs two score evaluations whatever the number of endpoints and, unlike
"always the best", does not herd every request onto the endpoint that looked best at the
last scrape. With a prefix key, the first of the two is the key's rendezvous target, so
a prefix sticks to its endpoint until another one scores better by more than the
affinity weight. ``best`` scores every candidate (small pools, or tests).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.routing.affinity import rendezvous
from gateway.routing.config import RoutingConfig
from gateway.routing.plugins import PickContext, Picker, Pool, ScoreFn
from gateway.routing.registry import EndpointState

Random = Callable[[], float]


def weighted_choice(pool: Pool, skip: EndpointState | None, random: Random,
                    uniform: bool = False) -> EndpointState:
    """A candidate other than ``skip`` (None or in ``pool``), drawn in proportion to weight."""
    if uniform:
        if skip is None:
            return pool[int(random() * len(pool))]
        chosen = pool[int(random() * (len(pool) - 1))]
        return pool[-1] if chosen is skip else chosen  # uniform over the others
    total = 0
    for state in pool:
        if state is not skip:
            total += state.endpoint.weight
    left = random() * total
    chosen = pool[0]
    for state in pool:
        if state is skip:
            continue
        chosen = state
        left -= state.endpoint.weight
        if left < 0:
            break
    return chosen


class PowerOfTwo:
    name = "p2c"

    def __init__(self, random: Random) -> None:
        self.random = random

    def __call__(self, pool: Pool, ctx: PickContext, score: ScoreFn) -> EndpointState:
        if len(pool) == 1:
            ctx.affine = pool[0] if ctx.affinity else None
            return pool[0]
        uniform = ctx.route.uniform
        if ctx.affinity:
            first = ctx.affine = rendezvous(pool, ctx.affinity, uniform)
        else:
            first = weighted_choice(pool, None, self.random, uniform)
        second = weighted_choice(pool, first, self.random, uniform)
        return second if score(second, ctx) > score(first, ctx) else first


class Best:
    name = "best"

    def __init__(self, random: Random) -> None:
        self.random = random

    def __call__(self, pool: Pool, ctx: PickContext, score: ScoreFn) -> EndpointState:
        if ctx.affinity:
            ctx.affine = rendezvous(pool, ctx.affinity, ctx.route.uniform)
        start = int(self.random() * len(pool))  # ties go to a random one
        best, best_score = pool[start], -1.0
        for i in range(len(pool)):
            state = pool[(start + i) % len(pool)]
            value = score(state, ctx)
            if value > best_score:
                best, best_score = state, value
        return best


def build_picker(config: RoutingConfig, random: Random) -> Picker:
    return PowerOfTwo(random) if config.picker == "p2c" else Best(random)


if TYPE_CHECKING:  # each picker fits the interface
    _checks: tuple[Picker, ...] = (PowerOfTwo(lambda: 0.5), Best(lambda: 0.5))

"""Pickers: choose one endpoint of the filtered candidates.

``p2c`` (the default) is the power of two choices: draw two candidates, keep the better
scored. It costs two score evaluations whatever the number of endpoints and, unlike
"always the best", does not herd every request onto the endpoint that looked best at the
last scrape. With a prefix key, the first of the two is the key's rendezvous target, so
a prefix sticks to its endpoint until another one scores better by more than the
affinity weight. ``best`` scores every candidate (small pools, or tests).

Affinity has a bounded load (as in consistent hashing with bounded loads): a target that
holds more than ``affinity_load_factor`` times its share of the gateway's requests in
flight (plus one) loses its affinity for this pick, so a prefix never piles onto an
endpoint that answers slowly, whether or not that shows as a vLLM queue.
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


def affine_target(pool: Pool, ctx: PickContext, load_factor: float) -> EndpointState | None:
    """The key's rendezvous target, unless it is over its bounded load (then None)."""
    target = rendezvous(pool, ctx.affinity, ctx.route.uniform)
    in_flight = weight = 0
    for state in pool:
        in_flight += state.in_flight
        weight += state.endpoint.weight
    share = in_flight * target.endpoint.weight / weight
    return target if target.in_flight <= load_factor * share + 1 else None


class PowerOfTwo:
    name = "p2c"

    def __init__(self, random: Random, load_factor: float) -> None:
        self.random = random
        self.load_factor = load_factor

    def __call__(self, pool: Pool, ctx: PickContext, score: ScoreFn) -> EndpointState:
        if len(pool) == 1:
            ctx.affine = pool[0] if ctx.affinity else None
            return pool[0]
        uniform = ctx.route.uniform
        target = affine_target(pool, ctx, self.load_factor) if ctx.affinity else None
        if target is not None:
            first = ctx.affine = target
        else:
            first = weighted_choice(pool, None, self.random, uniform)
        second = weighted_choice(pool, first, self.random, uniform)
        return second if score(second, ctx) > score(first, ctx) else first


class Best:
    name = "best"

    def __init__(self, random: Random, load_factor: float) -> None:
        self.random = random
        self.load_factor = load_factor

    def __call__(self, pool: Pool, ctx: PickContext, score: ScoreFn) -> EndpointState:
        if ctx.affinity:
            ctx.affine = affine_target(pool, ctx, self.load_factor)
        start = int(self.random() * len(pool))  # ties go to a random one
        best, best_score = pool[start], -1.0
        for i in range(len(pool)):
            state = pool[(start + i) % len(pool)]
            value = score(state, ctx)
            if value > best_score:
                best, best_score = state, value
        return best


def build_picker(config: RoutingConfig, random: Random) -> Picker:
    kind = PowerOfTwo if config.picker == "p2c" else Best
    return kind(random, config.affinity_load_factor)


if TYPE_CHECKING:  # each picker fits the interface
    _checks: tuple[Picker, ...] = (PowerOfTwo(lambda: 0.5, 1.25), Best(lambda: 0.5, 1.25))

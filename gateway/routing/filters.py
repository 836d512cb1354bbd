"""Filters: narrow a pick's candidates. Each returns the input list when all stay.

``available`` is hard with a panic fallback (Envoy's panic mode: when nothing is known
healthy, trying is better than refusing); the others are soft: they never remove the
last candidates, they only say which ones to prefer. ``slow_start`` draws at random, and
only for endpoints in their ramp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.routing.config import FilterName, RoutingConfig
from gateway.routing.health import available
from gateway.routing.plugins import Filter, PickContext, Pool
from gateway.routing.registry import EndpointState


class Available:
    """Drop endpoints that are down (probes), ejected, or busy with their trial request."""

    name = "available"

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        now = ctx.now
        for state in pool:
            if not available(state, now):
                break
        else:
            return pool
        kept = [state for state in pool if available(state, now)]
        if kept:
            return kept
        ctx.panic = True
        return pool


class SlowStart:
    """Gradual return (Envoy's slow start): an endpoint back in service (a trial passed,
    or probes found it up again) joins a share of the picks that grows over the ramp,
    from ``MIN_SHARE`` to all, whatever the other endpoints' load."""

    name = "slow_start"
    MIN_SHARE = 0.1

    def __init__(self, config: RoutingConfig, random: Callable[[], float]) -> None:
        self.ramp = config.slow_start_seconds
        self.random = random

    def joins(self, state: EndpointState, now: float) -> bool:
        progress = (now - state.warm_since) / self.ramp
        return progress >= 1 or self.random() < max(self.MIN_SHARE, progress)

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        if not self.ramp:
            return pool
        now = ctx.now
        for state in pool:
            if now - state.warm_since < self.ramp:
                break
        else:
            return pool
        return [state for state in pool if self.joins(state, now)] or pool


class NotSaturated:
    """Drop endpoints whose queue or KV cache is full (fresh metrics) or that just said 429."""

    name = "not_saturated"

    def __init__(self, config: RoutingConfig) -> None:
        self.max_waiting = config.saturated_waiting
        self.max_kv = config.saturated_kv_cache
        self.stale_after = config.metrics_stale_after

    def saturated(self, state: EndpointState, now: float) -> bool:
        if state.saturated_until > now:
            return True
        if now - state.scraped_at > self.stale_after:
            return False  # unknown is not saturated: stale metrics never block
        return state.waiting > self.max_waiting or state.kv_cache >= self.max_kv

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        now = ctx.now
        for state in pool:
            if self.saturated(state, now):
                break
        else:
            return pool
        return [state for state in pool if not self.saturated(state, now)] or pool


class OtherCluster:
    """On a retry, prefer clusters that have not failed this request yet."""

    name = "other_cluster"

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        tried = ctx.tried_clusters
        if not tried:
            return pool
        return [state for state in pool if state.endpoint.cluster not in tried] or pool


class Preferred:
    """Keep the model's most preferred clusters/regions among those still standing."""

    name = "preferred"

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        tier = ctx.route.tier
        if tier is None or len(pool) < 2:
            return pool
        best = min(tier[state] for state in pool)
        if all(tier[state] == best for state in pool):
            return pool
        return [state for state in pool if tier[state] == best]


def build_filters(config: RoutingConfig, random: Callable[[], float]) -> tuple[Filter, ...]:
    made: dict[FilterName, Filter] = {
        "available": Available(),
        "slow_start": SlowStart(config, random),
        "not_saturated": NotSaturated(config),
        "other_cluster": OtherCluster(),
        "preferred": Preferred(),
    }
    return tuple(made[name] for name in config.filters)


if TYPE_CHECKING:  # each filter fits the interface
    _config = RoutingConfig()
    _checks: tuple[Filter, ...] = (Available(), SlowStart(_config, lambda: 0.5), NotSaturated(_config),
                                   OtherCluster(), Preferred())

"""Scorers: how good an endpoint is for a request, each in [0, 1] (higher is better).

The router adds them up with the weights of ``routing.scorers``. Load scorers use the
form 1 / (1 + load / scale): 1 when idle, 1/2 at ``scale``, towards 0 beyond. Scraped
metrics older than ``metrics_stale_after`` score a neutral 1/2: unknown, not blocking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.routing.config import RoutingConfig, ScorerName
from gateway.routing.plugins import PickContext, Scorer
from gateway.routing.registry import EndpointState

UNKNOWN = 0.5


class InFlight:
    """The gateway's own requests in flight there, per unit of weight (exact and current)."""

    name = "inflight"

    def __init__(self, config: RoutingConfig) -> None:
        self.scale = config.inflight_scale

    def __call__(self, state: EndpointState, ctx: PickContext) -> float:
        return 1.0 / (1.0 + state.in_flight / (state.endpoint.weight * self.scale))


class Queue:
    """vLLM's own queue (``vllm:num_requests_waiting``): all clients' load, a scrape old."""

    name = "queue"

    def __init__(self, config: RoutingConfig) -> None:
        self.scale = config.queue_scale
        self.stale_after = config.metrics_stale_after

    def __call__(self, state: EndpointState, ctx: PickContext) -> float:
        if ctx.now - state.scraped_at > self.stale_after:
            return UNKNOWN
        return 1.0 / (1.0 + state.waiting / self.scale)


class KVCache:
    """Free KV cache (1 - ``vllm:kv_cache_usage_perc``): room for long prompts."""

    name = "kv_cache"

    def __init__(self, config: RoutingConfig) -> None:
        self.stale_after = config.metrics_stale_after

    def __call__(self, state: EndpointState, ctx: PickContext) -> float:
        if ctx.now - state.scraped_at > self.stale_after:
            return UNKNOWN
        return min(1.0, max(0.0, 1.0 - state.kv_cache))


class Affinity:
    """1 for the endpoint the request's prompt prefix hashes to, else 0."""

    name = "affinity"

    def __call__(self, state: EndpointState, ctx: PickContext) -> float:
        return 1.0 if state is ctx.affine else 0.0


def build_scorers(config: RoutingConfig) -> tuple[tuple[float, Scorer], ...]:
    made: dict[ScorerName, Scorer] = {
        "inflight": InFlight(config),
        "queue": Queue(config),
        "kv_cache": KVCache(config),
        "affinity": Affinity(),
    }
    return tuple((weight, made[name]) for name, weight in config.scorers.items() if weight > 0)


if TYPE_CHECKING:  # each scorer fits the interface
    _config = RoutingConfig()
    _checks: tuple[Scorer, ...] = (InFlight(_config), Queue(_config), KVCache(_config), Affinity())

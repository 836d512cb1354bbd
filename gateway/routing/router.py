"""The router: pick an endpoint for a request; hear back how it went.

The pipeline's side of the contract::

    endpoint = router.pick(model, affinity, tried)   # sync, pure of I/O: never awaits
    router.started(endpoint)                         # a request is on its way there
    router.responded(endpoint)                       # headers arrived, no 5xx
    router.saturated(endpoint)                       # it answered 429: try elsewhere
    router.finished(endpoint, ok)                    # the request left it (ok=False: its fault)

and the monitor's: ``probed`` and ``scraped``. ``sync(catalog)`` swaps in a reloaded
models.yaml, keeping each remaining URL's state. A pick is: candidates of the model,
minus endpoints this request already tried, through the filters, then the picker with
the weighted sum of the scorers.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from gateway.catalog import Catalog, Endpoint, Model
from gateway.errors import NoHealthyEndpoint
from gateway.redact import redact_url
from gateway.routing import health
from gateway.routing.affinity import prefix_key
from gateway.routing.config import RoutingConfig
from gateway.routing.filters import NotSaturated, build_filters
from gateway.routing.pickers import build_picker
from gateway.routing.plugins import PickContext
from gateway.routing.registry import EndpointRegistry, EndpointState
from gateway.routing.scorers import build_scorers

log = logging.getLogger("tokengate.routing")


class Router:
    def __init__(self, catalog: Catalog | None = None, *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.clock = clock
        self.random = (rng or random.Random()).random
        self.registry = EndpointRegistry()
        self.failovers = 0  # picks for a retry of the same request
        self.panics = 0  # picks made while no candidate was available
        self.configure(catalog.routing if catalog else RoutingConfig())
        if catalog is not None:
            self.registry.sync(catalog)

    def configure(self, config: RoutingConfig) -> None:
        self.config = config
        self.saturation = NotSaturated(config)
        self.filters = build_filters(config, self.random)
        self.scorers = build_scorers(config)
        self.picker = build_picker(config, self.random)

    def sync(self, catalog: Catalog) -> None:
        """Adopt a (re)loaded catalog: new endpoints start fresh, remaining ones keep state."""
        self.configure(catalog.routing)
        self.registry.sync(catalog)

    @property
    def states(self) -> dict[str, EndpointState]:
        return self.registry.states

    # --- the hot path -----------------------------------------------------------------

    def affinity_key(self, body: dict[str, Any]) -> int:
        return prefix_key(body, self.config.affinity_chars, self.config.affinity_min_chars)

    def pick(self, model: Model, affinity: int = 0, tried: Sequence[Endpoint] = ()) -> Endpoint:
        """The endpoint for the next attempt; NoHealthyEndpoint when none is left to try."""
        route = self.registry.route(model)
        pool = route.states
        ctx = PickContext(route, self.clock(), affinity)
        if tried:
            self.failovers += 1
            urls = {ep.url for ep in tried}
            pool = [state for state in pool if state.endpoint.url not in urls]
            ctx.tried_clusters = frozenset(ep.cluster for ep in tried)
        if not pool:
            raise NoHealthyEndpoint(f"no upstream endpoint is left to try for model '{model.name}'",
                                    code="no_healthy_endpoint")
        for keep in self.filters:
            pool = keep(pool, ctx)
        if ctx.panic:
            self.panics += 1
        return self.picker(pool, ctx, self.score).endpoint

    def has_room(self, model: Model, out: int) -> bool:
        """May this process send ``model`` one more request, with ``out`` already sent
        (gateway/flow.py)? Yes while an available endpoint of it is neither saturated nor
        at its ``max_in_flight`` (the caps of the unsaturated ones added up), and when none is
        available at all (the pick answers that)."""
        now = self.clock()
        capacity, available = 0, False
        for state in self.registry.route(model).states:
            if not health.available(state, now):
                continue
            available = True
            if self.saturation.saturated(state, now):
                continue
            cap = state.endpoint.max_in_flight
            if cap is None:
                return True
            capacity += cap
        return out < capacity or not available

    def score(self, state: EndpointState, ctx: PickContext) -> float:
        total = 0.0
        for weight, scorer in self.scorers:
            total += weight * scorer(state, ctx)
        return total

    def started(self, endpoint: Endpoint) -> None:
        state = self.registry.lookup(endpoint)
        if state is not None:
            health.started(state, self.clock(), self.config)

    def responded(self, endpoint: Endpoint) -> None:
        state = self.registry.lookup(endpoint)
        if state is not None:
            health.responded(state, self.clock())

    def saturated(self, endpoint: Endpoint) -> None:
        state = self.registry.lookup(endpoint)
        if state is not None:
            health.mark_saturated(state, self.clock(), self.config)

    def finished(self, endpoint: Endpoint, ok: bool) -> None:
        state = self.registry.lookup(endpoint)
        if state is None:
            return
        if health.finished(state, ok, self.clock(), self.config):
            log.warning("routing: ejected %s (%s) after consecutive failures; back in %.0fs",
                        redact_url(endpoint.url), endpoint.cluster, state.open_until - self.clock())
        self.registry.settle_draining(state)

    # --- the monitor's reports ----------------------------------------------------------

    def probed(self, state: EndpointState, ok: bool, error: str = "") -> None:
        change = health.probed(state, ok, self.clock(), self.config, error)
        if change == "down":
            log.warning("routing: %s (%s) is down: %s", redact_url(state.endpoint.url),
                        state.endpoint.cluster, error)
        elif change == "up":
            log.warning("routing: %s (%s) is back up", redact_url(state.endpoint.url),
                        state.endpoint.cluster)

    def scraped(self, state: EndpointState, running: float, waiting: float, kv_cache: float) -> None:
        health.scraped(state, running, waiting, kv_cache, self.clock())

"""What the router knows of each endpoint, and each model's candidate list.

One ``EndpointState`` per upstream URL, kept across models.yaml reloads for URLs that
remain (counters, breaker, scraped metrics survive). The hot path reads these plain
attributes; the background monitor and the pipeline's reports write them. Everything
runs on the event loop thread, so no locks.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from gateway.catalog import Catalog, Endpoint, Model

CLOSED = "closed"  # serving normally
OPEN = "open"  # ejected until ``open_until``; then one trial request may pass
HALF_OPEN = "half_open"  # a trial request is in flight (another allowed after ``open_until``)

NEVER = -math.inf


@dataclass(slots=True, eq=False)
class EndpointState:
    """Health, load and scraped metrics of one endpoint (identity-hashed: one per URL)."""

    endpoint: Endpoint
    seed: int  # rendezvous-hash seed of the URL: the same in every gateway process

    # The gateway's own view, exact and current.
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    consecutive_failures: int = 0

    # Circuit breaker fed by passive outlier detection.
    breaker: str = CLOSED
    open_until: float = 0.0
    ejections: int = 0
    ejection_streak: int = 0
    last_ejection: str = ""
    warm_since: float = NEVER  # back in service at this time: slow start ramps from here
    saturated_until: float = 0.0  # the upstream answered 429: skip it while others are free

    # Active probes (GET /health).
    probe_ok: bool = True
    probe_failures: int = 0
    probed_at: float = NEVER
    probe_error: str = ""

    # Scraped from GET /metrics; stale after ``metrics_stale_after`` and then ignored.
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0
    scraped_at: float = NEVER
    scrape_error: str = ""


def url_seed(url: str) -> int:
    """A 64-bit seed from the URL that every gateway process computes alike."""
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class ModelRoute:
    """A model's candidates and, when it has a preference, each one's tier (0 = best)."""

    name: str
    states: list[EndpointState]
    tier: dict[EndpointState, int] | None = None
    uniform: bool = True  # all weights equal: pickers draw without weighing

    def __post_init__(self) -> None:
        self.uniform = len({state.endpoint.weight for state in self.states}) <= 1


def preference_tiers(model: Model, states: list[EndpointState]) -> dict[EndpointState, int] | None:
    """Tier of each candidate: the index of the first ``prefer`` entry naming its cluster
    or region; endpoints named by none come last."""
    if not model.prefer:
        return None
    tiers: dict[EndpointState, int] = {}
    for state in states:
        ep = state.endpoint
        tiers[state] = next(
            (i for i, place in enumerate(model.prefer) if place in (ep.cluster, ep.region)),
            len(model.prefer),
        )
    return tiers


class EndpointRegistry:
    """URL -> state, and model -> route; rebuilt by ``sync`` on every catalog (re)load."""

    def __init__(self) -> None:
        self.states: dict[str, EndpointState] = {}
        self.routes: dict[str, ModelRoute] = {}
        # Removed by a reload while requests were still on them: kept until those end.
        self.draining: dict[str, EndpointState] = {}

    def sync(self, catalog: Catalog) -> None:
        old = self.states
        states: dict[str, EndpointState] = {}
        for ep in catalog.endpoints:
            state = old.get(ep.url) or self.draining.pop(ep.url, None)
            if state is None:
                state = EndpointState(ep, url_seed(ep.url))
            else:
                state.endpoint = ep  # weight, cluster or key may have changed
            states[ep.url] = state
        for url, state in old.items():
            if url not in states and state.in_flight > 0:
                self.draining[url] = state
        self.routes = {name: self._route(model, states) for name, model in catalog.models.items()}
        self.states = states

    @staticmethod
    def _route(model: Model, states: dict[str, EndpointState]) -> ModelRoute:
        candidates = [states[ep.url] for ep in model.endpoints]
        return ModelRoute(model.name, candidates, preference_tiers(model, candidates))

    def route(self, model: Model) -> ModelRoute:
        """The model's current route; a model gone in a reload keeps its own endpoints."""
        route = self.routes.get(model.name)
        if route is not None:
            return route
        candidates = [self.lookup(ep) or EndpointState(ep, url_seed(ep.url)) for ep in model.endpoints]
        return ModelRoute(model.name, candidates, preference_tiers(model, candidates))

    def lookup(self, endpoint: Endpoint) -> EndpointState | None:
        return self.states.get(endpoint.url) or self.draining.get(endpoint.url)

    def settle_draining(self, state: EndpointState) -> None:
        if state.in_flight <= 0 and self.draining.get(state.endpoint.url) is state:
            del self.draining[state.endpoint.url]

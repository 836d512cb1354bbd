"""Choose an upstream endpoint for a model: healthy first, then least loaded per weight.

A deliberately small router for the foundation: the gateway's own in-flight count per
endpoint, weights from models.yaml, and passive ejection after consecutive failures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.catalog import Endpoint
from gateway.errors import NoHealthyEndpoint

EJECT_AFTER_FAILURES = 3
EJECT_SECONDS = 5.0


@dataclass(slots=True)
class EndpointState:
    """What the router knows of one endpoint (kept across catalog reloads by URL)."""

    in_flight: int = 0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    requests: int = 0
    failures: int = 0

    def healthy(self, now: float) -> bool:
        return self.ejected_until <= now


class Router:
    """Picks endpoints; the pipeline reports back successes and failures."""

    def __init__(self) -> None:
        self.states: dict[str, EndpointState] = {}

    def state(self, endpoint: Endpoint) -> EndpointState:
        state = self.states.get(endpoint.url)
        if state is None:
            state = self.states[endpoint.url] = EndpointState()
        return state

    def pick(self, candidates: Iterable[Endpoint], exclude: set[str]) -> Endpoint:
        now = time.monotonic()
        pool = [ep for ep in candidates if ep.url not in exclude]
        if not pool:
            raise NoHealthyEndpoint("no upstream endpoint is available for this model")
        healthy = [ep for ep in pool if self.state(ep).healthy(now)] or pool
        best = min(self.state(ep).in_flight / ep.weight for ep in healthy)
        choices = [ep for ep in healthy if self.state(ep).in_flight / ep.weight == best]
        if len(choices) == 1:
            return choices[0]
        return random.choices(choices, weights=[ep.weight for ep in choices])[0]

    def started(self, endpoint: Endpoint) -> None:
        state = self.state(endpoint)
        state.in_flight += 1
        state.requests += 1

    def finished(self, endpoint: Endpoint, ok: bool) -> None:
        state = self.state(endpoint)
        state.in_flight -= 1
        if ok:
            state.consecutive_failures = 0
            return
        state.failures += 1
        state.consecutive_failures += 1
        if state.consecutive_failures >= EJECT_AFTER_FAILURES:
            state.ejected_until = time.monotonic() + EJECT_SECONDS

"""The three plugin interfaces of a pick, and what one pick knows (``PickContext``).

A pick runs the candidates through the configured filters (each may narrow the list;
soft filters never empty it), lets the picker choose among the rest, and the picker
asks the weighted sum of the scorers (each in [0, 1], higher is better) when it has to
compare. All synchronous and allocation-light: a pick never awaits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway.routing.registry import EndpointState, ModelRoute


class PickContext:
    """One pick's inputs, plus what filters and pickers learn on the way."""

    __slots__ = ("affine", "affinity", "now", "panic", "route", "tried_clusters")

    def __init__(self, route: ModelRoute, now: float, affinity: int = 0,
                 tried_clusters: frozenset[str] = frozenset()) -> None:
        self.route = route
        self.now = now
        self.affinity = affinity  # prefix key, 0 = none
        self.tried_clusters = tried_clusters  # clusters of endpoints that failed this request
        self.affine: EndpointState | None = None  # the affinity target, set by the picker
        self.panic = False  # set when every candidate was unavailable and all were kept


Pool = list[EndpointState]


class Filter(Protocol):
    name: str

    def __call__(self, pool: Pool, ctx: PickContext) -> Pool:
        """The candidates to keep (``pool`` itself when all stay: no copy)."""
        ...


class Scorer(Protocol):
    name: str

    def __call__(self, state: EndpointState, ctx: PickContext) -> float:
        """How good this endpoint is for this request, in [0, 1]."""
        ...


ScoreFn = Callable[[EndpointState, PickContext], float]


class Picker(Protocol):
    name: str

    def __call__(self, pool: Pool, ctx: PickContext, score: ScoreFn) -> EndpointState:
        """One endpoint of ``pool`` (never empty)."""
        ...

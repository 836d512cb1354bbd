"""Each scorer against a table of endpoint states: a value in [0, 1], higher is better."""

from __future__ import annotations

import math

import pytest

from gateway.routing.config import RoutingConfig
from gateway.routing.plugins import Scorer
from gateway.routing.registry import EndpointState
from gateway.routing.scorers import Affinity, InFlight, KVCache, Queue, build_scorers
from tests.routing.helpers import context, state

NOW = 100.0
CONFIG = RoutingConfig(inflight_scale=16, queue_scale=2, metrics_stale_after=5)


@pytest.mark.parametrize(
    ("scorer", "endpoint", "expected"),
    [
        (InFlight(CONFIG), state("a"), 1.0),
        (InFlight(CONFIG), state("a", in_flight=16), 0.5),
        (InFlight(CONFIG), state("a", weight=2, in_flight=16), 2 / 3),  # twice the weight
        (InFlight(CONFIG), state("a", in_flight=48), 0.25),
        (Queue(CONFIG), state("a", waiting=0, scraped_at=NOW - 1), 1.0),
        (Queue(CONFIG), state("a", waiting=2, scraped_at=NOW - 1), 0.5),
        (Queue(CONFIG), state("a", waiting=6, scraped_at=NOW - 1), 0.25),
        (Queue(CONFIG), state("a", waiting=6, scraped_at=NOW - 9), 0.5),  # stale: unknown
        (Queue(CONFIG), state("a"), 0.5),  # never scraped
        (KVCache(CONFIG), state("a", kv_cache=0.25, scraped_at=NOW), 0.75),
        (KVCache(CONFIG), state("a", kv_cache=1.0, scraped_at=NOW), 0.0),
        (KVCache(CONFIG), state("a", kv_cache=0.9, scraped_at=NOW - 9), 0.5),
    ],
)
def test_scorer_table(scorer: Scorer, endpoint: EndpointState, expected: float) -> None:
    value = scorer(endpoint, context([endpoint], NOW))
    assert 0.0 <= value <= 1.0
    assert math.isclose(value, expected)


def test_affinity_scores_the_target_only() -> None:
    a, b = state("a"), state("b")
    ctx = context([a, b], NOW, affinity=7)
    ctx.affine = b
    assert (Affinity()(a, ctx), Affinity()(b, ctx)) == (0.0, 1.0)


def test_build_scorers_keeps_configured_weights_and_drops_zeros() -> None:
    config = RoutingConfig(scorers={"inflight": 2, "affinity": 0, "queue": 1})
    assert [(w, s.name) for w, s in build_scorers(config)] == [(2, "inflight"), (1, "queue")]

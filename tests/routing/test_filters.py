"""Each filter against a table of candidates: who stays, and what the context learns."""

from __future__ import annotations

import math

import pytest

from gateway.routing.config import RoutingConfig
from gateway.routing.filters import Available, NotSaturated, OtherCluster, Preferred, SlowStart
from gateway.routing.registry import HALF_OPEN, OPEN, EndpointState
from tests.routing.helpers import context, names, state

NOW = 100.0
FRESH = NOW - 1
STALE = NOW - 60


@pytest.mark.parametrize(
    ("pool", "kept", "panic"),
    [
        ([state("a"), state("b")], ["a", "b"], False),
        ([state("a", probe_ok=False), state("b")], ["b"], False),
        ([state("a", breaker=OPEN, open_until=NOW + 5), state("b")], ["b"], False),
        ([state("a", breaker=OPEN, open_until=NOW - 1), state("b")], ["a", "b"], False),  # trial
        ([state("a", breaker=HALF_OPEN, open_until=NOW + 5), state("b")], ["b"], False),  # trial busy
        ([state("a", probe_ok=False), state("b", breaker=OPEN, open_until=NOW + 5)], ["a", "b"], True),
    ],
    ids=["all-up", "probe-down", "ejected", "ejection-over", "trial-in-flight", "panic"],
)
def test_available(pool: list[EndpointState], kept: list[str], panic: bool) -> None:
    ctx = context(pool, NOW)
    assert names(Available()(pool, ctx)) == kept
    assert ctx.panic is panic


CONFIG = RoutingConfig(saturated_waiting=8, saturated_kv_cache=0.95, metrics_stale_after=5)


@pytest.mark.parametrize(
    ("pool", "kept"),
    [
        ([state("a", waiting=9, scraped_at=FRESH), state("b")], ["b"]),
        ([state("a", waiting=8, scraped_at=FRESH), state("b")], ["a", "b"]),
        ([state("a", kv_cache=0.97, scraped_at=FRESH), state("b")], ["b"]),
        ([state("a", waiting=50, scraped_at=STALE), state("b")], ["a", "b"]),  # stale: ignored
        ([state("a", saturated_until=NOW + 1), state("b")], ["b"]),  # just answered 429
        ([state("a", waiting=20, scraped_at=FRESH), state("b", kv_cache=1.0, scraped_at=FRESH)],
         ["a", "b"]),  # all saturated: keep all
        ([state("a", scraped_at=-math.inf)], ["a"]),
    ],
    ids=["queue-full", "queue-at-limit", "kv-full", "stale", "said-429", "all-saturated", "never-scraped"],
)
def test_not_saturated(pool: list[EndpointState], kept: list[str]) -> None:
    assert names(NotSaturated(CONFIG)(pool, context(pool, NOW))) == kept


@pytest.mark.parametrize(
    ("tried", "kept"),
    [
        (frozenset(), ["a", "b", "c"]),
        (frozenset({"east"}), ["c"]),
        (frozenset({"east", "west"}), ["a", "b", "c"]),  # nothing else left: keep all
    ],
)
def test_other_cluster(tried: frozenset[str], kept: list[str]) -> None:
    pool = [state("a", "east"), state("b", "east"), state("c", "west")]
    assert names(OtherCluster()(pool, context(pool, tried_clusters=tried))) == kept


@pytest.mark.parametrize(
    ("tiers", "kept"),
    [
        (None, ["a", "b", "c"]),
        ([0, 0, 1], ["a", "b"]),
        ([1, 1, 0], ["c"]),
        ([2, 1, 1], ["b", "c"]),
        ([1, 1, 1], ["a", "b", "c"]),
    ],
)
def test_preferred(tiers: list[int] | None, kept: list[str]) -> None:
    pool = [state("a", "east"), state("b", "east"), state("c", "west")]
    tier = dict(zip(pool, tiers, strict=True)) if tiers else None
    assert names(Preferred()(pool, context(pool, NOW, tier=tier))) == kept


@pytest.mark.parametrize(
    ("warm_since", "draw", "kept"),
    [
        (-math.inf, 0.99, ["a", "b"]),  # in service since start: no draw
        (NOW - 10, 0.99, ["a", "b"]),  # ramp done
        (NOW - 2.5, 0.2, ["a", "b"]),  # 25% through the ramp: in 25% of picks
        (NOW - 2.5, 0.3, ["b"]),
        (NOW, 0.05, ["a", "b"]),  # just back: still in 10% of picks
        (NOW, 0.5, ["b"]),
    ],
)
def test_slow_start(warm_since: float, draw: float, kept: list[str]) -> None:
    pool = [state("a", warm_since=warm_since), state("b")]
    ramp = SlowStart(RoutingConfig(slow_start_seconds=10), lambda: draw)
    assert names(ramp(pool, context(pool, NOW))) == kept


def test_slow_start_never_empties_the_pool() -> None:
    pool = [state("a", warm_since=NOW)]
    assert SlowStart(RoutingConfig(slow_start_seconds=10), lambda: 0.99)(pool, context(pool, NOW)) == pool


def test_filters_return_the_same_list_when_nothing_is_removed() -> None:
    pool = [state("a", "east"), state("b", "west")]
    ctx = context(pool, tier={pool[0]: 0, pool[1]: 0})
    for keep in (Available(), SlowStart(CONFIG, lambda: 0.0), NotSaturated(CONFIG), OtherCluster(),
                 Preferred()):
        assert keep(pool, ctx) is pool

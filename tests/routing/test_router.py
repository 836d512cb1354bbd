"""The router end to end on a catalog, with a fake clock: failover, preference, load,
affinity and reloads. No I/O: what the pipeline and the monitor report is called directly."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gateway.catalog import Endpoint, Model
from gateway.errors import NoHealthyEndpoint
from gateway.routing.router import Router
from tests.routing.helpers import catalog

SYSTEM = "You are the help desk of a very large library. " * 20


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router_for(clock: Clock, prefer: list[str] | None = None) -> tuple[Router, Model]:
    cat = catalog({"east": ["e1", "e2"], "west": ["w1"]}, prefer=prefer)
    return Router(cat, clock=clock, rng=random.Random(7)), cat.models["m"]


def host(endpoint: Endpoint) -> str:
    return endpoint.url.removeprefix("http://").removesuffix(":8000")


def spread(router: Router, model: Model, n: int = 600, affinity: int = 0) -> Counter[str]:
    return Counter(host(router.pick(model, affinity)) for _ in range(n))


def test_even_spread_when_all_idle() -> None:
    counts = spread(*router_for(Clock()))
    assert all(150 < counts[h] < 250 for h in ("e1", "e2", "w1"))


def test_failover_avoids_tried_endpoints_and_their_cluster() -> None:
    router, model = router_for(Clock())
    e1 = router.registry.states["http://e1:8000"].endpoint
    for _ in range(50):
        assert host(router.pick(model, 0, [e1])) == "w1"  # e2 is in the cluster that just failed
    w1 = router.registry.states["http://w1:8000"].endpoint
    assert host(router.pick(model, 0, [e1, w1])) == "e2"
    with pytest.raises(NoHealthyEndpoint):
        router.pick(model, 0, [e1, w1, router.registry.states["http://e2:8000"].endpoint])
    assert router.failovers == 52


def test_preference_spills_when_preferred_cluster_is_down_and_returns() -> None:
    clock = Clock()
    router, model = router_for(clock, prefer=["east"])
    assert set(spread(router, model, 200)) == {"e1", "e2"}
    for url in ("http://e1:8000", "http://e2:8000"):
        for _ in range(2):
            router.probed(router.states[url], False, "ClientConnectorError")
    assert spread(router, model, 100) == {"w1": 100}
    clock.now += 30
    router.probed(router.states["http://e1:8000"], True)
    clock.now += 3  # slow start: traffic goes back gradually
    returning = spread(router, model, 300)
    assert 50 < returning["e1"] < 130 and returning["w1"] + returning["e1"] == 300
    clock.now += 7
    assert set(spread(router, model, 100)) == {"e1"}  # warm: preference is back in full


def test_saturated_preferred_region_spills_over() -> None:
    clock = Clock()
    router, model = router_for(clock, prefer=["east-region"])
    for url in ("http://e1:8000", "http://e2:8000"):
        router.scraped(router.states[url], running=256, waiting=30, kv_cache=0.5)
    assert spread(router, model, 100) == {"w1": 100}
    clock.now += 10  # the scrape is stale now: no longer trusted either way
    assert set(spread(router, model, 100)) == {"e1", "e2"}


def test_passive_ejection_and_gradual_return() -> None:
    clock = Clock()
    router, model = router_for(clock)
    e1 = router.states["http://e1:8000"].endpoint
    for _ in range(3):
        router.started(e1)
        router.finished(e1, ok=False)
    assert "e1" not in spread(router, model, 200)
    clock.now += 5  # ejection over: one trial
    picks = [router.pick(model) for _ in range(300)]
    assert e1 in picks
    router.started(e1)
    assert "e1" not in spread(router, model, 100)  # the trial is in flight
    router.responded(e1)
    router.finished(e1, ok=True)
    clock.now += 2.5
    warming = spread(router, model, 600)["e1"]
    clock.now += 30
    assert 20 < warming < 100 < spread(router, model, 600)["e1"]  # slow start, then a full share


def test_load_moves_traffic_away_from_a_long_queue() -> None:
    clock = Clock()
    router, model = router_for(clock)
    router.scraped(router.states["http://e1:8000"], running=2, waiting=12, kv_cache=0.4)
    router.scraped(router.states["http://e2:8000"], running=1, waiting=0, kv_cache=0.0)
    router.scraped(router.states["http://w1:8000"], running=1, waiting=0, kv_cache=0.0)
    assert spread(router, model, 300)["e1"] == 0  # past saturated_waiting: filtered out
    router.scraped(router.states["http://e1:8000"], running=2, waiting=3, kv_cache=0.4)
    assert spread(router, model, 300)["e1"] < 30  # queued: it loses nearly every comparison


def test_affinity_sticks_until_the_target_is_overloaded() -> None:
    router, model = router_for(Clock())
    key = router.affinity_key({"messages": [{"role": "system", "content": SYSTEM}]})
    target = router.pick(model, key)
    assert all(router.pick(model, key) == target for _ in range(200))
    router.states[target.url].in_flight = 40  # far busier than the others
    assert sum(router.pick(model, key) == target for _ in range(200)) < 20


def test_all_unavailable_is_a_panic_not_a_refusal() -> None:
    router, model = router_for(Clock())
    for state in router.states.values():
        for _ in range(2):
            router.probed(state, False, "down")
    assert sum(spread(router, model, 30).values()) == 30 and router.panics == 30


def test_reload_keeps_state_of_remaining_urls_and_drains_removed_ones() -> None:
    router, _ = router_for(Clock())
    e1 = router.states["http://e1:8000"]
    w1 = router.states["http://w1:8000"]
    e1.requests, e1.ejections = 17, 2
    router.started(w1.endpoint)  # a stream in flight on w1
    router.sync(catalog({"east": ["e1", "e3"]}, routing="  affinity_chars: 64\n"))
    assert router.states["http://e1:8000"] is e1 and e1.requests == 17
    assert set(router.states) == {"http://e1:8000", "http://e3:8000"}
    assert router.config.affinity_chars == 64
    assert router.registry.draining == {"http://w1:8000": w1}
    router.finished(w1.endpoint, ok=True)  # the stream ends after the reload
    assert w1.in_flight == 0 and router.registry.draining == {}

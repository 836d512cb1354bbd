"""The circuit breaker and probes as a state machine driven by a fake clock."""

from __future__ import annotations

from gateway.routing import health
from gateway.routing.config import RoutingConfig
from gateway.routing.registry import CLOSED, HALF_OPEN, OPEN, EndpointState
from tests.routing.helpers import state

CONFIG = RoutingConfig(eject_after_failures=3, eject_base_seconds=5, eject_max_seconds=12,
                       down_after_probes=2, slow_start_seconds=10)


def fail(endpoint: EndpointState, now: float) -> bool:
    health.started(endpoint, now, CONFIG)
    return health.finished(endpoint, False, now, CONFIG)


def test_consecutive_failures_eject_then_one_trial_closes() -> None:
    ep = state("a")
    assert not fail(ep, 0) and not fail(ep, 0)
    assert fail(ep, 0)  # the third in a row
    assert (ep.breaker, ep.open_until, ep.ejections, ep.in_flight) == (OPEN, 5, 1, 0)
    assert health.status(ep, 1, CONFIG) == "ejected" and not health.available(ep, 4.9)
    assert health.available(ep, 5)  # time is up: a trial may pass
    health.started(ep, 5, CONFIG)
    assert ep.breaker == HALF_OPEN and not health.available(ep, 5.1)  # one trial at a time
    health.responded(ep, 5.2)
    assert ep.breaker == CLOSED and ep.warm_since == 5.2 and ep.ejection_streak == 0
    assert health.status(ep, 6, CONFIG) == "warming" and health.status(ep, 16, CONFIG) == "up"
    health.finished(ep, True, 6, CONFIG)
    assert ep.in_flight == 0


def test_a_failed_trial_ejects_for_longer_capped() -> None:
    ep = state("a")
    for _ in range(3):
        fail(ep, 0)
    assert fail(ep, 5)  # the trial fails
    assert (ep.breaker, ep.open_until) == (OPEN, 15)  # 2 x base
    assert fail(ep, 15)
    assert ep.open_until == 27  # 3 x base = 15, capped at 12


def test_a_success_resets_the_count() -> None:
    ep = state("a")
    fail(ep, 0)
    fail(ep, 0)
    health.started(ep, 0, CONFIG)
    health.finished(ep, True, 0, CONFIG)
    assert not fail(ep, 0) and ep.breaker == CLOSED


def test_a_stuck_trial_lets_another_through_later() -> None:
    ep = state("a", breaker=OPEN, open_until=5)
    health.started(ep, 6, CONFIG)
    assert not health.available(ep, 10)
    assert health.available(ep, 11)  # trial neither answered nor failed within base seconds


def test_probes_mark_down_and_up_with_slow_start() -> None:
    ep = state("a")
    assert health.probed(ep, False, 1, CONFIG, "ClientConnectorError") == ""
    assert health.available(ep, 1)
    assert health.probed(ep, False, 2, CONFIG, "ClientConnectorError") == "down"
    assert not health.available(ep, 2) and health.status(ep, 2, CONFIG) == "down"
    assert ep.ejections == 1 and ep.last_ejection == "probe"
    assert health.probed(ep, True, 3, CONFIG) == "up"
    assert health.available(ep, 3) and ep.warm_since == 3 and ep.probe_error == ""


def test_probe_success_does_not_cut_a_passive_ejection_short() -> None:
    ep = state("a")
    for _ in range(3):
        fail(ep, 0)
    health.probed(ep, True, 1, CONFIG)
    assert not health.available(ep, 1)


def test_saturation_is_not_a_failure() -> None:
    ep = state("a")
    health.mark_saturated(ep, 10, CONFIG)
    assert ep.saturated_until == 10 + CONFIG.saturated_seconds and ep.failures == 0

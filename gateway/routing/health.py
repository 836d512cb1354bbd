"""Endpoint health: the circuit breaker (passive outlier detection) and active probes.

Modelled on Envoy's consecutive-5xx outlier detection: ``eject_after_failures`` failures
in a row (connect errors, 5xx, timeouts, streams cut by the upstream) eject an endpoint
for ``eject_base_seconds`` times the number of ejections in a row, capped at
``eject_max_seconds``. When that time is up, one trial request may pass (half-open); its
first byte closes the breaker, its failure ejects again for longer. Active probes mark an
endpoint down after ``down_after_probes`` failed ``/health`` checks and up again at the
first success. Every return to service starts a slow start (the ``slow_start`` filter) so
a recovered endpoint takes traffic gradually.

Pure functions of (state, now, config): the router calls them, tests drive them with a
fake clock.
"""

from __future__ import annotations

from gateway.routing.config import RoutingConfig
from gateway.routing.registry import CLOSED, HALF_OPEN, OPEN, EndpointState


def available(state: EndpointState, now: float) -> bool:
    """May the router send a request there now? (Down, ejected or mid-trial: no.)"""
    if not state.probe_ok:
        return False
    return state.breaker == CLOSED or now >= state.open_until


def status(state: EndpointState, now: float, config: RoutingConfig) -> str:
    """One word for operators: up, warming, half_open, ejected, down."""
    if not state.probe_ok:
        return "down"
    if state.breaker == OPEN:
        return "half_open" if now >= state.open_until else "ejected"
    if state.breaker == HALF_OPEN:
        return "half_open"
    if config.slow_start_seconds and now - state.warm_since < config.slow_start_seconds:
        return "warming"
    return "up"


def started(state: EndpointState, now: float, config: RoutingConfig) -> None:
    state.in_flight += 1
    state.requests += 1
    if state.breaker != CLOSED and now >= state.open_until:
        # This request is the trial; another may pass if it neither answers nor fails in time.
        state.breaker = HALF_OPEN
        state.open_until = now + config.eject_base_seconds


def responded(state: EndpointState, now: float) -> None:
    """Response headers arrived without a 5xx: a trial succeeded, the breaker closes."""
    if state.breaker == HALF_OPEN:
        state.breaker = CLOSED
        state.ejection_streak = 0
        state.consecutive_failures = 0
        state.warm_since = now


def finished(state: EndpointState, ok: bool, now: float, config: RoutingConfig) -> bool:
    """The request left the endpoint; True when this failure ejected it."""
    if state.in_flight > 0:
        state.in_flight -= 1
    if ok:
        state.consecutive_failures = 0
        return False
    state.failures += 1
    state.consecutive_failures += 1
    if state.breaker == HALF_OPEN or (
        state.breaker == CLOSED and state.consecutive_failures >= config.eject_after_failures
    ):
        eject(state, now, config, "outlier")
        return True
    return False


def eject(state: EndpointState, now: float, config: RoutingConfig, reason: str) -> None:
    state.ejection_streak += 1
    state.ejections += 1
    state.last_ejection = reason
    state.breaker = OPEN
    state.consecutive_failures = 0
    state.open_until = now + min(config.eject_base_seconds * state.ejection_streak,
                                 config.eject_max_seconds)


def probed(state: EndpointState, ok: bool, now: float, config: RoutingConfig, error: str = "") -> str:
    """Record a /health result; answers "down" or "up" on a transition, else ""."""
    state.probed_at = now
    if ok:
        state.probe_failures = 0
        state.probe_error = ""
        if not state.probe_ok:
            state.probe_ok = True
            state.warm_since = now
            return "up"
        return ""
    state.probe_failures += 1
    state.probe_error = error
    if state.probe_ok and state.probe_failures >= config.down_after_probes:
        state.probe_ok = False
        state.ejections += 1
        state.last_ejection = "probe"
        return "down"
    return ""


def mark_saturated(state: EndpointState, now: float, config: RoutingConfig) -> None:
    """The upstream refused for load (429): prefer others for a moment; not a fault."""
    state.saturated_until = now + config.saturated_seconds


def scraped(state: EndpointState, running: float, waiting: float, kv_cache: float, now: float) -> None:
    state.running = running
    state.waiting = waiting
    state.kv_cache = kv_cache
    state.scraped_at = now
    state.scrape_error = ""

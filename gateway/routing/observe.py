"""What operators see of the router: ``/admin/endpoints`` rows and Prometheus series.

Both read the router's state when asked (a Prometheus collector, not counters bumped per
request), so watching costs the hot path nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.redact import redact_url
from gateway.routing import health
from gateway.routing.registry import EndpointState
from gateway.routing.router import Router


def _age(now: float, at: float) -> float | None:
    return None if math.isinf(at) else round(now - at, 3)


def describe(router: Router) -> dict[str, Any]:
    """The body of ``GET /admin/endpoints``."""
    now = router.clock()
    config = router.config
    models: dict[str, list[str]] = {}
    for name, route in router.registry.routes.items():
        for state in route.states:
            models.setdefault(state.endpoint.url, []).append(name)
    rows = [_row(state, now, router, models.get(url, [])) for url, state in router.states.items()]
    rows += [{**_row(state, now, router, []), "state": "draining"}
             for state in router.registry.draining.values()]
    return {
        "data": rows,
        "router": {"failovers": router.failovers, "panics": router.panics,
                   "filters": list(config.filters), "scorers": dict(config.scorers),
                   "picker": config.picker},
    }


def _row(state: EndpointState, now: float, router: Router, models: list[str]) -> dict[str, Any]:
    ep = state.endpoint
    fresh = now - state.scraped_at <= router.config.metrics_stale_after
    return {
        "url": redact_url(ep.url),  # never its user:password@
        "cluster": ep.cluster,
        "region": ep.region,
        "weight": ep.weight,
        "models": models,
        "state": health.status(state, now, router.config),
        "in_flight": state.in_flight,
        "requests": state.requests,
        "failures": state.failures,
        "consecutive_failures": state.consecutive_failures,
        "breaker": state.breaker,
        "ejections": state.ejections,
        "last_ejection": state.last_ejection or None,
        "ejected_for_seconds": round(state.open_until - now, 3) if state.open_until > now else 0,
        "probe": {"ok": state.probe_ok, "consecutive_failures": state.probe_failures,
                  "age_seconds": _age(now, state.probed_at), "error": state.probe_error or None},
        "metrics": {"fresh": fresh, "age_seconds": _age(now, state.scraped_at),
                    "num_requests_running": state.running, "num_requests_waiting": state.waiting,
                    "kv_cache_usage_perc": state.kv_cache, "error": state.scrape_error or None},
    }


class RoutingCollector(Collector):
    """Per-endpoint and per-cluster series, computed at scrape time."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        router = self.router
        now = router.clock()
        labels = ["cluster", "endpoint"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "up": GaugeMetricFamily("tokengate_endpoint_up",
                                    "1 when the router may send requests to the endpoint.", labels=labels),
            "in_flight": GaugeMetricFamily("tokengate_upstream_in_flight",
                                           "Requests in flight per upstream endpoint.", labels=labels),
            "requests": CounterMetricFamily("tokengate_endpoint_requests",
                                            "Attempts sent to the endpoint (failovers included).",
                                            labels=labels),
            "failures": CounterMetricFamily("tokengate_endpoint_failures",
                                            "Attempts that failed for the endpoint's fault.", labels=labels),
            "ejections": CounterMetricFamily("tokengate_endpoint_ejections",
                                             "Times the endpoint was ejected (outlier) or probed down.",
                                             labels=labels),
            "waiting": GaugeMetricFamily("tokengate_endpoint_vllm_waiting",
                                         "Scraped vllm:num_requests_waiting (fresh scrapes only).",
                                         labels=labels),
            "running": GaugeMetricFamily("tokengate_endpoint_vllm_running",
                                         "Scraped vllm:num_requests_running (fresh scrapes only).",
                                         labels=labels),
            "kv": GaugeMetricFamily("tokengate_endpoint_vllm_kv_cache_usage",
                                    "Scraped vllm:kv_cache_usage_perc (fresh scrapes only).", labels=labels),
        }
        clusters: dict[str, list[int]] = {}
        draining = router.registry.draining  # removed by a reload, still finishing streams
        for state in [*router.states.values(), *draining.values()]:
            ep = state.endpoint
            values = [ep.cluster, redact_url(ep.url)]
            listed = draining.get(ep.url) is not state
            up = listed and health.available(state, now)
            totals = clusters.setdefault(ep.cluster, [0, 0, 0])
            totals[0] += listed
            totals[1] += up
            totals[2] += state.in_flight
            families["up"].add_metric(values, float(up))
            families["in_flight"].add_metric(values, state.in_flight)
            families["requests"].add_metric(values, state.requests)
            families["failures"].add_metric(values, state.failures)
            families["ejections"].add_metric(values, state.ejections)
            if now - state.scraped_at <= router.config.metrics_stale_after:
                families["waiting"].add_metric(values, state.waiting)
                families["running"].add_metric(values, state.running)
                families["kv"].add_metric(values, state.kv_cache)
        yield from families.values()
        yield from _cluster_families(clusters)
        yield CounterMetricFamily("tokengate_router_failovers", "Picks made to retry a request elsewhere.",
                                  value=router.failovers)
        yield CounterMetricFamily("tokengate_router_panics",
                                  "Picks made while no candidate endpoint was available.",
                                  value=router.panics)


def _cluster_families(clusters: dict[str, list[int]]) -> Iterator[Metric]:
    endpoints = GaugeMetricFamily("tokengate_cluster_endpoints", "Endpoints of the cluster.",
                                  labels=["cluster"])
    up = GaugeMetricFamily("tokengate_cluster_endpoints_up", "Endpoints of the cluster the router may use.",
                           labels=["cluster"])
    in_flight = GaugeMetricFamily("tokengate_cluster_in_flight", "Requests in flight to the cluster.",
                                  labels=["cluster"])
    for cluster, (count, available, flying) in clusters.items():
        endpoints.add_metric([cluster], count)
        up.add_metric([cluster], available)
        in_flight.add_metric([cluster], flying)
    yield from (endpoints, up, in_flight)

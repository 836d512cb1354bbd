"""Prometheus metrics of one gateway process (own registry: no module-level state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tokengate_requests",
            "Requests answered on /v1, by route, model and HTTP status.",
            ["route", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tokengate_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.overhead = Histogram(
            "tokengate_gateway_overhead_seconds",
            "Time a request spent in the gateway itself: its whole duration minus the time "
            "spent waiting on the upstream (connecting, then for each byte). Includes the "
            "quota round trips to Redis and writing to the client.",
            ["route"],
            buckets=OVERHEAD_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "tokengate_upstream_errors",
            "Upstream failures by endpoint and kind (connect, status, timeout, reset).",
            ["cluster", "endpoint", "kind"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "tokengate_tokens",
            "Tokens billed, by model and type (prompt, completion).",
            ["model", "type"],
            registry=self.registry,
        )
        self.uncollected = Counter(
            "tokengate_uncollected_credits",
            "Credits requests cost beyond what their account could pay at settlement (the "
            "reservation fell short and the balance ran out), by model. Normally 0.",
            ["model"],
            registry=self.registry,
        )
        self.early_refusals = Counter(
            "tokengate_refused_before_counting",
            "Requests with a big body (over 16 KiB) refused before their prompt was tokenized, "
            "by error code: a prompt that cannot fit the window or that its key's credits "
            "cannot pay for at least, a disabled key, a model the key may not use.",
            ["code"],
            registry=self.registry,
        )
        # labels() takes a lock and builds a key on every call; the request path records
        # through children cached by their (bounded) label values instead.
        self._answered: dict[tuple[str, str, int], tuple[Any, Any, Any]] = {}
        self._billed: dict[str, tuple[Any, Any]] = {}
        # Per-endpoint and per-cluster routing series (tokengate_upstream_in_flight,
        # tokengate_endpoint_*, tokengate_cluster_*) come from the router's collector,
        # gateway.routing.observe.RoutingCollector, registered through watch().

    def answered(self, route: str, model: str, status: int, seconds: float, overhead: float) -> None:
        """One /v1 request answered: its count, duration and gateway overhead. ``route`` is
        one of the known routes (or "unknown"), ``model`` a catalog name or ""."""
        children = self._answered.get((route, model, status))
        if children is None:
            children = (self.requests.labels(route, model, str(status)), self.latency.labels(route),
                        self.overhead.labels(route))
            self._answered[(route, model, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        children[2].observe(overhead)

    def billed(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        children = self._billed.get(model)
        if children is None:
            children = (self.tokens.labels(model, "prompt"), self.tokens.labels(model, "completion"))
            self._billed[model] = children
        if prompt_tokens:
            children[0].inc(prompt_tokens)
        if completion_tokens:
            children[1].inc(completion_tokens)

    def unpaid(self, model: str, credits: int) -> None:
        """Credits a settlement could not collect (rare: labels() per call is fine)."""
        if credits > 0:
            self.uncollected.labels(model).inc(credits)

    def refused_early(self, code: str | None) -> None:
        """A big request refused before counting (rare next to the requests: labels() is fine)."""
        self.early_refusals.labels(code or "").inc()

    def watch(self, collector: Collector) -> None:
        """Add a collector that reads its values when Prometheus scrapes."""
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)

"""The optional ``routing:`` section of models.yaml: health, load and affinity knobs.

Control plane only: validated once per (re)load with pydantic, then read as plain
attributes on the hot path. Every key is optional; the defaults suit vLLM servers
behind a gateway a few milliseconds away. Times are seconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FilterName = Literal["available", "slow_start", "not_saturated", "other_cluster", "preferred"]
ScorerName = Literal["inflight", "queue", "kv_cache", "affinity"]
PickerName = Literal["p2c", "best"]

DEFAULT_FILTERS: tuple[FilterName, ...] = (
    "available", "slow_start", "not_saturated", "other_cluster", "preferred"
)
DEFAULT_SCORERS: dict[ScorerName, float] = {
    "inflight": 1.0,
    "queue": 1.0,
    "kv_cache": 0.5,
    "affinity": 0.5,
}


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Active health checks: GET /health on every endpoint.
    probe_interval: float = Field(default=2.0, gt=0, le=300)
    probe_timeout: float = Field(default=1.0, gt=0, le=60)
    down_after_probes: int = Field(default=2, ge=1, le=100)

    # Load metrics: GET /metrics (vllm:num_requests_running/waiting, kv_cache_usage_perc).
    scrape_interval: float = Field(default=1.0, gt=0, le=300)
    scrape_timeout: float = Field(default=1.0, gt=0, le=60)
    metrics_stale_after: float = Field(default=5.0, gt=0, le=3600)

    # Passive outlier detection and the circuit breaker (Envoy's consecutive-5xx model:
    # ejected for base * n-th ejection in a row, capped; then one trial request).
    eject_after_failures: int = Field(default=3, ge=1, le=1000)
    eject_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    eject_max_seconds: float = Field(default=60.0, gt=0, le=86400)
    slow_start_seconds: float = Field(default=10.0, ge=0, le=3600)
    saturated_seconds: float = Field(default=1.0, ge=0, le=600)

    # Saturation: an endpoint past these (fresh metrics) is skipped while others are not.
    saturated_waiting: float = Field(default=8, ge=0)
    saturated_kv_cache: float = Field(default=0.95, gt=0, le=1)

    # Fair shares (gateway/flow.py): while every endpoint of a model is full (saturated, or at
    # its max_in_flight), requests wait in per-account queues, served by package weight, at
    # most queue_seconds (then 429 model_overloaded). Off: they go on to vLLM's own queue.
    fair_shares: bool = True
    queue_seconds: float = Field(default=10.0, ge=0, le=600)
    # Turns an account already sending to a full model may not take (the model's last free
    # ones): kept for an account with nothing there, which then starts at once. Each costs a
    # flood alone 1/max_in_flight of the model's capacity; 0: every turn goes in fair order.
    newcomer_slots: int = Field(default=0, ge=0, le=1000)

    # Scorer scales: the load at which a score falls to 1/2.
    inflight_scale: float = Field(default=16.0, gt=0)
    queue_scale: float = Field(default=2.0, gt=0)

    # Prefix affinity: characters of the prompt that make the affinity key (0 = off); a
    # prompt whose stable prefix is shorter than affinity_min_chars has no key (too short
    # for vLLM's prefix cache to matter); a target holding more than affinity_load_factor
    # times its share of the requests in flight (+1) is passed over.
    affinity_chars: int = Field(default=512, ge=0, le=1_000_000)
    affinity_min_chars: int = Field(default=256, ge=0, le=1_000_000)
    affinity_load_factor: float = Field(default=2.0, ge=1.0, le=100.0)

    filters: tuple[FilterName, ...] = DEFAULT_FILTERS
    scorers: dict[ScorerName, float] = Field(default_factory=lambda: dict(DEFAULT_SCORERS))
    picker: PickerName = "p2c"

    @model_validator(mode="after")
    def _consistent(self) -> RoutingConfig:
        if self.eject_max_seconds < self.eject_base_seconds:
            raise ValueError("eject_max_seconds must be >= eject_base_seconds")
        if any(weight < 0 for weight in self.scorers.values()):
            raise ValueError("scorer weights must be >= 0")
        if len(set(self.filters)) != len(self.filters):
            raise ValueError("a filter is listed twice")
        return self

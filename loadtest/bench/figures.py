"""Medians over rounds, the ratios between targets and the issue's targets as pass/fail."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass

from loadtest.loadgen import Distribution, LoadResult

from .run import Results
from .scenarios import NS_C1, NS_C32, ST_C1, ST_C32


def _pcts(d: Distribution | None) -> tuple[float | None, float | None, float | None]:
    return (None, None, None) if d is None else (d.p50, d.p90, d.p99)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass(frozen=True)
class Figures:
    """One target in one scenario: medians over rounds (ms, per second, us, MB)."""

    rounds: int
    ok: int
    errors: dict[str, int]
    rps: float
    rps_min: float
    rps_max: float
    latency: tuple[float | None, float | None, float | None]  # p50, p90, p99
    first_byte: tuple[float | None, float | None, float | None]
    first_token: tuple[float | None, float | None, float | None]
    cpu_us: float | None
    aux_cpu_us: float | None
    client_cpu_us: float | None
    rss_mb: float | None  # largest end-of-phase RSS of the server tree
    chunks: tuple[int | None, int | None]

    @classmethod
    def of(cls, runs: list[LoadResult]) -> Figures:
        errors: Counter[str] = Counter()
        for r in runs:
            errors.update(r.errors)
        rates = [r.requests_per_s for r in runs]
        chunk_lo = [r.chunks_min for r in runs if r.chunks_min is not None]
        chunk_hi = [r.chunks_max for r in runs if r.chunks_max is not None]
        return cls(
            rounds=len(runs),
            ok=sum(r.ok for r in runs),
            errors=dict(errors),
            rps=statistics.median(rates),
            rps_min=min(rates),
            rps_max=max(rates),
            latency=_med3([_pcts(r.latency_ms) for r in runs]),
            first_byte=_med3([_pcts(r.first_byte_ms) for r in runs]),
            first_token=_med3([_pcts(r.first_token_ms) for r in runs]),
            cpu_us=_median([r.server.cpu_us_per_request if r.server else None for r in runs]),
            aux_cpu_us=_median([r.aux.cpu_us_per_request if r.aux else None for r in runs]),
            client_cpu_us=_median([r.client_cpu_us_per_request for r in runs]),
            rss_mb=max((r.server.rss_mb for r in runs if r.server), default=None),
            chunks=(min(chunk_lo, default=None), max(chunk_hi, default=None)),
        )


def _med3(
    rows: list[tuple[float | None, float | None, float | None]],
) -> tuple[float | None, float | None, float | None]:
    return (_median([r[0] for r in rows]), _median([r[1] for r in rows]),
            _median([r[2] for r in rows]))


Table = dict[tuple[str, str], Figures]


def table(results: Results) -> Table:
    return {key: Figures.of(runs) for key, runs in results.phases.items() if runs}


@dataclass(frozen=True)
class Check:
    label: str
    value: float | None
    unit: str
    bound: float
    at_most: bool  # True: value <= bound passes; False: value >= bound passes

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        ok = self.value <= self.bound if self.at_most else self.value >= self.bound
        return "pass" if ok else "FAIL"

    @property
    def target_text(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.bound:g}{self.unit}"

    @property
    def value_text(self) -> str:
        if self.value is None:
            return "-"
        return f"{self.value:.2f}{self.unit}" if abs(self.value) < 10 else f"{self.value:.0f}{self.unit}"


def _get(t: Table, scenario: str, target: str) -> Figures | None:
    return t.get((scenario, target))


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def p50(t: Table, scenario: str, target: str) -> float | None:
    f = _get(t, scenario, target)
    return None if f is None else f.latency[0]


def first_byte_p50(t: Table, scenario: str, target: str) -> float | None:
    f = _get(t, scenario, target)
    return None if f is None else f.first_byte[0]


def rps(t: Table, scenario: str, target: str) -> float | None:
    f = _get(t, scenario, target)
    return None if f is None else f.rps


def cpu_us(t: Table, scenario: str, target: str) -> float | None:
    f = _get(t, scenario, target)
    return None if f is None else f.cpu_us


def added_latency(t: Table, target: str, base: str = "direct") -> float | None:
    """p50 of ``target`` minus p50 of ``base``, non-streamed at concurrency 1 (ms)."""
    return _diff(p50(t, NS_C1.key, target), p50(t, NS_C1.key, base))


def added_first_byte(t: Table, target: str, base: str = "direct") -> float | None:
    """First streamed byte p50 of ``target`` minus ``base``'s, at concurrency 1 (ms)."""
    return _diff(first_byte_p50(t, ST_C1.key, target), first_byte_p50(t, ST_C1.key, base))


def throughput_ratio(t: Table, scenario: str, target: str, other: str) -> float | None:
    return _ratio(rps(t, scenario, target), rps(t, scenario, other))


def rss(t: Table, target: str) -> float | None:
    values = [f.rss_mb for (_, n), f in t.items() if n == target and f.rss_mb is not None]
    return max(values, default=None)


def checks(t: Table) -> list[Check]:
    """The performance budget of shared/DESIGN.md for tokengate (one worker, metering on).

    Latency: 0.5 ms (non-streamed) and 0.9 ms (first streamed byte) on the machine of
    record; on a slower day, 2.5x what vllm-router adds in the same run, when that is more.
    """
    def slow_day(bound: float, router_added: float | None) -> float:
        return bound if router_added is None else max(bound, round(2.5 * router_added, 2))

    router_cpu = cpu_us(t, ST_C32.key, "vllm-router")
    return [
        Check("added latency p50, non-streamed, 1 client", added_latency(t, "tokengate"),
              " ms", slow_day(0.5, added_latency(t, "vllm-router")), True),
        Check("added time to first streamed byte p50, 1 client",
              added_first_byte(t, "tokengate"), " ms",
              slow_day(0.9, added_first_byte(t, "vllm-router")), True),
        Check("gateway CPU per non-streamed request (32 clients)", cpu_us(t, NS_C32.key, "tokengate"),
              " us", 200, True),
        Check("gateway CPU per 64-chunk stream (32 clients), 1.5x vllm-router's",
              cpu_us(t, ST_C32.key, "tokengate"), " us",
              450 if router_cpu is None else round(1.5 * router_cpu), True),
        Check("req/s at 32 clients vs LiteLLM",
              throughput_ratio(t, NS_C32.key, "tokengate", "litellm"), "x", 30, False),
        Check("streams/s at 32 clients vs LiteLLM",
              throughput_ratio(t, ST_C32.key, "tokengate", "litellm"), "x", 30, False),
        Check("req/s at 32 clients vs vllm-router",
              throughput_ratio(t, NS_C32.key, "tokengate", "vllm-router"), "x", 0.5, False),
        Check("streams/s at 32 clients vs vllm-router",
              throughput_ratio(t, ST_C32.key, "tokengate", "vllm-router"), "x", 0.8, False),
        Check("RSS of the worker (cl100k tables loaded)", rss(t, "tokengate"), " MB", 90, True),
    ]


def errors_of(t: Table, target: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for (_, name), f in t.items():
        if name == target:
            total.update(f.errors)
    return dict(total)

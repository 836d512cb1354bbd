"""Per-request records and the summary of one load phase."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .procstat import ProcSample


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Recorder:
    """What the requests of one phase saw (seconds; chunks = SSE data events)."""

    latency: list[float] = field(default_factory=list)
    first_byte: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # open loop: not sent because max_in_flight requests were outstanding


@dataclass(frozen=True)
class Distribution:
    p50: float | None
    p90: float | None
    p99: float | None
    mean: float | None

    @classmethod
    def of(cls, values: list[float], scale: float = 1.0) -> Distribution:
        def scaled(v: float | None) -> float | None:
            return None if v is None else v * scale

        mean = sum(values) / len(values) if values else None
        return cls(scaled(percentile(values, 50)), scaled(percentile(values, 90)),
                   scaled(percentile(values, 99)), scaled(mean))


@dataclass(frozen=True)
class ServerUsage:
    """The server tree's CPU over the phase and its memory at the end of it."""

    cpu_seconds: float
    cpu_us_per_request: float | None
    rss_mb: float
    hwm_mb: float
    processes: int

    @classmethod
    def between(cls, before: ProcSample, after: ProcSample, requests: int) -> ServerUsage:
        cpu = max(0.0, after.cpu_seconds - before.cpu_seconds)
        return cls(
            cpu_seconds=cpu,
            cpu_us_per_request=cpu / requests * 1e6 if requests else None,
            rss_mb=after.rss_bytes / 2**20,
            hwm_mb=after.hwm_bytes / 2**20,
            processes=after.processes,
        )


@dataclass(frozen=True)
class LoadResult:
    """One phase: throughput, latency (ms), streams' first byte and first token (ms)."""

    mode: str  # "concurrency" or "rate"
    stream: bool
    concurrency: int | None
    rate: float | None
    ok: int
    errors: dict[str, int]
    dropped: int
    seconds: float
    requests_per_s: float
    latency_ms: Distribution
    first_byte_ms: Distribution | None
    first_token_ms: Distribution | None
    chunks_min: int | None
    chunks_max: int | None
    client_cpu_us_per_request: float | None  # this load generator's own CPU (all threads)
    server: ServerUsage | None
    aux: ServerUsage | None  # e.g. the Redis behind the server

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lat = self.latency_ms
        parts = [
            f"{self.ok} ok",
            f"{self.error_count} errors" + (f" {dict(self.errors)}" if self.errors else ""),
            f"{self.requests_per_s:.0f}/s",
            f"latency p50/p90/p99 {_ms(lat.p50)}/{_ms(lat.p90)}/{_ms(lat.p99)} ms",
        ]
        if self.first_byte_ms is not None and self.first_token_ms is not None:
            parts.append(f"first byte p50 {_ms(self.first_byte_ms.p50)} ms")
            parts.append(
                f"first token p50/p90/p99 {_ms(self.first_token_ms.p50)}/"
                f"{_ms(self.first_token_ms.p90)}/{_ms(self.first_token_ms.p99)} ms"
            )
            parts.append(f"chunks {self.chunks_min}..{self.chunks_max}")
        if self.dropped:
            parts.append(f"{self.dropped} dropped")
        if self.server is not None:
            parts.append(f"server {_us(self.server.cpu_us_per_request)} us CPU/req, "
                         f"RSS {self.server.rss_mb:.0f} MB")
        return ", ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"

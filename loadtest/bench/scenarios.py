"""The four scenarios of PEERS.md and how long each phase runs (full or quick)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    stream: bool
    concurrency: int


NS_C1 = Scenario("ns-c1", "non-streamed, 1 client", False, 1)
NS_C32 = Scenario("ns-c32", "non-streamed, 32 clients", False, 32)
ST_C1 = Scenario("st-c1", "64-chunk streams, 1 client", True, 1)
ST_C32 = Scenario("st-c32", "64-chunk streams, 32 clients", True, 32)
SCENARIOS = (NS_C1, NS_C32, ST_C1, ST_C32)


@dataclass(frozen=True)
class Plan:
    """Rounds of (every scenario x every target); each phase is bounded by time and count."""

    name: str
    rounds: int
    seconds: float  # measured seconds per phase
    max_requests: int  # per phase
    warmup: int  # unrecorded requests before each phase
    warmup_seconds: float


FULL = Plan("full", rounds=3, seconds=8.0, max_requests=500_000, warmup=300, warmup_seconds=2.0)
QUICK = Plan("quick", rounds=1, seconds=0.5, max_requests=20_000, warmup=10, warmup_seconds=0.3)

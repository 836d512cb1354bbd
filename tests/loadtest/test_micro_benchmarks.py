"""The micro-benchmarks of loadtest/ run and report sane figures (short runs): the cost
of a routing decision (in-process), of admission + settlement against a real Redis, and of
the billing worker per usage event (a real Redis, a SQLite ledger)."""

from __future__ import annotations

import asyncio

import pytest

from loadtest import bench_quota, bench_routing
from tests.redis_servers import RedisServer


def test_routing_decision_cost_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_routing.main(["--picks", "300"]) == 0
    rows = [line.rsplit(None, 1) for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    assert len(rows) >= 4
    assert all(0 < float(micros) < 10_000 for _name, micros in rows)


def test_admission_and_settlement_cost_is_reported(redis_standalone: RedisServer) -> None:
    figures = asyncio.run(bench_quota.run(redis_standalone.url, requests=200, concurrency=8))
    assert figures["requests"] == 200 and figures["requests_per_s"] > 0
    assert 0 < figures["client_cpu_us_per_request"] < 100_000


def test_billing_worker_cost_is_reported(capsys: pytest.CaptureFixture[str]) -> None:
    """A short drain: the ledger is checked to hold every event before figures are printed."""
    from loadtest import bench_worker

    assert bench_worker.main(["--events", "300", "--accounts", "5", "--settle", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "events 300" in out
    micros = float(out.split(" us/event")[0].rsplit("= ", 1)[1])
    assert 0 < micros < 1_000_000

"""The benchmark's arithmetic, and a short run of the benchmark command itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.bench.cli import main
from loadtest.bench.fairness import main as fairness_main
from loadtest.bench.figures import Figures, Table, checks
from loadtest.bench.scaling import main as scaling_main
from loadtest.bench.soak import Point, verdict


def _figures(rps: float, p50: float, first_byte: float | None = None,
             cpu: float | None = None, rss: float | None = None) -> Figures:
    return Figures(rounds=1, ok=100, errors={}, rps=rps, rps_min=rps, rps_max=rps,
                   latency=(p50, p50, p50), first_byte=(first_byte, None, None),
                   first_token=(first_byte, None, None), cpu_us=cpu, aux_cpu_us=None, client_cpu_us=None,
                   rss_mb=rss, chunks=(None, None))


def test_checks_compare_tokengate_with_direct_and_peers() -> None:
    t: Table = {
        ("ns-c1", "direct"): _figures(3000, 0.30),
        ("ns-c1", "tokengate"): _figures(1500, 0.70, rss=60),
        ("st-c1", "direct"): _figures(1000, 0.60, first_byte=0.30),
        ("st-c1", "tokengate"): _figures(500, 1.40, first_byte=1.30),
        ("ns-c1", "vllm-router"): _figures(2000, 0.40),  # adds 0.1 ms: the 0.5 ms bound holds
        ("st-c1", "vllm-router"): _figures(800, 0.90, first_byte=0.80),  # adds 0.5: 2.5x = 1.25
        ("ns-c32", "tokengate"): _figures(4000, 8, cpu=150, rss=75),
        ("ns-c32", "litellm"): _figures(100, 300),
        ("ns-c32", "vllm-router"): _figures(9000, 4),
        ("st-c32", "tokengate"): _figures(1200, 30, cpu=500),
        ("st-c32", "litellm"): _figures(20, 1600),
        ("st-c32", "vllm-router"): _figures(1200, 30, cpu=300),
    }
    got = {c.label: (c.value, c.verdict) for c in checks(t)}
    assert got["added latency p50, non-streamed, 1 client"] == (pytest.approx(0.4), "pass")
    assert got["added time to first streamed byte p50, 1 client"] == (pytest.approx(1.0), "pass")
    assert got["gateway CPU per non-streamed request (32 clients)"] == (150, "pass")
    assert got["gateway CPU per 64-chunk stream (32 clients), 1.5x vllm-router's"] == (500, "FAIL")
    assert got["req/s at 32 clients vs LiteLLM"] == (40, "pass")
    assert got["streams/s at 32 clients vs LiteLLM"] == (60, "pass")
    assert got["req/s at 32 clients vs vllm-router"] == (pytest.approx(4000 / 9000), "FAIL")
    assert got["streams/s at 32 clients vs vllm-router"] == (1.0, "pass")
    assert got["RSS of the worker (cl100k tables loaded)"] == (75, "pass")
    slow = {**t, ("st-c1", "vllm-router"): _figures(800, 0.40, first_byte=0.35)}  # adds 0.05
    first_byte = {c.label: c.verdict for c in checks(slow)}["added time to first streamed byte p50, 1 client"]
    assert first_byte == "FAIL"  # 1.0 ms > 0.9 ms, vllm-router adding little that day
    assert all(c.verdict == "n/a" for c in checks({}))


def _series(values: list[float]) -> list[Point]:
    return [Point(10.0 * i, v, 10, 100, 0, 1.0) for i, v in enumerate(values)]


def test_soak_verdict() -> None:
    assert not verdict(_series([90, 70.0, 70.2, 69.9, 70.1, 70.0, 70.3, 70.1, 70.0, 70.2])).growing
    growing = verdict(_series([70.0 + 1.5 * i for i in range(10)]))
    assert growing.growing and growing.slope_mb_per_min == pytest.approx(9.0)
    assert not verdict(_series([70.0])).growing


def test_quick_benchmark_of_the_simulator(tmp_path: Path) -> None:
    code = main(["--quick", "--targets", "direct", "--no-plot", "--seconds", "0.2",
                 "--out", str(tmp_path), "--json", str(tmp_path / "raw.json")])
    assert code == 0
    report = (tmp_path / "benchmarks.md").read_text()
    assert "Quick mode" in report and "| direct |" in report
    assert (tmp_path / "raw.json").stat().st_size > 0
    assert main(["--quick", "--targets", "nginx"]) == 2


def test_quick_benchmark_of_tokengate(tmp_path: Path) -> None:
    """The metered path end to end: Redis, gateway, a funded key, 8 short phases."""
    code = main(["--quick", "--targets", "direct,tokengate", "--no-plot", "--seconds", "0.2",
                 "--out", str(tmp_path)])
    assert code == 0
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| tokengate |" in report and "not valid" not in report


def test_quick_scaling_benchmark(tmp_path: Path) -> None:
    """Admission throughput against data-plane processes: one and two, every request served."""
    out = tmp_path / "scaling.md"
    args = ["--workers", "1,2", "--seconds", "0.5", "--concurrency", "8", "--out", str(out)]
    assert scaling_main(args) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(row.endswith("| 0 |") for row in rows), rows


def test_quick_fairness_benchmark(tmp_path: Path) -> None:
    """The quiet tenant alone, beside a flood with fair shares on (with and without a slot kept
    for newcomers) and off: four rows, served."""
    out = tmp_path / "fairness.md"
    assert fairness_main(["--seconds", "1", "--flood", "8", "--out", str(out)]) == 0
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| quiet tenant")
            or line.startswith("| with the flood")]
    assert len(rows) == 4 and all(int(row[2]) > 0 for row in rows), rows

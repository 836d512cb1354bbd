"""The load generator against a real simulator: counts, bounds, streams, errors, /proc."""

from __future__ import annotations

import subprocess
import sys
import time

import orjson
import pytest

from loadtest.bench.targets import MODEL
from loadtest.loadgen import LoadSpec, NotLoopbackError, check_loopback, run_load, sample
from loadtest.loadgen.procstat import process_tree

from .conftest import Sim


def spec(sim: Sim, **kw: object) -> LoadSpec:
    base: dict[str, object] = {"base_url": sim.v1, "model": MODEL, "duration": 5.0,
                               "server_pids": (sim.child.pid,)}
    return LoadSpec(**{**base, **kw})  # type: ignore[arg-type]


async def test_closed_loop_non_streamed(sim: Sim) -> None:
    result = await run_load(spec(sim, concurrency=4, requests=60, warmup=5))
    assert result.ok == 60 and result.errors == {} and result.dropped == 0
    assert result.mode == "concurrency" and result.requests_per_s > 0
    lat = result.latency_ms
    assert lat.p50 is not None and lat.p90 is not None and lat.p99 is not None
    assert 0 < lat.p50 <= lat.p90 <= lat.p99
    assert result.first_byte_ms is None and result.chunks_min is None
    assert result.server is not None and result.server.rss_mb > 10
    assert result.server.processes >= 1 and result.server.cpu_seconds >= 0


async def test_streams_count_chunks_and_first_bytes(sim: Sim) -> None:
    result = await run_load(spec(sim, concurrency=2, requests=20, stream=True))
    assert result.ok == 20 and result.errors == {}
    # vLLM's role chunk, then one chunk per token: the default prompt yields all 64.
    assert result.chunks_min == result.chunks_max == 65
    assert result.first_byte_ms is not None and result.first_token_ms is not None
    assert result.first_byte_ms.p50 is not None and result.latency_ms.p50 is not None
    assert result.first_byte_ms.p50 <= result.latency_ms.p50


async def test_fixed_arrival_rate(sim: Sim) -> None:
    result = await run_load(spec(sim, rate=100.0, requests=1000, duration=0.5))
    assert result.mode == "rate" and result.errors == {} and result.dropped == 0
    assert 45 <= result.ok <= 50  # due at 0, 10, ..., 490 ms


async def test_bounded_by_count_and_by_time(sim: Sim) -> None:
    assert (await run_load(spec(sim, concurrency=3, requests=7))).ok == 7
    started = time.monotonic()
    result = await run_load(spec(sim, concurrency=1, requests=1_000_000, duration=0.3))
    assert 0 < result.ok < 1_000_000 and time.monotonic() - started < 3


async def test_open_loop_drops_beyond_max_in_flight(sim: Sim) -> None:
    sim.fault(mode="drip", drip_ms=100)  # 4 tokens 100 ms apart: outlasts the 0.2 s of sending
    result = await run_load(spec(sim, rate=200.0, requests=40, duration=1.0, max_in_flight=2,
                                 max_tokens=4, stream=True))
    assert result.ok == 2 and result.dropped == 38


async def test_errors_are_counted_by_kind(sim: Sim) -> None:
    unknown = await run_load(spec(sim, concurrency=1, requests=3, model="no-such-model"))
    assert unknown.ok == 0 and unknown.errors == {"http_404": 3}
    sim.fault(mode="error_before", status=503, count=2)
    failing = await run_load(spec(sim, concurrency=1, requests=4))
    assert failing.ok == 2 and failing.errors == {"http_503": 2}
    sim.fault(mode="reset_after", after_tokens=3, count=2)
    cut = await run_load(spec(sim, concurrency=1, requests=2, stream=True))
    assert cut.ok == 0 and cut.error_count == 2


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000/v1", "http://192.168.1.5/v1",
                                 "http://example.com/v1", "https://127.0.0.1:8000/v1",
                                 "http://0.0.0.0:8000/v1", "ftp://127.0.0.1/v1"])
def test_refuses_non_loopback_targets(url: str) -> None:
    with pytest.raises(NotLoopbackError):
        check_loopback(url)
    with pytest.raises(NotLoopbackError):
        LoadSpec(base_url=url, model="m", concurrency=1).validate()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1/", "http://127.9.9.9:1/v1",
                                 "http://[::1]:8000/v1", "http://localhost:8000/v1"])
def test_accepts_loopback_targets(url: str) -> None:
    assert check_loopback(url) == url.rstrip("/")


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"concurrency": 1, "rate": 5.0}, {},
                                 {"concurrency": 1, "requests": 0},
                                 {"concurrency": 1, "duration": 0.0},
                                 {"concurrency": 1, "duration": 1e9}, {"rate": -1.0}])
def test_refuses_unbounded_or_ambiguous_loads(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LoadSpec(base_url="http://127.0.0.1:1/v1", model="m", **bad).validate()  # type: ignore[arg-type]


def test_process_tree_counts_children() -> None:
    code = "import subprocess, time; subprocess.Popen(['sleep', '5']); time.sleep(5)"
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 5
        while len(process_tree([parent.pid])) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(process_tree([parent.pid])) == 2
        measured = sample([parent.pid])
        assert measured.processes == 2 and measured.rss_bytes > 0
    finally:
        parent.kill()
        parent.wait()
    assert process_tree([parent.pid]) == []


def test_command_line(sim: Sim) -> None:
    args = [sys.executable, "-m", "loadtest.loadgen", "--url", sim.v1, "--model", MODEL,
            "--concurrency", "2", "--requests", "10", "--stream", "--json",
            "--server-pid", str(sim.child.pid)]
    done = subprocess.run(args, capture_output=True, timeout=60, check=True)
    result = orjson.loads(done.stdout)
    assert result["ok"] == 10 and result["chunks_min"] == 65 and result["server"]["rss_mb"] > 0
    refused = subprocess.run([*args[:4], "http://10.1.2.3:80/v1", *args[5:]],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2 and "loopback" in refused.stderr

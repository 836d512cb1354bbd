"""Soak: RSS of one tokengate worker over N minutes at a steady arrival rate.

    python -m loadtest.bench.soak [--minutes 10] [--rate 200] [--stream-share 0.5]
                                  [--interval 10] [--out soak.md]

Starts the simulator, a private Redis (AOF off) and ``tokengate serve --workers 1`` with a
funded key, sends ``rate`` requests per second (open loop; a share of them streamed) for
``minutes``, samples the worker's RSS every ``interval`` seconds and prints the series and a
verdict: flat, or growing (after the first sample, the last fifth's median above the first
fifth's by more than max(2 MB, 2 %), with a positive slope). Exit status: 0 flat, 1 growing,
2 when requests failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtest.loadgen import LoadResult, LoadSpec, run_load, sample

from .procs import Child, sigterm_exits
from .stack import (
    funded_key,
    start_billing_worker,
    start_redis,
    start_simulator,
    start_tokengate,
)
from .targets import MAX_TOKENS, MODEL

MAX_MINUTES = 600.0


@dataclass(frozen=True)
class Point:
    seconds: float  # since the start of the load
    rss_mb: float
    redis_rss_mb: float
    ok: int
    errors: int
    p99_ms: float | None


@dataclass(frozen=True)
class Verdict:
    growing: bool
    start_mb: float
    end_mb: float
    slope_mb_per_min: float

    def text(self, minutes: float) -> str:
        word = "GROWING" if self.growing else "flat"
        return (f"RSS {word}: {self.start_mb:.1f} -> {self.end_mb:.1f} MB over {minutes:g} min "
                f"({self.end_mb - self.start_mb:+.1f} MB, slope {self.slope_mb_per_min:+.2f} MB/min)")


def verdict(points: list[Point]) -> Verdict:
    """Flat or growing, from the medians of the first and last fifth and a least-squares slope.

    The first sample (the worker warming its caches and pools) is left out when there are
    three or more.
    """
    if len(points) >= 3:
        points = points[1:]
    if len(points) < 2:
        rss = points[0].rss_mb if points else 0.0
        return Verdict(False, rss, rss, 0.0)
    fifth = max(1, len(points) // 5)
    start = statistics.median(p.rss_mb for p in points[:fifth])
    end = statistics.median(p.rss_mb for p in points[-fifth:])
    xs = [p.seconds / 60 for p in points]
    ys = [p.rss_mb for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    growing = end - start > max(2.0, 0.02 * start) and slope > 0
    return Verdict(growing, start, end, slope)


def _specs(base: str, key: str, rate: float, share: float, interval: float,
           pid: int) -> list[LoadSpec]:
    specs = []
    for stream, part in ((False, 1 - share), (True, share)):
        if part * rate <= 0:
            continue
        specs.append(LoadSpec(
            base_url=base, model=MODEL, api_key=key, stream=stream, max_tokens=MAX_TOKENS,
            rate=rate * part, requests=math.ceil(rate * part * interval) + 1, duration=interval,
            server_pids=(pid,),
        ))
    return specs


async def soak(minutes: float, rate: float, share: float, interval: float,
               report: list[Point]) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="tokengate-soak-"))
    children: list[Child] = []
    try:
        sim, sim_url = start_simulator(workdir)
        children.append(sim)
        redis, redis_url = start_redis(workdir)
        children.append(redis)
        gateway = start_tokengate(workdir, sim_url, redis_url)
        children += [gateway.control, gateway.child]
        key = await funded_key(gateway, redis_url)
        children.append(start_billing_worker(workdir, redis_url))
        pid = gateway.child.pid
        print(f"soak: tokengate pid {pid}, {rate:g} req/s ({share:.0%} streamed), "
              f"{minutes:g} min, a sample every {interval:g} s", flush=True)
        specs = _specs(gateway.base + "/v1", key, rate, share, interval, pid)
        connector = aiohttp.TCPConnector(limit=2048)
        started = time.monotonic()
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            while time.monotonic() - started < minutes * 60:
                results: list[LoadResult] = await asyncio.gather(
                    *(run_load(spec, session) for spec in specs))
                if not gateway.child.alive():
                    raise RuntimeError(f"tokengate exited:\n{gateway.child.log_tail()}")
                point = _point(time.monotonic() - started, pid, redis.pid, results)
                report.append(point)
                print(f"t={point.seconds:6.0f} s  RSS {point.rss_mb:6.1f} MB  "
                      f"(Redis {point.redis_rss_mb:.0f} MB; {point.ok} ok, {point.errors} errors, "
                      f"p99 {point.p99_ms or 0:.1f} ms)", flush=True)
    finally:
        for child in reversed(children):
            child.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _point(seconds: float, pid: int, redis_pid: int, results: list[LoadResult]) -> Point:
    p99s = [r.latency_ms.p99 for r in results if r.latency_ms.p99 is not None]
    return Point(
        seconds=seconds,
        rss_mb=sample([pid]).rss_bytes / 2**20,
        redis_rss_mb=sample([redis_pid]).rss_bytes / 2**20,
        ok=sum(r.ok for r in results),
        errors=sum(r.error_count + r.dropped for r in results),
        p99_ms=max(p99s) if p99s else None,
    )


def markdown(points: list[Point], result: Verdict, minutes: float, rate: float, share: float) -> str:
    rows = "\n".join(f"| {p.seconds:.0f} | {p.rss_mb:.1f} | {p.redis_rss_mb:.0f} | {p.ok} | "
                     f"{p.errors} | {p.p99_ms or 0:.1f} |" for p in points)
    return (f"# Soak: RSS of one tokengate worker\n\n{result.text(minutes)}\n\n"
            f"{rate:g} requests/s ({share:.0%} streamed, 64 tokens each), one worker, metering on, "
            "private Redis (AOF off).\n\n"
            "| seconds | worker RSS MB | Redis RSS MB | ok | errors | p99 ms |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + rows + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=200.0, help="requests per second")
    p.add_argument("--stream-share", type=float, default=0.5, help="share of streamed requests")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    p.add_argument("--out", type=Path, default=None, help="also write the series as Markdown")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES or not 0 <= args.stream_share <= 1 \
            or not 0 < args.interval <= 600 or not 0 < args.rate <= 10_000:
        print(f"soak: need 0 < minutes <= {MAX_MINUTES:g}, 0 <= stream-share <= 1, "
              "0 < interval <= 600, 0 < rate <= 10000", file=sys.stderr)
        return 2
    points: list[Point] = []
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with sigterm_exits(), asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(soak(args.minutes, args.rate, args.stream_share, args.interval, points))
    except (RuntimeError, KeyboardInterrupt) as exc:
        print(f"soak: stopped: {exc}", file=sys.stderr)
    result = verdict(points)
    print(result.text(args.minutes))
    if args.out is not None:
        args.out.write_text(markdown(points, result, args.minutes, args.rate, args.stream_share),
                            encoding="utf-8")
    if any(point.errors for point in points) or not points:
        return 2
    return 1 if result.growing else 0


if __name__ == "__main__":
    raise SystemExit(main())

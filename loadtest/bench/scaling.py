"""Admission throughput against the number of data-plane processes, and the Redis cost per
request that bounds it past this machine.

    python -m loadtest.bench.scaling [--workers 1,2,4] [--seconds 8] [--concurrency 64]
                                     [--out docs/scaling-bench.md]

For each worker count: the simulator (ttft 0, itl 0), a private Redis (AOF off) and
``tokengate serve --workers N`` with a funded key and the billing worker running; a
non-streamed load at a fixed concurrency. Reported per run: requests per second, the gateway's
CPU per request (its process tree) and Redis's CPU per request (admission, settlement, the
usage event and the billing worker's reads, all on the one master an account's keys live
on). On a machine with fewer cores than processes, throughput stops growing where the cores
run out; the Redis figure is what docs/scaling.md extrapolates from.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loadtest.loadgen import LoadSpec, run_load

from .procs import Child, sigterm_exits
from .stack import funded_key, start_billing_worker, start_redis, start_simulator, start_tokengate
from .targets import MAX_TOKENS, MODEL


@dataclass(frozen=True)
class Run:
    workers: int
    requests_per_s: float
    gateway_cpu_us: float | None
    redis_cpu_us: float | None
    errors: int


async def measure(workers: int, seconds: float, concurrency: int, workdir: Path) -> Run:
    """One worker count, everything started afresh."""
    children: list[Child] = []
    try:
        sim, sim_url = start_simulator(workdir)
        redis, redis_url = start_redis(workdir)
        children += [sim, redis]
        gateway = start_tokengate(workdir, sim_url, redis_url, workers=workers)
        children += [gateway.child, gateway.control]
        key = await funded_key(gateway, redis_url)
        children.append(start_billing_worker(workdir, redis_url))
        spec = LoadSpec(base_url=gateway.base + "/v1", model=MODEL, api_key=key, stream=False,
                        max_tokens=MAX_TOKENS, concurrency=concurrency, requests=10**7,
                        duration=seconds, warmup=200, warmup_duration=2.0,
                        server_pids=(gateway.child.pid,), aux_pids=(redis.pid,))
        result = await run_load(spec)
    finally:
        for child in reversed(children):
            child.stop()
    return Run(workers, result.requests_per_s,
               result.server.cpu_us_per_request if result.server else None,
               result.aux.cpu_us_per_request if result.aux else None,
               result.error_count)


def table(runs: list[Run]) -> str:
    base = runs[0].requests_per_s or 1.0
    lines = ["| data-plane processes | req/s | vs 1 process | gateway CPU us/request | "
             "Redis CPU us/request | errors |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {r.workers} | {r.requests_per_s:.0f} | {r.requests_per_s / base:.2f}x | "
                     f"{_f(r.gateway_cpu_us)} | {_f(r.redis_cpu_us)} | {r.errors} |")
    return "\n".join(lines)


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


async def main_async(args: argparse.Namespace) -> int:
    runs = []
    for workers in [int(w) for w in args.workers.split(",")]:
        with tempfile.TemporaryDirectory(prefix=f"tg-scaling-{workers}-") as tmp:
            run = await measure(workers, args.seconds, args.concurrency, Path(tmp))
        print(f"{workers} process(es): {run.requests_per_s:.0f} req/s, gateway {_f(run.gateway_cpu_us)} "
              f"us/request, Redis {_f(run.redis_cpu_us)} us/request, {run.errors} errors", flush=True)
        runs.append(run)
    report = (f"{os.cpu_count()} cores; concurrency {args.concurrency}; {args.seconds:.0f} s per run; "
              f"non-streamed, {MAX_TOKENS} tokens each\n\n{table(runs)}\n")
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0 if all(r.errors == 0 for r in runs) else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4", help="data-plane process counts to measure")
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of load per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    with sigterm_exits():
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

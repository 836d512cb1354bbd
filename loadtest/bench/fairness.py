"""Fair shares under overload: a quiet tenant's latency and success alone, next to a tenant
flooding the same model, with fair shares on and off.

    python -m loadtest.bench.fairness [--seconds 20] [--flood 32] [--out fairness.md]

One simulated vLLM endpoint with ``--capacity`` slots (its max_num_seqs) and a decode time per
token, so that it saturates as a real one does; tokengate in front of it with
``max_in_flight`` equal to those slots. The quiet tenant sends one request at a time; the
flooding one keeps ``--flood`` requests in flight. Four runs, everything started afresh:

* alone: the quiet tenant by itself (the reference);
* fair shares on: with the flood; excess requests wait in the gateway's per-account queues;
* the same with ``routing.newcomer_slots: 1``: the flood may hold all slots but one, kept
  for an account with nothing running, so the quiet request starts at once;
* fair shares off (``routing.fair_shares: false``): with the flood; excess requests pile
  into the endpoint's own first-come queue, and the quiet one waits behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from launcher.embedded import free_port

from .procs import Child, sigterm_exits, spawn, wait_ready
from .stack import child_env, funded_key, start_billing_worker, start_redis, start_tokengate, write_catalog

MODEL = "fair-model"
SLOTS = 4  # the endpoint's max_num_seqs
ITL_MS = 10.0  # decode time per token
QUIET_TOKENS = 16  # a short question: 0.16 s of decode when it has a slot
FLOOD_TOKENS = 64  # a long answer: 0.64 s


@dataclass(frozen=True)
class Quiet:
    setting: str
    sent: int
    ok: int
    p50_ms: float
    p90_ms: float
    flood_ok: int
    flood_429: int


def _catalog(path: Path, sim_url: str, setting: str) -> Path:
    routing = (f"routing:\n  fair_shares: {'false' if setting == 'off' else 'true'}\n  queue_seconds: 10\n"
               f"  newcomer_slots: {1 if setting == 'kept' else 0}\n")
    return write_catalog(path, sim_url, model=MODEL, max_in_flight=SLOTS, routing=routing)


def _simulator(workdir: Path) -> tuple[Child, str]:
    port = free_port()
    args = [sys.executable, "-m", "loadtest.vllm_sim", "--port", str(port), "--model", MODEL,
            "--ttft-ms", "0", "--itl-ms", str(ITL_MS), "--capacity", str(SLOTS)]
    child = spawn("simulator", args, workdir / "simulator.log", env=child_env())
    url = f"http://127.0.0.1:{port}"
    wait_ready(child, url + "/health", 60)
    return child, url


async def _ask(session: aiohttp.ClientSession, url: str, key: str, tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    body = {"model": MODEL, "max_tokens": tokens, "ignore_eos": True,
            "messages": [{"role": "user", "content": "Tell me something."}]}
    async with session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as answer:
        await answer.read()
        return answer.status, time.perf_counter() - started


async def run(setting: str, seconds: float, flood: int, workdir: Path) -> Quiet:
    """One run: ``setting`` is alone, on, kept (on, one slot kept for newcomers) or off."""
    children: list[Child] = []
    try:
        sim, sim_url = _simulator(workdir)
        redis, redis_url = start_redis(workdir)
        children += [sim, redis]
        config = _catalog(workdir / "models.yaml", sim_url, setting)
        gateway = start_tokengate(workdir, sim_url, redis_url, config=config)
        children += [gateway.child, gateway.control]
        quiet_key, flood_key = await funded_key(gateway, redis_url), await funded_key(gateway, redis_url)
        children.append(start_billing_worker(workdir, redis_url))
        url = gateway.base + "/v1/chat/completions"
        stop = asyncio.Event()
        flood_status: list[int] = []
        latencies: list[float] = []
        statuses: list[int] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def flooder() -> None:
                while not stop.is_set():
                    status, _ = await _ask(session, url, flood_key, FLOOD_TOKENS)
                    flood_status.append(status)
                    if status != 200:
                        await asyncio.sleep(0.05)

            flooders = [asyncio.create_task(flooder()) for _ in range(flood if setting != "alone" else 0)]
            await asyncio.sleep(2.0 if flooders else 0.0)  # the flood fills every queue first
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                status, latency = await _ask(session, url, quiet_key, QUIET_TOKENS)
                statuses.append(status)
                if status == 200:
                    latencies.append(latency)
            stop.set()
            await asyncio.gather(*flooders)
    finally:
        for child in reversed(children):
            child.stop()
    cuts = statistics.quantiles(latencies, n=10) if len(latencies) >= 2 else [float("nan")] * 9
    return Quiet(setting, len(statuses), statuses.count(200), statistics.median(latencies) * 1000,
                 cuts[8] * 1000, flood_status.count(200), flood_status.count(429))


def table(runs: list[Quiet]) -> str:
    names = {"alone": "quiet tenant alone", "on": "with the flood, fair shares on",
             "kept": "with the flood, fair shares on, newcomer_slots: 1",
             "off": "with the flood, fair shares off"}
    lines = ["| run | quiet: requests | quiet: ok | quiet: p50 ms | quiet: p90 ms | flood: ok | flood: 429 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        lines.append(f"| {names[r.setting]} | {r.sent} | {r.ok} | {r.p50_ms:.0f} | {r.p90_ms:.0f} | "
                     f"{r.flood_ok} | {r.flood_429} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    runs = []
    for setting in ("alone", "on", "kept", "off"):
        with tempfile.TemporaryDirectory(prefix=f"tg-fair-{setting}-") as tmp:
            runs.append(await run(setting, args.seconds, args.flood, Path(tmp)))
        print(f"{setting}: {runs[-1]}", flush=True)
    report = (f"one endpoint of {SLOTS} slots, {ITL_MS:g} ms a token; max_in_flight {SLOTS}; quiet "
              f"tenant: one request of {QUIET_TOKENS} tokens at a time; flood: {args.flood} requests "
              f"of {FLOOD_TOKENS} tokens in flight; {args.seconds:g} s each\n\n{table(runs)}\n")
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench.fairness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of quiet requests per run")
    parser.add_argument("--flood", type=int, default=32, help="flood requests kept in flight")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    with sigterm_exits():
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())

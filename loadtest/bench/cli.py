"""``python -m loadtest.bench [--quick]``: tokengate against direct, vllm-router and LiteLLM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson

from .figures import Figures, Table, first_byte_p50, p50, rps, table
from .peers import PeerInstall, install, log, start_litellm, start_vllm_router
from .procs import Child, sigterm_exits
from .report import Context, console, markdown
from .run import Results, probe, run_rounds
from .scenarios import FULL, QUICK, SCENARIOS, Plan
from .stack import REPO, direct_target, start_redis, start_simulator, tokengate_target
from .targets import Target

ALL_TARGETS = ("direct", "tokengate", "vllm-router", "litellm")
PLOT_SCRIPT = Path(__file__).with_name("plot.py")
BUSY_LOAD = 1.0  # 1-minute load average above which the report warns of other work


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round of 0.5 s phases")
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--seconds", type=float, help="override the seconds of each phase")
    p.add_argument("--targets", default=",".join(ALL_TARGETS),
                   help=f"comma-separated subset of {','.join(ALL_TARGETS)}")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for benchmarks.md and benchmarks.png (default: docs/, or a "
                   "temporary folder with --quick)")
    p.add_argument("--json", type=Path, default=None, help="also write every phase's result here")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (and matplotlib's install)")
    return p


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def plot_data(t: Table, names: list[str], title: str) -> dict[str, object]:
    """Six panels, each with tokengate's target from the issue as a line where one applies."""
    def values(scenario: str, pick: Callable[[Figures], float | None]) -> dict[str, float | None]:
        return {n: pick(f) for n in names if (f := t.get((scenario, n))) is not None}

    def plus(a: float | None, b: float) -> float | None:
        return None if a is None else a + b

    def best(*bounds: float | None) -> float | None:
        present = [b for b in bounds if b is not None]
        return max(present) if present else None

    def times(a: float | None, k: float) -> float | None:
        return None if a is None else a * k

    ns1, ns32, st1, st32 = (s.key for s in SCENARIOS)
    goal = "tokengate target"
    return {
        "title": title,
        "targets": names,
        "panels": [
            {"title": "non-streamed p50, 1 client", "unit": "ms",
             "values": values(ns1, lambda f: f.latency[0]), "goal_label": goal + " (direct + 0.5)",
             "goal": plus(p50(t, ns1, "direct"), 0.5)},
            {"title": "stream first byte p50, 1 client", "unit": "ms",
             "values": values(st1, lambda f: f.first_byte[0]), "goal_label": goal + " (direct + 0.9)",
             "goal": plus(first_byte_p50(t, st1, "direct"), 0.9)},
            {"title": "CPU per non-streamed request, 32 clients", "unit": "us",
             "values": values(ns32, lambda f: f.cpu_us), "goal": 200, "goal_label": goal},
            {"title": "non-streamed req/s, 32 clients", "unit": "req/s",
             "values": values(ns32, lambda f: f.rps), "goal_label": goal,
             "goal": best(times(rps(t, ns32, "litellm"), 30), times(rps(t, ns32, "vllm-router"), 0.5))},
            {"title": "64-chunk streams/s, 32 clients", "unit": "streams/s",
             "values": values(st32, lambda f: f.rps), "goal_label": goal,
             "goal": best(times(rps(t, st32, "litellm"), 30), times(rps(t, st32, "vllm-router"), 0.8))},
            {"title": "CPU per stream, 32 clients", "unit": "us",
             "values": values(st32, lambda f: f.cpu_us), "goal": 450, "goal_label": goal},
        ],
    }


def draw(venv: Path, data: dict[str, object], workdir: Path, png: Path) -> str:
    """'' when the PNG was drawn, else why not."""
    source = workdir / "plot.json"
    source.write_bytes(orjson.dumps(data))
    done = subprocess.run([str(venv / "bin" / "python"), str(PLOT_SCRIPT), str(source), str(png)],
                          capture_output=True, text=True, timeout=120, check=False)
    return "" if done.returncode == 0 else done.stderr.strip()[-500:]


async def _targets(wanted: list[str], workdir: Path, installs: dict[str, PeerInstall],
                   children: list[Child], notes: list[str]) -> list[Target]:
    sim, sim_url = start_simulator(workdir)
    children.append(sim)
    targets: list[Target] = []
    if "direct" in wanted:
        targets.append(direct_target(sim, sim_url))
    if "tokengate" in wanted:
        redis, redis_url = start_redis(workdir)
        children.append(redis)
        gateway = await tokengate_target(workdir, sim_url, redis, redis_url)
        children.extend([gateway.server, *gateway.aux[1:]])  # the billing worker, the control plane
        targets.append(gateway)
    starters = {"vllm-router": start_vllm_router, "litellm": start_litellm}
    for name, start in starters.items():
        peer = installs.get(name)
        if name not in wanted or peer is None:
            continue
        if peer.venv is None:
            notes.append(f"{name} skipped: {peer.error}")
            continue
        log(f"bench: starting {name}")
        try:
            target = start(peer, workdir, sim_url)
        except RuntimeError as exc:
            notes.append(f"{name} skipped: it did not start: {str(exc).splitlines()[0]}")
            continue
        children.append(target.server)
        targets.append(target)
    return targets


async def run(args: argparse.Namespace, plan: Plan, out: Path) -> int:
    wanted = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = set(wanted) - set(ALL_TARGETS)
    if unknown or not wanted:
        log(f"bench: unknown targets {sorted(unknown)}; choose from {', '.join(ALL_TARGETS)}")
        return 2
    notes: list[str] = []
    installs: dict[str, PeerInstall] = {}
    for name in ("vllm-router", "litellm"):
        if name in wanted:
            log(f"bench: peer {name}: checking its virtualenv")
            installs[name] = install(name)
            log(f"bench: peer {name}: {installs[name].status()}")
    plot_venv = None if args.no_plot else install("plot")
    if plot_venv is not None and plot_venv.venv is None:
        notes.append(f"no plot: matplotlib did not install: {plot_venv.error}")
    workdir = Path(tempfile.mkdtemp(prefix="tokengate-bench-"))
    children: list[Child] = []
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    try:
        targets = await _targets(wanted, workdir, installs, children, notes)
        probes = {t.name: await probe(t) for t in targets}
        for name, issue in probes.items():
            if issue:
                log(f"bench: probe of {name}: {issue}")
        before = loadavg()
        log(f"bench: {plan.name} mode, {len(targets)} targets, load average {before}")
        with contextlib.suppress(ValueError):
            if float(before.split()[0]) > BUSY_LOAD:
                notes.append(f"the machine was busy (load average {before} at the start): "
                             "expect noisy figures")
                log(f"bench: warning: {notes[-1]}")
        results: Results = await run_rounds(targets, plan, log)
        after = loadavg()
    finally:
        for child in reversed(children):
            child.stop()
    t = table(results)
    ctx = Context(started, machine(), before, after, f"Python {platform.python_version()}",
                  plan, targets, list(installs.values()), probes, notes + results.notes)
    print(console(t, ctx), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    png_name = None
    if plot_venv is not None and plot_venv.venv is not None:
        names = [target.name for target in targets]
        title = f"tokengate benchmark, {plan.name} mode, {started}"
        problem = draw(plot_venv.venv, plot_data(t, names, title), workdir, out / "benchmarks.png")
        if problem:
            log(f"bench: the plot failed: {problem}")
        else:
            png_name = "benchmarks.png"
    (out / "benchmarks.md").write_text(markdown(t, ctx, png_name), encoding="utf-8")
    if args.json is not None:
        raw = {f"{s}|{n}": [r.to_dict() for r in runs] for (s, n), runs in results.phases.items()}
        args.json.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    log(f"bench: wrote {out / 'benchmarks.md'}" + (f" and {png_name}" if png_name else ""))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if results.phases else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds is not None:
        plan = replace(plan, rounds=max(1, args.rounds))
    if args.seconds is not None:
        plan = replace(plan, seconds=args.seconds)
    out = args.out
    if out is None:
        out = Path(tempfile.gettempdir()) / "tokengate-bench-quick" if args.quick else REPO / "docs"
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    try:
        with sigterm_exits(), asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(run(args, plan, out))
    except RuntimeError as exc:
        log(f"bench: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

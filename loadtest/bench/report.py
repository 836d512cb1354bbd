"""The benchmark's report: the console summary and docs/benchmarks.md (plus the plot's data)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .figures import (
    Table,
    added_first_byte,
    added_latency,
    checks,
    cpu_us,
    errors_of,
    first_byte_p50,
    p50,
    rps,
    rss,
    throughput_ratio,
)
from .peers import PeerInstall
from .scenarios import NS_C1, NS_C32, SCENARIOS, ST_C1, ST_C32, Plan
from .stack import REPO
from .targets import Target

PEER_NAMES = ("vllm-router", "litellm")


@dataclass(frozen=True)
class Context:
    """What the run was: when, where, how long, with which targets and peers."""

    started: str  # ISO 8601 UTC
    machine: str  # CPU model and cores
    load_before: str
    load_after: str
    python: str
    plan: Plan
    targets: Sequence[Target]
    installs: Sequence[PeerInstall]
    probes: dict[str, str]  # target -> '' or what was off
    notes: Sequence[str]


def scrub(text: str) -> str:
    """``text`` without this machine's paths (home, temporary folder, this clone)."""
    for path, name in ((str(REPO), "."), (tempfile.gettempdir(), "$TMPDIR"),
                       (str(Path.home()), "~")):
        if len(path) > 1:
            text = text.replace(path, name)
    return text


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.0f}x"


def target_rows(t: Table, names: Sequence[str]) -> list[list[str]]:
    return [
        [
            name,
            _f(p50(t, NS_C1.key, name)),
            _f(rps(t, NS_C32.key, name), 0),
            _f(first_byte_p50(t, ST_C1.key, name)),
            _f(p50(t, ST_C1.key, name)),
            _f(rps(t, ST_C32.key, name), 0),
            _f(cpu_us(t, NS_C32.key, name), 0),
            _f(cpu_us(t, ST_C32.key, name), 0),
            _f(rss(t, name), 0),
        ]
        for name in names
    ]


TARGET_HEADER = ["target", "non-stream p50 ms (1 client)", "req/s (32 clients)",
                 "stream first byte p50 ms (1 client)", "stream p50 ms (1 client)",
                 "streams/s (32 clients)", "CPU us/request (32)", "CPU us/stream (32)", "RSS MB"]


def ratio_rows(t: Table, names: Sequence[str]) -> list[list[str]]:
    """tokengate against each other target: throughput ratios and added latency."""
    rows: list[list[str]] = []
    if "tokengate" not in names:
        return rows
    for other in names:
        if other == "tokengate":
            continue
        lat = added_latency(t, "tokengate", other)
        fb = added_first_byte(t, "tokengate", other)
        rows.append([
            f"tokengate vs {other}",
            _x(throughput_ratio(t, NS_C32.key, "tokengate", other)),
            _x(throughput_ratio(t, ST_C32.key, "tokengate", other)),
            "-" if lat is None else f"{lat:+.2f} ms",
            "-" if fb is None else f"{fb:+.2f} ms",
        ])
    return rows


RATIO_HEADER = ["", "req/s ratio (32 clients)", "streams/s ratio (32 clients)",
                "non-stream p50 difference (1 client)", "first byte p50 difference (1 client)"]


def percentile_rows(t: Table, names: Sequence[str]) -> list[list[str]]:
    rows = []
    for scenario in SCENARIOS:
        for name in names:
            f = t.get((scenario.key, name))
            if f is None:
                continue
            lat = "/".join(_f(v) for v in f.latency)
            fb = "/".join(_f(v) for v in f.first_byte) if scenario.stream else ""
            ft = "/".join(_f(v) for v in f.first_token) if scenario.stream else ""
            chunks = f"{f.chunks[0]}..{f.chunks[1]}" if scenario.stream else ""
            errors = ", ".join(f"{k} {v}" for k, v in f.errors.items()) or "0"
            rows.append([scenario.title, name, f"{f.rps:.0f} ({f.rps_min:.0f}-{f.rps_max:.0f})",
                         lat, fb, ft, chunks, str(f.ok), errors, _f(f.aux_cpu_us, 0),
                         _f(f.client_cpu_us, 0)])
    return rows


PERCENTILE_HEADER = ["scenario", "target", "per s: median (min-max of rounds)",
                     "latency p50/p90/p99 ms", "first byte p50/p90/p99 ms",
                     "first token p50/p90/p99 ms", "chunks", "ok", "errors",
                     "Redis + billing worker CPU us/request", "client CPU us/request"]


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def check_rows(t: Table) -> list[list[str]]:
    return [[c.label, c.value_text, c.target_text, c.verdict] for c in checks(t)]


CHECK_HEADER = ["target (DESIGN.md budget)", "measured", "bound", "verdict"]


def console(t: Table, ctx: Context) -> str:
    names = [target.name for target in ctx.targets]
    parts = [
        f"tokengate benchmark ({ctx.plan.name} mode: {ctx.plan.rounds} round(s) of "
        f"{ctx.plan.seconds:g} s phases), {ctx.machine}, load {ctx.load_before} -> {ctx.load_after}",
        "", text_table(TARGET_HEADER, target_rows(t, names)),
        "", text_table(RATIO_HEADER, ratio_rows(t, names)),
        "", text_table(CHECK_HEADER, check_rows(t)),
    ]
    errs = errors_of(t, "tokengate")
    if errs:
        parts += ["", f"tokengate answered errors: {errs}: the figures above are not valid"]
    parts += [f"note: {note}" for note in ctx.notes]
    return "\n".join(parts)


QUICK_BANNER = """> **Quick mode (a smoke run).** One round of {seconds:g}-second phases, on a machine that
> was busy with other work. These figures show that the benchmark runs end to end, not how
> fast anything is: rerun `python -m loadtest.bench` (full mode) on a quiet machine.
"""


def markdown(t: Table, ctx: Context, plot_name: str | None) -> str:
    names = [target.name for target in ctx.targets]
    plan = ctx.plan
    banner = QUICK_BANNER.format(seconds=plan.seconds) if plan.name == "quick" else ""
    added = added_latency(t, "tokengate")
    added_fb = added_first_byte(t, "tokengate")
    targets_md = "\n".join(
        f"- **{tg.name}** {tg.version}: {tg.setup}" for tg in ctx.targets
    )
    installs = "\n".join(f"- {p.name}: {scrub(p.status())}" for p in ctx.installs) or "- (none)"
    probes = "\n".join(f"- {name}: {scrub(issue)}" for name, issue in ctx.probes.items() if issue)
    errs = errors_of(t, "tokengate")
    sections = [
        "# Benchmarks",
        "",
        "Generated by `python -m loadtest.bench` (see [How to run](#how-to-run)); do not edit "
        "by hand.",
        "",
        banner,
        f"Run of {ctx.started} on {ctx.machine}, {ctx.python}; load average "
        f"{ctx.load_before} before, {ctx.load_after} after. {plan.name.capitalize()} mode: "
        f"{plan.rounds} round(s); each round runs every scenario against every target in "
        f"rotating order, one phase each ({plan.seconds:g} s or {plan.max_requests:,} requests, "
        f"after {plan.warmup} unrecorded warm-up requests). Figures are medians over rounds.",
        "",
        "## Summary",
        "",
        f"tokengate (one worker, metering on) adds **{_f(added)} ms** at p50 to a non-streamed "
        f"request and **{_f(added_fb)} ms** to the first byte of a stream, at one client.",
        "",
        md_table(CHECK_HEADER, check_rows(t)),
        "",
    ]
    if errs:
        sections += [f"**tokengate answered errors ({errs}): its figures are not valid.**", ""]
    if plot_name:
        sections += [f"![benchmark plot]({plot_name})", ""]
    sections += [
        "## Results",
        "",
        md_table(TARGET_HEADER, target_rows(t, names)),
        "",
        "CPU and RSS are those of the target's own process tree (for `direct`, the "
        "simulator's); CPU per request is measured over the 32-client phases. RSS is the "
        "largest seen at the end of a phase.",
        "",
        "### Ratios",
        "",
        md_table(RATIO_HEADER, ratio_rows(t, names)),
        "",
        "### Percentiles",
        "",
        md_table(PERCENTILE_HEADER, percentile_rows(t, names)),
        "",
        "## Setup",
        "",
        "Everything on loopback, on one machine: the vLLM simulator (`loadtest/vllm_sim`, "
        "ttft 0, itl 0) as the one upstream; each target in front of it; one aiohttp load "
        "client (`loadtest/loadgen`, one session, uvloop) at a fixed concurrency. Every "
        "request is a chat completion with `max_tokens` 64 and a prompt the simulator "
        "answers with exactly 64 tokens, so a stream is vLLM's role chunk plus 64 token "
        "chunks.",
        "",
        targets_md,
        "",
        "tokengate's Redis is a private `redis-server` started for the benchmark with AOF "
        "and snapshots **off** (production runs AOF with `appendfsync always`; see "
        "docs/operations.md). Its CPU and the billing worker's (which drains the usage "
        "events into the SQLite ledger meanwhile, on the same cores) are reported apart, "
        "together (`Redis + billing worker CPU us/request`); `python -m loadtest.bench_worker` "
        "measures the worker alone.",
        "",
        "Peers (each in its own cached virtualenv, `loadtest/peers/install`):",
        "",
        installs,
        "",
    ]
    if probes:
        sections += ["Probe findings (one request of each kind before the rounds):", "", probes, ""]
    if ctx.notes:
        sections += ["Notes:", "", *[f"- {scrub(n)}" for n in ctx.notes], ""]
    sections += [HOW_TO_RUN]
    return "\n".join(sections)


HOW_TO_RUN = """## How to run

```bash
venv=$(scripts/venv)                                  # the gateway's virtualenv
"$venv/bin/python" -m loadtest.bench                  # full: 3 rounds of 8 s phases, ~10 min
"$venv/bin/python" -m loadtest.bench --quick          # smoke: 1 round of 0.5 s phases
"$venv/bin/python" -m loadtest.bench.soak --minutes 10   # RSS of one worker at steady load
```

The full run writes this file and `benchmarks.png` beside it; `--quick` writes to a
temporary folder unless given `--out`. `--targets direct,tokengate` leaves the peers out. The
first run installs the peers (`vllm-router`, `litellm[proxy]`) and matplotlib into their own
virtualenvs under `${XDG_CACHE_HOME:-~/.cache}/tokengate/`; a peer whose install fails is
skipped with the reason. Run it on a quiet machine: only ratios within one run mean anything.

What the figures mean:

- **added latency**: tokengate's p50 minus the simulator's own p50, one client, non-streamed;
  the time the gateway spends on a request (auth, admission script, routing, relay,
  settlement script, usage event) that the client waits for.
- **first byte**: the time from sending a streamed request to the first byte of its body;
  **first token**: to the first chunk with content.
- **req/s, streams/s**: completed requests per second with 32 clients each waiting for its
  answer before sending the next one (closed loop).
- **CPU us/request**: CPU time (user + system) of the target's process tree over a phase,
  divided by the requests it completed; read from `/proc/<pid>/stat`.
- **RSS**: resident memory of the target's process tree (`VmRSS` of `/proc/<pid>/status`).
"""

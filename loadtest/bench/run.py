"""Rounds of phases, alternating between targets so that machine noise hits all of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import orjson

from loadtest.loadgen import LoadResult, LoadSpec, run_load
from loadtest.loadgen.payload import chat_body, full_length_prompt

from .scenarios import SCENARIOS, Plan, Scenario
from .targets import MAX_TOKENS, MODEL, Target


@dataclass
class Results:
    """Every phase's result by (scenario key, target name), in round order."""

    phases: dict[tuple[str, str], list[LoadResult]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, scenario: str, target: str, result: LoadResult) -> None:
        self.phases.setdefault((scenario, target), []).append(result)

    def get(self, scenario: str, target: str) -> list[LoadResult]:
        return self.phases.get((scenario, target), [])


async def probe(target: Target) -> str:
    """One plain and one streamed request: '' when both come back whole, else what is off."""
    headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json"}
    url = target.base_url + "/chat/completions"
    prompt = full_length_prompt(MAX_TOKENS)
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            body = chat_body(MODEL, prompt, MAX_TOKENS, stream=False)
            async with session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return f"HTTP {resp.status}: {raw[:200]!r}"
                tokens = orjson.loads(raw).get("usage", {}).get("completion_tokens")
            body = chat_body(MODEL, prompt, MAX_TOKENS, stream=True)
            async with session.post(url, data=body, headers=headers) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    return f"stream: HTTP {resp.status}: {raw[:200]!r}"
                chunks = raw.count(b"data:") - 1
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    issues = []
    if tokens != MAX_TOKENS:
        issues.append(f"completion_tokens {tokens} (expected {MAX_TOKENS})")
    if chunks < MAX_TOKENS:
        issues.append(f"{chunks} chunks per stream (expected at least {MAX_TOKENS})")
    return "; ".join(issues)


def spec_for(target: Target, scenario: Scenario, plan: Plan) -> LoadSpec:
    return LoadSpec(
        base_url=target.base_url, model=MODEL, api_key=target.api_key, stream=scenario.stream,
        max_tokens=MAX_TOKENS, concurrency=scenario.concurrency, requests=plan.max_requests,
        duration=plan.seconds, warmup=plan.warmup, warmup_duration=plan.warmup_seconds,
        server_pids=target.server_pids, aux_pids=target.aux_pids,
    )


async def run_rounds(
    targets: Sequence[Target], plan: Plan, report: Callable[[str], None]
) -> Results:
    """``plan.rounds`` rounds; in each, every scenario on every target (order rotating)."""
    results = Results()
    alive = list(targets)
    for round_no in range(plan.rounds):
        for scenario in SCENARIOS:
            shift = round_no % len(alive) if alive else 0
            for target in alive[shift:] + alive[:shift]:
                if not target.server.alive():
                    results.notes.append(f"{target.name} exited during the run; dropped "
                                         f"from round {round_no + 1} on:\n{target.server.log_tail()}")
                    alive.remove(target)
                    continue
                result = await run_load(spec_for(target, scenario, plan))
                results.add(scenario.key, target.name, result)
                report(f"round {round_no + 1}/{plan.rounds} {scenario.key:7} {target.name:12} "
                       f"{result.summary()}")
    return results

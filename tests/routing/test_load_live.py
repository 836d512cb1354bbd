"""Load-aware routing: one simulator turns slow (40 ms per token): most traffic moves to the
two others within seconds, whether the slowness shows as vLLM's queue (capacity 2) or only
as requests that take long (no queue: the gateway's own in-flight count must see it).
Measured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.routing.live import Result, Setup, chat, deploy, run_load, shares, usage_records

WINDOW = 0.5


@pytest.fixture(scope="module")
def setup(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    fast = ["--itl-ms", "5"]
    yield from deploy(tmp_path_factory.mktemp("load"), [fast, fast, [*fast, "--capacity", "2"]],
                      {"east": [0, 1], "west": [2]})


async def request(client: openai.AsyncOpenAI, result: Result) -> None:
    await chat(client, result, [{"role": "user", "content": f"Summarise item {result.tag}."}],
               max_tokens=16)


@pytest.fixture(scope="module")
def setup_no_queue(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    fast = ["--itl-ms", "5"]
    yield from deploy(tmp_path_factory.mktemp("load-no-queue"), [fast, fast, fast],
                      {"east": [0, 1], "west": [2]})


def test_traffic_leaves_the_slow_endpoint(setup: Setup) -> None:
    share_steady = measure_shift(setup)
    assert share_steady < 0.15  # from a third: it keeps about what its 2 slots can serve


def test_traffic_leaves_a_slow_endpoint_with_no_queue(setup_no_queue: Setup) -> None:
    """No vLLM queue to scrape: the slow endpoint holds the gateway's requests longer, and
    the in-flight scorer (with affinity's bounded load) moves traffic off it."""
    share_steady = measure_shift(setup_no_queue)
    assert share_steady < 0.2


def measure_shift(setup: Setup) -> float:
    """The slow endpoint's share of requests from 2 s after it turned slow; asserts the
    share before and how fast it fell."""
    gateway, sims = setup
    slow = sims[2]
    marks: dict[str, float] = {}

    async def slow_down(t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3.0)
        async with httpx.AsyncClient() as client:
            response = await client.post(slow.url + "/sim/faults", json={"mode": "drip", "drip_ms": 40})
            response.raise_for_status()
        marks["slow"] = loop.time() - t0
        await asyncio.sleep(6.0)

    results = asyncio.run(run_load(gateway, gateway.new_key(), 12, request, slow_down, tag="slow"))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    records = usage_records({r.request_id for r in results})
    windows = shares(records, results, WINDOW)
    first_slow_window = int(marks["slow"] // WINDOW)

    def share(counts: list[int], total: list[int]) -> float:
        return sum(counts) / max(1, sum(total))

    before = windows[1:first_slow_window]
    after = windows[first_slow_window:]
    slow_share = [w[slow.url] / max(1, sum(w.values())) for w in after]
    settled = next((i for i, s in enumerate(slow_share) if s < 0.1), None)
    share_before = share([w[slow.url] for w in before], [sum(w.values()) for w in before])
    steady = after[4:-1]  # from two seconds after the slow-down to the last full window
    share_steady = share([w[slow.url] for w in steady], [sum(w.values()) for w in steady])
    print(f"\nload shift: slow endpoint's share {share_before:.0%} before, {share_steady:.0%} from 2s after "
          f"it turned slow; below 10% within {(settled or 0) * WINDOW:.1f}s; per {WINDOW}s window: "
          + " ".join(f"{s:.0%}" for s in slow_share))
    assert share_before > 0.12  # a share while it is fast (its 2 slots queue a little even then)
    assert settled is not None and settled * WINDOW <= 3.0
    return share_steady

"""A whole cluster down: traffic spills to the other cluster; when it is back, the
model's preference returns (gradually, over the slow start). Measured."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import openai
import pytest

from tests.routing.live import (
    Result,
    Setup,
    chat,
    deploy,
    endpoints,
    poll,
    run_load,
    shares,
    usage_records,
)

WINDOW = 0.5


@pytest.fixture(scope="module")
def setup(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from deploy(tmp_path_factory.mktemp("cluster"), [["--itl-ms", "2"]] * 3,
                      {"east": [0, 1], "west": [2]}, prefer=["east"])


async def request(client: openai.AsyncOpenAI, result: Result) -> None:
    await chat(client, result, [{"role": "user", "content": f"Hello {result.tag}"}], max_tokens=8)


def test_cluster_down_spills_over_and_preference_returns(setup: Setup) -> None:
    gateway, sims = setup
    east, west = sims[:2], sims[2]
    marks: dict[str, float] = {}

    async def outage(t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(2.0)
        for sim in east:
            sim.kill()
        marks["down"] = loop.time() - t0
        await poll(lambda: all(endpoints(gateway)[s.url]["state"] in ("down", "ejected") for s in east),
                   10, "the east cluster is taken out")
        await asyncio.sleep(1.5)
        marks["up"] = loop.time() - t0  # before the first one can serve again
        for sim in east:
            await asyncio.to_thread(sim.start)
        await poll(lambda: all(endpoints(gateway)[s.url]["probe"]["ok"] for s in east), 10, "east is up")
        await asyncio.sleep(5.0)  # the 2 s slow start, then preference in full

    results = asyncio.run(run_load(gateway, gateway.new_key(), 4, request, outage, tag="cluster"))
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]  # no request failed
    windows = shares(usage_records({r.request_id for r in results}), results, WINDOW)
    west_share = [w[west.url] / max(1, sum(w.values())) for w in windows]
    down, up = int(marks["down"] // WINDOW), int(marks["up"] // WINDOW)
    before, during, after = west_share[1:down], west_share[down + 2:up], west_share[up:]
    back = next((i for i, s in enumerate(after) if s < 0.1 and all(x < 0.1 for x in after[i:])), None)
    print(f"\ncluster outage: west share {max(before):.0%} (max) before, {min(during):.0%} (min) while east "
          f"was down; preference back in full {(back or 0) * WINDOW:.1f}s after east restarted; "
          "per window: " + " ".join(f"{s:.0%}" for s in west_share))
    assert max(before) < 0.05  # the preferred cluster takes everything
    assert min(during) > 0.95  # spill-over: all of it to the other cluster
    assert back is not None and back * WINDOW <= 5.0

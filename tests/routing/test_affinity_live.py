"""Prefix affinity, measured: requests that share a long prefix (a system prompt) land on
one endpoint over 90% of the time when load is even, and prefixes spread over endpoints."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Iterator

import openai
import pytest

from tests.routing.live import Result, Setup, chat, deploy, run_load, usage_records

PREFIXES = [f"You are assistant number {i} of the city archive. " * 14 for i in range(9)]  # ~700 chars
REQUESTS = 180


@pytest.fixture(scope="module")
def setup(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from deploy(tmp_path_factory.mktemp("affinity"), [["--itl-ms", "2"]] * 3,
                      {"east": [0, 1], "west": [2]})


def test_shared_prefixes_stick_to_one_endpoint(setup: Setup) -> None:
    gateway, _ = setup
    prefix_of: dict[str, int] = {}
    rng = random.Random(5)

    async def request(client: openai.AsyncOpenAI, result: Result) -> None:
        prefix_of[result.tag] = group = rng.randrange(len(PREFIXES))
        messages = [{"role": "system", "content": PREFIXES[group]},
                    {"role": "user", "content": f"Question {result.tag}: where is file {group}?"}]
        await chat(client, result, messages, max_tokens=8)

    async def until_enough(t0: float) -> None:
        while len(prefix_of) < REQUESTS:
            await asyncio.sleep(0.1)

    results = asyncio.run(run_load(gateway, gateway.new_key(), 6, request, until_enough, tag="aff"))
    assert all(r.ok for r in results)
    records = usage_records({r.request_id for r in results})
    by_prefix: dict[int, Counter[str]] = defaultdict(Counter)
    for result in results:
        by_prefix[prefix_of[result.tag]][records[result.request_id]["endpoint"]] += 1
    on_home = sum(counts.most_common(1)[0][1] for counts in by_prefix.values())
    homes = Counter(counts.most_common(1)[0][0] for counts in by_prefix.values())
    ratio = on_home / len(results)
    print(f"\naffinity: {ratio:.1%} of {len(results)} requests on their prefix's endpoint; "
          f"{len(PREFIXES)} prefixes homed on {len(homes)} endpoints {sorted(homes.values())}")
    assert ratio > 0.9
    assert len(homes) >= 2  # prefixes spread: affinity does not pile everything on one endpoint

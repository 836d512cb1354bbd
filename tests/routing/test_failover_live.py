"""Three simulators in two clusters, one killed mid-run and brought back.

Acceptance: no request the client sees fails except streams already on the dead endpoint,
which end with an error event and are billed for what they delivered; the endpoint is
ejected, and takes traffic again when it is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.routing.live import (
    Result,
    Setup,
    Sim,
    chat,
    deploy,
    endpoints,
    poll,
    run_load,
    usage_records,
    wait_for,
)

STREAM_ARGS = ["--itl-ms", "25"]  # a 30-token stream lasts ~0.75 s: some are on the victim


@pytest.fixture(scope="module")
def setup(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    yield from deploy(tmp_path_factory.mktemp("failover"), [STREAM_ARGS] * 3,
                      {"east": [0, 1], "west": [2]})


async def request(client: openai.AsyncOpenAI, result: Result) -> None:
    await chat(client, result, [{"role": "user", "content": f"Tell me a story ({result.tag})."}],
               max_tokens=30)


def test_kill_one_endpoint_mid_run(setup: Setup) -> None:
    gateway, sims = setup
    victim = sims[1]
    key = gateway.new_key()
    timeline: dict[str, float] = {}

    async def kill_and_revive(t0: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(2.0)
        victim.kill()
        timeline["killed"] = loop.time() - t0
        timeline["out"] = await poll(lambda: endpoints(gateway)[victim.url]["state"] in ("down", "ejected"),
                                     10, "the killed endpoint is taken out")
        await asyncio.sleep(1.0)
        await asyncio.to_thread(victim.start)
        timeline["restarted"] = loop.time() - t0
        served = endpoints(gateway)[victim.url]["requests"]
        timeline["back"] = await poll(lambda: endpoints(gateway)[victim.url]["requests"] > served + 3,
                                      20, "the endpoint serves again")
        await asyncio.sleep(0.5)

    results = asyncio.run(run_load(gateway, key, 6, request, kill_and_revive, stream_every=2, tag="kill"))
    records = usage_records({r.request_id for r in results})
    failed = [r for r in results if not r.ok]
    for result in failed:  # only streams that were on the victim when it died
        record = records[result.request_id]
        assert result.stream, result.error
        assert record["endpoint"] == victim.url and record["status"] == "partial", record
        assert record["counted_by"] == "gateway"
        assert int(record["completion_tokens"]) == result.chunks  # billed what was delivered
    assert all(r.request_id in records for r in results)
    rows = endpoints(gateway)
    print(f"\nfailover: {len(results)} requests, {len(failed)} broken streams (all on the killed "
          f"endpoint); taken out {timeline['out']:.1f}s after the kill, serving again "
          f"{timeline['back']:.1f}s after the restart; ejections={rows[victim.url]['ejections']}")
    assert rows[victim.url]["ejections"] >= 1


def test_ejected_while_down_and_back_when_up(setup: Setup) -> None:
    gateway, sims = setup
    victim = sims[0]
    victim.kill()
    key = gateway.new_key()
    client = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=20)

    def ask(text: str) -> None:
        reply = client.chat.completions.create(model="chat-model", max_tokens=3,
                                               messages=[{"role": "user", "content": text}])
        assert reply.choices

    try:
        for i in range(9):  # the first ones fail over, later ones avoid it
            ask(f"question {i}")
        wait_for(lambda: endpoints(gateway)[victim.url]["state"] in ("down", "ejected"), 10,
                 "the killed endpoint is taken out")
        victim.start()
        before = endpoints(gateway)[victim.url]["requests"]
        questions = iter(range(10_000))

        def serving_again() -> bool:
            ask(f"again {next(questions)}")
            return bool(endpoints(gateway)[victim.url]["requests"] > before)

        wait_for(serving_again, 20, "the endpoint serves again")
        assert endpoints(gateway)[victim.url]["state"] in ("warming", "up")
    finally:
        client.close()


def set_fault(sim: Sim, **fault: object) -> None:
    httpx.post(sim.url + "/sim/faults", json=fault, timeout=5).raise_for_status()


def test_5xx_ejects_but_429_only_steers_away(setup: Setup) -> None:
    gateway, sims = setup
    flaky = sims[2]
    key = gateway.new_key()
    questions = iter(range(10_000))
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=20) as client:

        def ask() -> None:
            reply = client.chat.completions.create(
                model="chat-model", max_tokens=2,
                messages=[{"role": "user", "content": f"q{next(questions)}"}])
            assert reply.choices  # every one served, by another endpoint when needed

        try:
            before = endpoints(gateway)[flaky.url]
            set_fault(flaky, mode="error_before", status=429)
            for _ in range(12):
                ask()
            row = endpoints(gateway)[flaky.url]
            assert row["requests"] > before["requests"]  # it was tried ...
            assert row["failures"] == before["failures"]  # ... but not blamed
            assert row["state"] in ("up", "warming")

            set_fault(flaky, mode="error_before", status=500)
            wait_for(lambda: (ask(), endpoints(gateway)[flaky.url]["state"] == "ejected")[1], 20,
                     "consecutive 5xx eject it")
            assert endpoints(gateway)[flaky.url]["last_ejection"] == "outlier"
            set_fault(flaky, mode="none")
            served = endpoints(gateway)[flaky.url]["requests"]
            wait_for(lambda: (ask(), endpoints(gateway)[flaky.url]["requests"] > served + 2)[1], 20,
                     "a trial after the ejection, then traffic again")
            assert endpoints(gateway)[flaky.url]["breaker"] == "closed"
        finally:
            set_fault(flaky, mode="none")

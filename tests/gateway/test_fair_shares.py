"""Fair shares through a running gateway: one endpoint with room for two requests at a time
(``max_in_flight: 2``), one tenant flooding it, others asking now and then."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from tests.support.catalogs import model, write_catalog
from tests.support.processes import Gateway, Sims, start_gateway, start_sims

MODEL = "shared-model"
SERVED = "org/Shared-Model"
LONG = 30  # tokens of a flood request: 0.6 s at 20 ms a token


@pytest.fixture(scope="module")
def full_model(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("fair")
    sims = start_sims(1, SERVED, "--itl-ms", "20", "--capacity", "2")  # vLLM with two slots
    config = write_catalog(tmp / "models.yaml", {"east": [{"url": sims.url(0), "max_in_flight": 2}]},
                           [model(MODEL, ["east"], served_name=SERVED)], routing={"queue_seconds": 3})
    gateway = start_gateway(config, redis_url, tmp / "gateway.log")
    yield gateway
    gateway.stop()
    Sims.stop(sims)


async def _key(gateway: Gateway) -> str:
    return await asyncio.to_thread(gateway.new_key)  # it runs an event loop of its own


async def _ask(gateway: Gateway, key: str, tokens: int) -> tuple[int, float, httpx.Headers]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=gateway.base, timeout=30) as client:
        answer = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                   json={"model": MODEL, "max_tokens": tokens, "ignore_eos": True,
                                         "messages": [{"role": "user", "content": "go"}]})
    return answer.status_code, time.monotonic() - started, answer.headers


async def _flood(gateway: Gateway, key: str, clients: int, stop: asyncio.Event,
                 statuses: Counter[int]) -> None:
    async def one() -> None:
        while not stop.is_set():
            status, _, _ = await _ask(gateway, key, LONG)
            statuses[status] += 1

    await asyncio.gather(*(one() for _ in range(clients)))


async def test_a_quiet_tenant_is_served_in_turn_beside_a_flood(full_model: Gateway) -> None:
    flood_key, quiet_key = await _key(full_model), await _key(full_model)
    stop, statuses = asyncio.Event(), Counter[int]()
    flooding = asyncio.create_task(_flood(full_model, flood_key, 10, stop, statuses))
    await asyncio.sleep(1.0)  # two flood requests run, eight wait in the gateway
    waits = []
    for _ in range(5):
        status, seconds, _ = await _ask(full_model, quiet_key, 4)
        assert status == 200
        waits.append(seconds)
    stop.set()
    await flooding
    # at most about one flood request (0.6 s) ahead of it, never the eight queued (2.4 s+)
    assert sorted(waits)[2] < 1.2, waits
    assert statuses[200] > 0


async def test_a_flood_past_queue_seconds_is_told_to_retry(full_model: Gateway) -> None:
    key = await _key(full_model)
    answers = await asyncio.gather(*(_ask(full_model, key, LONG) for _ in range(24)))
    statuses = Counter(status for status, _, _ in answers)
    # two at a time, 0.6 s each: about ten fit in the 3 s wait, the rest are refused
    assert statuses[200] >= 8 and statuses[429] >= 4, statuses
    refused = next(headers for status, _, headers in answers if status == 429)
    assert refused["retry-after"] == "3"


async def test_a_heavier_package_gets_more_turns(full_model: Gateway) -> None:
    with full_model.admin() as admin:
        gold = admin.post("/admin/packages", json={"name": "gold", "credits": 10**7, "valid_days": 30,
                                                   "weight": 3}).raise_for_status().json()
        account = admin.post("/admin/accounts", json={"name": "gold"}).raise_for_status().json()
        admin.post(f"/admin/accounts/{account['id']}/purchases",
                   json={"package_id": gold["id"], "order_id": "gold-1"}).raise_for_status()
        gold_key = admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k"})
    gold_key_secret = gold_key.raise_for_status().json()["key"]
    basic_key = await _key(full_model)
    stop = asyncio.Event()
    served: dict[str, Counter[int]] = {"gold": Counter(), "basic": Counter()}
    tasks = [asyncio.create_task(_flood(full_model, gold_key_secret, 6, stop, served["gold"])),
             asyncio.create_task(_flood(full_model, basic_key, 6, stop, served["basic"]))]
    await asyncio.sleep(6.0)
    stop.set()
    await asyncio.gather(*tasks)
    ratio = served["gold"][200] / max(1, served["basic"][200])
    assert 2.0 <= ratio <= 4.5, served

"""models.yaml reloads (POST /admin/config/reload and SIGHUP) keep in-flight streams and
the state of endpoints that remain; /admin/endpoints and /metrics show the router."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.ops import REPORT_SECONDS
from tests.gateway.conftest import ADMIN_KEY, Gateway
from tests.routing.live import Setup, deploy, endpoints, reload_by_signal, wait_for, write_config


@pytest.fixture(scope="module")
def setup(routing_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    # 100 ms a token: a 60-token stream outlasts two reloads and the routing reports' second
    yield from deploy(tmp_path_factory.mktemp("reload"), [["--itl-ms", "100"]] * 3,
                      {"east": [0], "west": [1]})


def admin(gateway: Gateway) -> httpx.Client:
    return httpx.Client(base_url=gateway.control, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        timeout=10)


def test_endpoints_view_needs_the_admin_key(setup: Setup) -> None:
    gateway, sims = setup
    assert httpx.get(gateway.control + "/admin/endpoints", timeout=5).status_code == 401
    assert httpx.get(gateway.base + "/admin/endpoints", timeout=5).status_code == 404  # not public
    wait_for(lambda: len(endpoints(gateway)) == 2, 5, "the data plane reported its routing")
    with admin(gateway) as client:
        body = client.get("/admin/endpoints").raise_for_status().json()
    rows = {row["url"]: row for row in body["data"]}
    assert set(rows) == {sims[0].url, sims[1].url}
    row = rows[sims[0].url]
    assert row["cluster"] == "east" and row["models"] == ["chat-model"] and row["state"] in ("up", "warming")
    wait_for(lambda: endpoints(gateway)[sims[0].url]["metrics"]["fresh"], 5, "metrics scraped")
    assert set(endpoints(gateway)[sims[0].url]["metrics"]) >= {"num_requests_running", "num_requests_waiting",
                                                             "kv_cache_usage_perc", "age_seconds"}
    assert body["router"]["picker"] == "p2c"


def test_prometheus_series_per_endpoint_and_cluster(setup: Setup) -> None:
    gateway, sims = setup
    text = httpx.get(gateway.base + "/metrics", timeout=5).text
    for series in (f'tokengate_endpoint_up{{cluster="east",endpoint="{sims[0].url}"}} 1.0',
                   'tokengate_cluster_endpoints_up{cluster="west"} 1.0',
                   "tokengate_upstream_in_flight{", "tokengate_endpoint_requests_total{",
                   "tokengate_endpoint_ejections_total{", "tokengate_endpoint_vllm_waiting{",
                   "tokengate_router_failovers_total "):
        assert series in text, series


def stream_in_background(gateway: Gateway, key: str, into: dict[str, object]) -> threading.Thread:
    def run() -> None:
        client = openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=30)
        try:
            chunks = client.chat.completions.create(
                model="chat-model", max_tokens=60, stream=True,
                messages=[{"role": "user", "content": "A long answer, please."}])
            into["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        except openai.APIError as exc:
            into["error"] = exc
        finally:
            client.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def ask(gateway: Gateway, key: str, text: str) -> None:
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=20) as client:
        reply = client.chat.completions.create(model="chat-model", max_tokens=2,
                                               messages=[{"role": "user", "content": text}])
    assert reply.choices


def test_reload_keeps_streams_and_state(setup: Setup) -> None:
    gateway, sims = setup
    key = gateway.new_key()
    config = Path(gateway.log).parent / "models.yaml"
    # Only east (sims[0]) serves the model for a start, so the stream lands there.
    write_config(config, {"east": [sims[0]]})
    with admin(gateway) as client:
        client.post("/admin/config/reload").raise_for_status()
    wait_for(lambda: set(endpoints(gateway)) == {sims[0].url}, 5, "every worker reloaded")
    outcome: dict[str, object] = {}
    thread = stream_in_background(gateway, key, outcome)
    wait_for(lambda: endpoints(gateway)[sims[0].url]["in_flight"] == 1, 10, "the stream is on east")

    # 1. The API reload drops east's endpoint while the stream runs on it: it drains.
    write_config(config, {"west": [sims[1]], "south": [sims[2]]})
    with admin(gateway) as client:
        assert client.post("/admin/config/reload").raise_for_status().json()["clusters"] == ["west", "south"]
    wait_for(lambda: endpoints(gateway).get(sims[0].url, {}).get("state") == "draining", 5,
             "every worker reloaded")
    rows = endpoints(gateway)
    assert rows[sims[0].url]["state"] == "draining" and rows[sims[0].url]["in_flight"] == 1
    text = httpx.get(gateway.base + "/metrics", timeout=5).text
    assert f'tokengate_upstream_in_flight{{cluster="east",endpoint="{sims[0].url}"}} 1.0' in text
    assert 'tokengate_cluster_in_flight{cluster="east"} 1.0' in text
    thread.join(20)
    assert "error" not in outcome and len(str(outcome["text"])) > 0  # the stream finished whole
    wait_for(lambda: sims[0].url not in endpoints(gateway), 10, "drained, then gone")

    # 2. SIGHUP: west stays (same state, same counters), south goes, east comes back afresh.
    for i in range(4):
        ask(gateway, key, f"spread {i}")
    time.sleep(REPORT_SECONDS * 1.5)  # the last request is in the data plane's report
    west = endpoints(gateway)[sims[1].url]
    write_config(config, {"east": [sims[0]], "west": [sims[1]]}, prefer=["west"])
    reload_by_signal(gateway)
    wait_for(lambda: set(endpoints(gateway)) == {sims[0].url, sims[1].url}, 10, "SIGHUP reloaded")
    rows = endpoints(gateway)
    assert rows[sims[1].url]["requests"] == west["requests"]
    assert rows[sims[0].url]["requests"] == 0
    ask(gateway, key, "where now?")
    wait_for(lambda: endpoints(gateway)[sims[1].url]["requests"] == west["requests"] + 1, 5,
             "the new preference")

    # 3. A bad file is refused, by the API (400 naming the fault) and on SIGHUP (logged); the
    # gateway keeps serving the last good catalog.
    good = config.read_text(encoding="utf-8")
    bad = good.replace("deployments: [east, west]", "deployments: [east, north]")
    config.write_text(bad, encoding="utf-8")
    with admin(gateway) as client:
        refused = client.post("/admin/config/reload")
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "invalid_config" and "unknown cluster 'north'" in error["message"]
    ask(gateway, key, "after the refused reload")
    config.write_text("clusters: [oops\n", encoding="utf-8")
    reload_by_signal(gateway)
    wait_for(lambda: "models.yaml not reloaded" in Path(gateway.log).read_text(), 5, "the refusal logged")
    ask(gateway, key, "still there?")
    assert gateway.process.poll() is None

"""The background monitor against a real simulator (in-process) and a dead port: probes
and scrapes reach the router's state, a dead endpoint goes down, metrics stay fresh."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.catalog import parse_catalog
from gateway.relay.upstream import UpstreamClient
from gateway.routing.monitor import EndpointMonitor
from gateway.routing.router import Router
from gateway.settings import Settings
from launcher.embedded import free_port
from loadtest.vllm_sim.cli import start_sim
from loadtest.vllm_sim.config import SimConfig

FAST = "  probe_interval: 0.1\n  probe_timeout: 0.5\n  scrape_interval: 0.1\n  down_after_probes: 2\n"


async def test_probes_and_scrapes_feed_the_router() -> None:
    sim = await start_sim(SimConfig(capacity=2))
    dead = f"127.0.0.1:{free_port()}"
    live = sim.url.removeprefix("http://")
    config = (
        "clusters:\n  - name: east\n    endpoints:\n"
        f"      - url: http://{live}\n      - url: http://{dead}\n"
        "models:\n  - name: m\n    context_window: 4096\n    price: {input: 1, output: 1}\n"
        "    deployments: [east]\nrouting:\n" + FAST
    )
    router = Router(parse_catalog(config))
    upstream = UpstreamClient(Settings())
    sim.state.scheduler.running, sim.state.scheduler.waiting = 2, 5
    task = asyncio.create_task(EndpointMonitor(router, upstream).run())
    try:
        await asyncio.sleep(0.8)
        alive, gone = router.states[f"http://{live}"], router.states[f"http://{dead}"]
        assert alive.probe_ok and (alive.running, alive.waiting) == (2.0, 5.0)
        assert router.clock() - alive.scraped_at < 0.5
        assert not gone.probe_ok and gone.probe_error and gone.scrape_error
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await upstream.close()
        await sim.close()

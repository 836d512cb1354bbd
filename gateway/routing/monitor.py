"""Background work of the router: probe ``/health`` and scrape ``/metrics`` of every endpoint.

Two loops on the event loop, each a round of concurrent requests bounded by its timeout,
then a sleep to the next interval. Nothing here is on a request's path: a pick reads
whatever the last round left (and ignores metrics once stale), so a slow or dead
endpoint delays only its own next reading.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.redact import redact_url
from gateway.relay.upstream import UpstreamClient
from gateway.routing.registry import EndpointState
from gateway.routing.router import Router

log = logging.getLogger("tokengate.routing")

RUNNING = b"vllm:num_requests_running"
WAITING = b"vllm:num_requests_waiting"
KV_CACHE = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")  # vLLM V1, then V0


def parse_vllm_metrics(text: bytes) -> tuple[float, float, float] | None:
    """(running, waiting, kv cache usage) summed over engines (KV: the fullest engine).

    Reads only the three series, by search, not by parsing the whole exposition (vLLM's
    /metrics is mostly histograms). None when the page has no vLLM queue gauges.
    """
    running = _samples(text, RUNNING)
    waiting = _samples(text, WAITING)
    if not running and not waiting:
        return None
    kv: list[float] = []
    for name in KV_CACHE:
        kv = _samples(text, name)
        if kv:
            break
    return sum(running), sum(waiting), max(kv, default=0.0)


def _samples(text: bytes, name: bytes) -> list[float]:
    values: list[float] = []
    start = 0
    while (at := text.find(name, start)) != -1:
        start = at + len(name)
        if at and text[at - 1] != 0x0A:  # not at a line start: a comment or a longer name
            continue
        end = text.find(b"\n", start)
        line = text[start:] if end == -1 else text[start:end]
        if line[:1] not in (b"{", b" "):
            continue
        try:
            values.append(float(line.rsplit(b"}", 1)[-1].split()[0]))
        except (ValueError, IndexError):
            continue
    return values


class EndpointMonitor:
    def __init__(self, router: Router, upstream: UpstreamClient) -> None:
        self.router = router
        self.upstream = upstream

    async def run(self) -> None:
        """Probe and scrape until cancelled."""
        await asyncio.gather(self._every("probe_interval", self._probe),
                             self._every("scrape_interval", self._scrape))

    async def _every(self, interval: str, check: Callable[[EndpointState], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            states = list(self.router.states.values())  # a reload may swap them meanwhile
            try:
                await asyncio.gather(*(check(state) for state in states))
            except Exception:  # a bug here must not stop health checks for good
                log.exception("routing: %s round failed", interval.removesuffix("_interval"))
            pause = getattr(self.router.config, interval) - (loop.time() - started)
            await asyncio.sleep(max(0.0, pause))

    async def _probe(self, state: EndpointState) -> None:
        try:
            status, _ = await self.upstream.get(state.endpoint.url, "/health",
                                                self.router.config.probe_timeout)
        except (OSError, TimeoutError) as exc:  # refused, reset, silent: the endpoint is down
            self.router.probed(state, False, exc.__class__.__name__)
            return
        except Exception as exc:  # a probe never kills the loop
            log.exception("routing: probe of %s failed", redact_url(state.endpoint.url))
            self.router.probed(state, False, exc.__class__.__name__)
            return
        self.router.probed(state, status == 200, "" if status == 200 else f"HTTP {status}")

    async def _scrape(self, state: EndpointState) -> None:
        try:
            status, body = await self.upstream.get(state.endpoint.url, "/metrics",
                                                   self.router.config.scrape_timeout)
        except Exception as exc:  # unreachable, timed out, or worse: stale metrics, no harm
            state.scrape_error = exc.__class__.__name__
            return
        values = parse_vllm_metrics(body) if status == 200 else None
        if values is None:
            state.scrape_error = f"HTTP {status}" if status != 200 else "no vLLM metrics"
            return
        self.router.scraped(state, *values)

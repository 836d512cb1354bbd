"""Real parts for routing tests: one simulator process per endpoint (so one can be killed
and restarted on its port), the gateway as ``tokengate serve``, Redis db 3, and a load
driver on the official ``openai`` client that records what every request saw."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import redis

from gateway.keyspace import all_usage_streams
from launcher.embedded import free_port, wait_for_port
from tests.support.processes import Gateway, spawn, start_gateway, stop_process

ROUTING_REDIS_DB = 3
MODEL = "chat-model"
SERVED = "org/Chat-Model-7B"

# Fast health and metrics so that tests see transitions in seconds.
FAST_ROUTING = """\
routing:
  probe_interval: 0.5
  probe_timeout: 0.5
  down_after_probes: 2
  scrape_interval: 0.25
  scrape_timeout: 0.5
  metrics_stale_after: 2
  eject_base_seconds: 2
  eject_max_seconds: 8
  slow_start_seconds: 2
"""


@dataclass
class Sim:
    """One vLLM simulator process on a port of its own."""

    args: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Sim:
        argv = [sys.executable, "-m", "loadtest.vllm_sim", "--port", str(self.port), "--model", SERVED,
                *self.args]
        self.process = spawn(argv, None)
        wait_for_port(self.port, self.process)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)


Setup = tuple[Gateway, list[Sim]]


def write_config(path: Path, clusters: dict[str, list[Sim]], prefer: list[str] | None = None,
                 routing: str = FAST_ROUTING) -> Path:
    lines = ["clusters:"]
    for name, sims in clusters.items():
        lines += [f"  - name: {name}", f"    region: {name}-region", "    endpoints:"]
        lines += [f'      - url: "{sim.url}"' for sim in sims]
    lines += ["models:", f"  - name: {MODEL}", f"    served_name: {SERVED}", "    context_window: 8192",
              "    price: {input: 1, output: 1}", f"    deployments: [{', '.join(clusters)}]"]
    if prefer:
        lines.append(f"    prefer: [{', '.join(prefer)}]")
    path.write_text("\n".join(lines) + "\n" + routing, encoding="utf-8")
    return path


def deploy(tmp: Path, sim_args: list[list[str]], layout: dict[str, list[int]],
           prefer: list[str] | None = None) -> Iterator[Setup]:
    """Start one simulator per ``sim_args`` entry and a gateway over them; stop all after.

    ``layout`` names each cluster's simulators by index: {"east": [0, 1], "west": [2]}."""
    sims: list[Sim] = []
    gateway: Gateway | None = None
    try:
        for args in sim_args:
            sims.append(Sim(args).start())
        clusters = {name: [sims[i] for i in indexes] for name, indexes in layout.items()}
        gateway = launch(write_config(tmp / "models.yaml", clusters, prefer), tmp / "gateway.log")
        yield gateway, sims
    finally:
        if gateway is not None:
            gateway.stop()
        for sim in sims:
            sim.stop()


def redis_url() -> str:
    return f"redis://127.0.0.1:6379/{ROUTING_REDIS_DB}"


def launch(config: Path, log: Path) -> Gateway:
    return start_gateway(config, redis_url(), log, TOKENGATE_UPSTREAM_ATTEMPTS="3",
                         TOKENGATE_FIRST_BYTE_TIMEOUT="10", TOKENGATE_IDLE_TIMEOUT="10")


def reload_by_signal(gateway: Gateway) -> None:
    os.kill(gateway.process.pid, signal.SIGHUP)


def endpoints(gateway: Gateway) -> dict[str, dict[str, Any]]:
    """``/admin/endpoints`` rows by URL, as of this call."""
    return gateway.endpoints()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` held; fails the test after ``timeout``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


def usage_records(request_ids: set[str], timeout: float = 10) -> dict[str, dict[str, str]]:
    """The usage events of these request ids (settlement runs just after the response)."""
    client = redis.Redis.from_url(redis_url(), decode_responses=True)
    found: dict[str, dict[str, str]] = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            for stream in all_usage_streams():
                for _, fields in client.xrange(stream):
                    if fields.get("request_id") in request_ids:
                        found[fields["request_id"]] = fields
            if len(found) == len(request_ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.2)
    finally:
        client.close()


@dataclass
class Result:
    tag: str  # the client's label of the request (unique within the test run)
    started: float  # seconds since the load began
    stream: bool
    request_id: str = ""  # the gateway's x-request-id, once it answered
    ok: bool = False
    error: str = ""
    chunks: int = 0  # content chunks a stream delivered


_ids = itertools.count()


def new_tag(tag: str) -> str:
    return f"rt-{tag}-{os.getpid()}-{next(_ids)}"


Request = Callable[[openai.AsyncOpenAI, Result], Awaitable[None]]


async def chat(client: openai.AsyncOpenAI, result: Result, messages: list[dict[str, str]],
               max_tokens: int = 8) -> None:
    create = client.chat.completions.with_raw_response.create
    if not result.stream:
        raw = await create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
        result.request_id = raw.headers["x-request-id"]
        result.ok = bool(raw.parse().choices)
        return
    raw_stream = await create(model=MODEL, messages=messages,  # type: ignore[arg-type]
                              max_tokens=max_tokens, stream=True)
    result.request_id = raw_stream.headers["x-request-id"]
    stream = raw_stream.parse()
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            result.chunks += 1
    result.ok = True


async def run_load(gateway: Gateway, key: str, concurrency: int, request: Request,
                   control: Callable[[float], Awaitable[None]], stream_every: int = 0,
                   tag: str = "load") -> list[Result]:
    """``concurrency`` workers send requests back to back until ``control(t0)`` returns.

    ``control`` sleeps, kills and restarts simulators and watches the gateway; the load
    ends with it. ``stream_every`` = n makes every n-th request a stream."""
    results: list[Result] = []
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    counter = itertools.count()
    done = asyncio.Event()

    async def worker(client: openai.AsyncOpenAI) -> None:
        while not done.is_set():
            stream = bool(stream_every and next(counter) % stream_every == 0)
            result = Result(new_tag(tag), loop.time() - t0, stream)
            results.append(result)
            try:
                await request(client, result)
            except openai.APIError as exc:
                result.error = f"{exc.__class__.__name__}: {exc}"
                if isinstance(exc, openai.APIStatusError):
                    result.request_id = exc.response.headers.get("x-request-id", "")

    async def controller() -> None:
        try:
            await control(t0)
        finally:
            done.set()

    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0, timeout=30) as client:
        await asyncio.gather(controller(), *(worker(client) for _ in range(concurrency)))
    return results


async def poll(check: Callable[[], bool], timeout: float, what: str) -> float:
    """``wait_for`` inside the event loop: the check runs in a thread (it may do HTTP)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await asyncio.to_thread(check):
        if loop.time() - started > timeout:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        await asyncio.sleep(0.2)
    return loop.time() - started


def shares(records: dict[str, dict[str, str]], results: list[Result], window: float) -> list[Counter[str]]:
    """Per time window of request start, how many requests each endpoint served."""
    windows: list[Counter[str]] = []
    for result in results:
        record = records.get(result.request_id)
        if record is None:
            continue
        index = int(result.started // window)
        while len(windows) <= index:
            windows.append(Counter())
        windows[index][record["endpoint"]] += 1
    return windows

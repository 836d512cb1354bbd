"""Drive an OpenAI endpoint at a fixed concurrency (closed loop) or arrival rate (open loop).

Every run is bounded by a request count AND a duration (whichever comes first) and only
targets loopback. In rate mode a request's latency counts from when it was due, not from
when it went out, so a server that falls behind cannot hide its queue (no coordinated
omission); requests due while ``max_in_flight`` are outstanding are dropped and counted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from time import perf_counter, process_time

import aiohttp

from .client import request, wait_all
from .payload import chat_body, full_length_prompt
from .procstat import sample
from .stats import Distribution, LoadResult, Recorder, ServerUsage
from .target import check_loopback

MAX_REQUESTS = 10_000_000
MAX_DURATION_S = 3600.0
MAX_CONCURRENCY = 4096
MAX_RATE = 100_000.0


@dataclass(frozen=True)
class LoadSpec:
    """One phase. ``base_url`` is the OpenAI base (``http://127.0.0.1:PORT/v1``)."""

    base_url: str
    model: str
    api_key: str = "bench"
    stream: bool = False
    max_tokens: int = 64
    prompt: str | None = None  # default: one the simulator answers with max_tokens tokens
    concurrency: int | None = None
    rate: float | None = None
    requests: int = 1000
    duration: float = 10.0
    warmup: int = 0  # requests sent first (at the same concurrency) and not recorded
    warmup_duration: float = 2.0  # at most this many seconds of warm-up
    timeout: float = 30.0
    max_in_flight: int = 1024
    server_pids: tuple[int, ...] = field(default=())
    aux_pids: tuple[int, ...] = field(default=())

    def validate(self) -> None:
        check_loopback(self.base_url)
        if (self.concurrency is None) == (self.rate is None):
            raise ValueError("give exactly one of concurrency and rate")
        if self.concurrency is not None and not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}")
        if self.rate is not None and not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate must be in (0, {MAX_RATE:g}] requests/s")
        if not 1 <= self.requests <= MAX_REQUESTS or not 0 <= self.warmup <= MAX_REQUESTS:
            raise ValueError(f"requests must be in 1..{MAX_REQUESTS} (warmup in 0..{MAX_REQUESTS})")
        if not 0 < self.duration <= MAX_DURATION_S or not 0 < self.warmup_duration <= MAX_DURATION_S:
            raise ValueError(f"durations must be in (0, {MAX_DURATION_S:g}] seconds")
        if not 0 < self.timeout <= MAX_DURATION_S or self.max_in_flight < 1 or self.max_tokens < 1:
            raise ValueError("timeout, max_in_flight and max_tokens must be positive")


class _Shot:
    """The prepared request of a spec: URL, body and headers built once."""

    def __init__(self, spec: LoadSpec) -> None:
        base = check_loopback(spec.base_url)
        self.url = base + "/chat/completions"
        prompt = spec.prompt if spec.prompt is not None else full_length_prompt(spec.max_tokens)
        self.body = chat_body(spec.model, prompt, spec.max_tokens, spec.stream)
        self.headers = {"Authorization": f"Bearer {spec.api_key}", "Content-Type": "application/json"}
        self.stream = spec.stream

    async def fire(self, session: aiohttp.ClientSession, rec: Recorder, started: float) -> None:
        await request(session, self.url, self.body, self.headers, self.stream, rec, started)


async def _closed(
    shot: _Shot, session: aiohttp.ClientSession, concurrency: int, count: int, duration: float
) -> tuple[Recorder, float]:
    rec = Recorder()
    issued = 0
    start = perf_counter()
    deadline = start + duration

    async def worker() -> None:
        nonlocal issued
        while issued < count:
            now = perf_counter()
            if now >= deadline:
                return
            issued += 1
            await shot.fire(session, rec, now)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))
    return rec, perf_counter() - start


async def _open(
    shot: _Shot, session: aiohttp.ClientSession, spec: LoadSpec, rate: float
) -> tuple[Recorder, float]:
    rec = Recorder()
    tasks: set[asyncio.Task[None]] = set()
    start = perf_counter()
    deadline = start + spec.duration
    for i in range(spec.requests):
        due = start + i / rate
        if due >= deadline:
            break
        delay = due - perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(tasks) >= spec.max_in_flight:
            rec.dropped += 1
            continue
        task = asyncio.create_task(shot.fire(session, rec, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await wait_all(set(tasks))
    return rec, perf_counter() - start


def _result(spec: LoadSpec, rec: Recorder, seconds: float, client_cpu: float,
            server: ServerUsage | None, aux: ServerUsage | None) -> LoadResult:
    ok = len(rec.latency)
    streamed = spec.stream
    return LoadResult(
        mode="concurrency" if spec.concurrency is not None else "rate",
        stream=streamed,
        concurrency=spec.concurrency,
        rate=spec.rate,
        ok=ok,
        errors=dict(rec.errors),
        dropped=rec.dropped,
        seconds=seconds,
        requests_per_s=ok / seconds if seconds > 0 else 0.0,
        latency_ms=Distribution.of(rec.latency, 1e3),
        first_byte_ms=Distribution.of(rec.first_byte, 1e3) if streamed else None,
        first_token_ms=Distribution.of(rec.first_token, 1e3) if streamed else None,
        chunks_min=min(rec.chunks) if rec.chunks else None,
        chunks_max=max(rec.chunks) if rec.chunks else None,
        client_cpu_us_per_request=client_cpu / ok * 1e6 if ok else None,
        server=server,
        aux=aux,
    )


async def run_load(spec: LoadSpec, session: aiohttp.ClientSession | None = None) -> LoadResult:
    """Warm up, then run one measured phase; ``session`` defaults to a fresh one."""
    spec.validate()
    if session is None:
        limit = spec.concurrency or spec.max_in_flight
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        timeout = aiohttp.ClientTimeout(total=spec.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as own:
            return await run_load(spec, own)
    shot = _Shot(spec)
    if spec.warmup:
        await _closed(shot, session, spec.concurrency or 8, spec.warmup, spec.warmup_duration)
    before, aux_before = sample(spec.server_pids), sample(spec.aux_pids)
    cpu_before = process_time()
    if spec.concurrency is not None:
        rec, seconds = await _closed(shot, session, spec.concurrency, spec.requests, spec.duration)
    else:
        assert spec.rate is not None
        rec, seconds = await _open(shot, session, spec, spec.rate)
    client_cpu = process_time() - cpu_before
    after, aux_after = sample(spec.server_pids), sample(spec.aux_pids)
    served = len(rec.latency)  # CPU per successful request
    server = ServerUsage.between(before, after, served) if spec.server_pids else None
    aux = ServerUsage.between(aux_before, aux_after, served) if spec.aux_pids else None
    return _result(spec, rec, seconds, client_cpu, server, aux)

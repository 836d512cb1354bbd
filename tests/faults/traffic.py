"""Traffic for the fault suite: clients sending chat requests, streamed and not, some of them
leaving at random points, each remembering what it saw.

A streamed client asks for continuous usage, so every chunk it receives tells how many tokens
it has received so far; a whole answer tells it in its usage. What a client saw is what the
audit holds the bill to: never less than it received (give or take what the scenario
allows), never more than the upstream generated.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

import httpx
import orjson

from tests.faults.stack import ITL_MS, MODEL


@dataclass
class Seen:
    """One request as its client saw it."""

    stream: bool
    started: float
    request_id: str = ""  # "" when no answer's head arrived
    status: int = 0  # 0: no answer
    received: int = 0  # completion tokens the client got
    left: bool = False  # the client went away before the end


@dataclass
class Traffic:
    """``clients`` loops of requests to ``base`` with ``key`` until stopped."""

    base: str
    key: str
    clients: int = 6
    leave: float = 0.0  # the share of requests a client abandons at a random point
    streams: float = 0.5  # the share of requests streamed
    max_tokens: tuple[int, int] = (8, 60)
    seed: int = 0
    seen: list[Seen] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._client(random.Random(self.seed * 1000 + i)))
                       for i in range(self.clients)]
        return self

    async def stop(self) -> list[Seen]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.seen

    async def run_for(self, seconds: float) -> list[Seen]:
        self.start()
        await asyncio.sleep(seconds)
        return await self.stop()

    def served(self, after: float = 0.0) -> int:
        return sum(1 for s in self.seen if s.status == 200 and s.started >= after)

    async def wait_served(self, count: int, after: float = 0.0, timeout: float = 30.0) -> None:
        """Until ``count`` requests started after ``after`` were served."""
        deadline = time.monotonic() + timeout
        while self.served(after) < count:
            if time.monotonic() > deadline:
                statuses = sorted({s.status for s in self.seen if s.started >= after})
                raise AssertionError(f"fewer than {count} served in {timeout} s (statuses {statuses})")
            await asyncio.sleep(0.05)

    async def _client(self, rng: random.Random) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        async with httpx.AsyncClient(base_url=self.base, headers=headers, timeout=30) as client:
            while not self._stop.is_set():
                stream = rng.random() < self.streams
                seen = Seen(stream, time.monotonic())
                self.seen.append(seen)
                tokens = rng.randint(*self.max_tokens)
                body = {"model": MODEL, "max_tokens": tokens, "ignore_eos": True,  # runs to max_tokens
                        "messages": [{"role": "user", "content": f"Tell story {rng.random()}."}]}
                # leaving after this many tokens (streamed) or this long (whole)
                leave = rng.random() * tokens if rng.random() < self.leave else None
                try:
                    if stream:
                        await self._stream(client, body, seen, leave)
                    else:
                        await self._whole(client, body, seen, leave)
                except (httpx.HTTPError, OSError):
                    await asyncio.sleep(0.05)  # no answer, or broken off: what it saw stays

    async def _stream(self, client: httpx.AsyncClient, body: dict[str, object], seen: Seen,
                      leave_at: float | None) -> None:
        body = {**body, "stream": True, "stream_options": {"include_usage": True,
                                                           "continuous_usage_stats": True}}
        async with client.stream("POST", "/v1/chat/completions", json=body) as answer:
            seen.status, seen.request_id = answer.status_code, answer.headers.get("x-request-id", "")
            if answer.status_code != 200:
                await answer.aread()
                return
            async for line in answer.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                usage = orjson.loads(line[6:]).get("usage")
                if usage:
                    seen.received = max(seen.received, int(usage.get("completion_tokens") or 0))
                if leave_at is not None and seen.received >= leave_at:
                    seen.left = True
                    return  # leaving the block closes the connection mid-stream

    async def _whole(self, client: httpx.AsyncClient, body: dict[str, object], seen: Seen,
                     leave_at: float | None) -> None:
        call = client.post("/v1/chat/completions", json=body)
        if leave_at is None:
            answer = await call
        else:
            try:  # gone before the answer: it saw nothing (no id either)
                answer = await asyncio.wait_for(call, leave_at * ITL_MS / 1000)
            except TimeoutError:
                seen.left = True
                return
        seen.status, seen.request_id = answer.status_code, answer.headers.get("x-request-id", "")
        if answer.status_code == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                seen.received = int(answer.json()["usage"]["completion_tokens"])

"""Small helpers shared by the e2e test modules."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import httpx

from gateway.usage import UsageEvent
from tests.e2e.conftest import PRICES, Gateway, VLLMServer, remember

IGNORE_EOS = {"ignore_eos": True}  # vLLM's own parameter: exactly max_tokens tokens

def rid(label: str) -> str:
    """A fresh label for a request (sent as x-client-request-id: see conftest.gateway_id)."""
    return f"e2e-{label}-{uuid.uuid4().hex[:12]}"


def headers(label: str) -> dict[str, str]:
    return {"x-client-request-id": label}


def charge(model: str, prompt_tokens: int, completion_tokens: int) -> int:
    price_in, price_out = PRICES[model]  # whole credits per token in these tests
    return prompt_tokens * price_in + completion_tokens * price_out


def server_of(event: UsageEvent, servers: Iterable[VLLMServer]) -> VLLMServer:
    for server in servers:
        if server.url == event.endpoint:
            assert event.cluster == server.cluster, event
            return server
    raise AssertionError(f"usage event names an unknown endpoint: {event}")


def assert_billed(
    event: UsageEvent,
    *,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    stream: bool,
    servers: Iterable[VLLMServer],
    status: str = "ok",
    counted_by: str = "upstream",
) -> None:
    assert event.model == model
    assert (event.status, event.counted_by, event.stream) == (status, counted_by, stream), event
    assert (event.prompt_tokens, event.completion_tokens) == (prompt_tokens, completion_tokens), event
    assert event.charge == charge(model, prompt_tokens, completion_tokens), event
    server_of(event, servers)


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order (``[DONE]`` included)."""
    out = []
    for event in raw.split(b"\n\n"):
        event = event.strip(b"\r\n")
        if event:
            assert event.startswith(b"data: "), event
            out.append(event[6:])
    return out


def post_sse(gateway: Gateway, key: str, path: str, body: dict[str, Any], request_id: str) -> list[bytes]:
    """POST a streamed request through the gateway; the raw SSE payloads."""
    with httpx.stream(
        "POST", gateway.v1 + path, json=body, timeout=120,
        headers={"Authorization": f"Bearer {key}", **headers(request_id)},
    ) as response:
        remember(response)
        raw = response.read()
        assert response.status_code == 200, raw
        assert response.headers["content-type"].startswith("text/event-stream")
    return sse_events(raw)


def chunks(payloads: list[bytes]) -> list[dict[str, Any]]:
    assert payloads and payloads[-1] == b"[DONE]", payloads[-3:]
    return [json.loads(p) for p in payloads[:-1]]


def wait_idle(servers: Iterable[VLLMServer], timeout: float = 60) -> None:
    """Until no vLLM server runs or queues a request (aborted ones included)."""
    deadline = time.monotonic() + timeout
    servers = [s for s in servers if s.alive()]
    while True:
        metrics = [s.metrics() for s in servers]
        busy = sum(m.get("vllm:num_requests_running", 0) + m.get("vllm:num_requests_waiting", 0)
                   for m in metrics)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"vLLM still busy after {timeout:g}s")
        time.sleep(0.1)


COUNTERS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:prompt_tokens_cached_total")


def counters(server: VLLMServer) -> dict[str, int]:
    metrics = server.metrics()
    return {name: int(metrics.get(name, 0)) for name in COUNTERS}


def stable_counters(server: VLLMServer, timeout: float = 10) -> dict[str, int]:
    """vLLM's token counters once two reads ~0.3 s apart agree (stats are published async)."""
    deadline = time.monotonic() + timeout
    last = counters(server)
    while True:
        time.sleep(0.3)
        now = counters(server)
        if now == last or time.monotonic() > deadline:
            return now
        last = now

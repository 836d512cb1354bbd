"""One provider stream, as the OpenAI chunks vLLM would send (and as one answer).

Each chunk is compact JSON with ``usage`` last, the running usage on every chunk when the
client asked ``continuous_usage_stats`` (the data plane always does) and the usage trailer
when it asked ``include_usage``: the data plane meters it with the same byte searches as
a vLLM stream. The trailer is the provider's own usage when it reported any (exact), else
our running count. A stream that ends without a finished choice (the provider's connection
cut) is an error, not an answer: the client gets an error event and the count so far.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import litellm
import orjson

from bridge.errors import BridgeError
from bridge.params import Call
from bridge.usage import RunningUsage, UsageTap

DONE = b"data: [DONE]\n\n"


async def open_stream(call: Call) -> tuple[Any, UsageTap]:
    """Start the provider call (raises litellm's exceptions); its stream with a usage tap."""
    stream = await litellm.acompletion(**call.arguments)
    if getattr(stream, "completion_stream", None) is None:
        await stream.fetch_stream()
    tap = UsageTap(stream.completion_stream)
    stream.completion_stream = tap
    return stream, tap


class ChunkWriter:
    """SSE events of one answer in vLLM's shape: id, object, created, model, choices, usage."""

    def __init__(self, model: str, running: bool, trailer: bool) -> None:
        self._head = {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model}
        self._running = running
        self._trailer = trailer

    def chunk(self, delta: dict[str, Any], finish: str | None, usage: RunningUsage) -> bytes:
        doc: dict[str, Any] = {**self._head, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self._running:
            doc["usage"] = usage_json(usage.prompt, usage.completion, 0)
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    def trailer(self, prompt: int, completion: int, cached: int) -> bytes:
        if not self._trailer:
            return b""
        doc = {**self._head, "choices": [], "usage": usage_json(prompt, completion, cached)}
        return b"data: " + orjson.dumps(doc) + b"\n\n"


def usage_json(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                             "completion_tokens": completion}
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def delta_of(delta: Any) -> tuple[dict[str, Any], str]:
    """An OpenAI delta from litellm's, and the text it generated (for our count)."""
    out: dict[str, Any] = {}
    texts: list[str] = []
    role = getattr(delta, "role", None)
    if role:
        out["role"] = role
    content = getattr(delta, "content", None)
    if content is not None:
        out["content"] = content
        texts.append(content)
    reasoning = getattr(delta, "reasoning_content", None)
    if reasoning:
        out["reasoning_content"] = reasoning
        texts.append(reasoning)
    calls = getattr(delta, "tool_calls", None)
    if calls:
        out["tool_calls"] = []
        for position, call in enumerate(calls):
            raw = call.model_dump(exclude_none=True) if hasattr(call, "model_dump") else dict(call)
            raw.setdefault("index", position)
            function = raw.get("function") or {}
            texts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
            out["tool_calls"].append({k: raw[k] for k in ("index", "id", "type", "function") if k in raw})
    return out, "".join(texts)


async def sse(stream: Any, tap: UsageTap, usage: RunningUsage, writer: ChunkWriter) -> AsyncIterator[bytes]:
    """The client's SSE events, one per provider chunk, then the trailer and [DONE].

    Raises litellm's exceptions as they come, and BridgeError for a stream cut short."""
    final: Any = None
    finished = False
    async for chunk in stream:
        report = tap.take()
        if not chunk.choices:  # litellm's usage trailer
            final = getattr(chunk, "usage", None)
            usage.step(report, "")
            continue
        choice = chunk.choices[0]
        delta, text = delta_of(choice.delta)
        usage.step(report, text)
        finished = finished or choice.finish_reason is not None
        if delta or choice.finish_reason is not None:
            yield writer.chunk(delta, choice.finish_reason, usage)
    usage.step(tap.take(), "")
    if not finished:
        raise BridgeError(502, "the model's provider stopped before the answer was complete",
                          "provider_error")
    if tap.reported and final is not None:
        details = getattr(final, "prompt_tokens_details", None)
        cached = getattr(details, "cached_tokens", None) or 0
        yield writer.trailer(final.prompt_tokens, final.completion_tokens, cached)
    else:
        yield writer.trailer(usage.prompt, usage.completion, usage.cached)
    yield DONE

"""A scripted upstream and a recording client, to drive the relays in-process.

The upstream is a real asyncio TCP server on 127.0.0.1:0 answering each request it reads
with the next scripted reply: raw HTTP/1.1 bytes written in parts, pauses, and a cut. The
relay reaches it through the real ``UpstreamClient`` (``gateway/relay/http1.py``), so
timeouts, cuts and aborts are the sockets' own. The client is an ASGI ``send`` that records
every message and a ``receive`` that reports a disconnect once the test says the client left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.asgi import Message
from gateway.catalog import Endpoint, Model
from gateway.lease import Progress
from gateway.relay.http1 import UpstreamResponse
from gateway.relay.upstream import UpstreamClient
from gateway.settings import Settings

Step = bytes | float | None  # bytes to write, seconds to pause, None: cut the connection

SERVED = "org/M"  # what the upstream calls the model
PUBLIC = "m"  # what the client asked for, and must see
MODEL = Model(name=PUBLIC, served_name=SERVED, kind="chat", tokenizer="tiktoken:cl100k_base",
              context_window=4096, input_pm=1000, output_pm=2000, endpoints=())
DONE = b"data: [DONE]\n\n"
END = b"0\r\n\r\n"  # the end of a chunked body
SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\n\r\n")


# --- what the upstream sends ----------------------------------------------------------------


def chunked(*events: bytes) -> bytes:
    """Events as one HTTP chunk."""
    data = b"".join(events)
    return b"%x\r\n%b\r\n" % (len(data), data)


def stream_reply(*events: bytes) -> bytes:
    """A whole SSE answer in one write: head, one chunk per event, the end."""
    return SSE_HEAD + b"".join(chunked(e) for e in events) + END


def json_reply(body: bytes | dict[str, Any], status: int = 200) -> bytes:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b" % (
        status, len(data), data)


def usage(prompt: int, completion: int) -> dict[str, int]:
    """vLLM's usage object, its fields in vLLM's order."""
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}


def sse(doc: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


def chat_chunk(content: str | None = None, *, index: int = 0, role: str | None = None,
               finish: str | None = None, tool_calls: list[dict[str, Any]] | None = None,
               used: tuple[int, int] | None = None, model: str = SERVED) -> bytes:
    """A chat.completion.chunk as vLLM serialises it (compact, usage last); ``used``:
    (prompt, completion) tokens so far, as with continuous_usage_stats."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    doc: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": model,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if used is not None:
        doc["usage"] = usage(*used)
    return sse(doc)


def text_chunk(text: str, *, finish: str | None = None, used: tuple[int, int] | None = None,
               model: str = SERVED) -> bytes:
    doc: dict[str, Any] = {
        "id": "cmpl-1", "object": "text_completion", "created": 7, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if used is not None:
        doc["usage"] = usage(*used)
    return sse(doc)


def usage_chunk(prompt: int, completion: int, model: str = SERVED) -> bytes:
    """The include_usage trailer: no choices, the total usage."""
    return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": model,
                "choices": [], "usage": usage(prompt, completion)})


def error_event(message: str, code: int = 400) -> bytes:
    """An error vLLM raised inside its stream generator."""
    return sse({"error": {"message": message, "type": "BadRequestError", "param": None, "code": code}})


# --- the upstream ---------------------------------------------------------------------------


@dataclass
class Upstream:
    """Answers each request with the next reply of ``replies``; records what it was sent."""

    url: str = ""
    replies: list[list[Step]] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    left: asyncio.Event = field(default_factory=asyncio.Event)  # the gateway closed a connection
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    client: UpstreamClient | None = None

    def reply(self, *steps: Step) -> None:
        self.replies.append(list(steps))

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(cluster="a", region="", url=self.url, weight=1, api_key=None)

    async def open(self, *, first_byte_timeout: float = 5.0, idle_timeout: float = 5.0,
                   path: str = "/v1/chat/completions") -> UpstreamResponse:
        """POST through the relay's own client; returns once the response head is in."""
        if self.client is None:
            self.client = UpstreamClient(Settings(first_byte_timeout=first_byte_timeout,
                                                  idle_timeout=idle_timeout, connect_timeout=2.0))
        return await self.client.post(self.endpoint, path, b'{"model":"org/M"}', "req-1")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):  # until the gateway closes it
                _, has_length, rest = head.lower().partition(b"content-length: ")
                length = int(rest.split(b"\r\n")[0]) if has_length else 0
                self.requests.append(head + await reader.readexactly(length))
                for step in self.replies.pop(0) if self.replies else [None]:
                    if step is None:
                        writer.close()
                        return
                    if isinstance(step, float):  # a pause; a read sees the gateway leave
                        with contextlib.suppress(TimeoutError):
                            if not await asyncio.wait_for(reader.read(1), step):
                                raise ConnectionResetError
                    else:
                        writer.write(step)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.left.set()
        writer.close()


@contextlib.asynccontextmanager
async def scripted_upstream() -> AsyncIterator[Upstream]:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        if upstream.client is not None:
            await upstream.client.close()
        server.close()
        for writer in upstream.writers:
            writer.close()
        await asyncio.sleep(0)


# --- the client -----------------------------------------------------------------------------


class Client:
    """An ASGI client: ``send`` records, ``receive`` reports a disconnect once the client
    left (after ``leave_after`` body messages, or when :meth:`leave` is called)."""

    def __init__(self, leave_after: int | None = None) -> None:
        self.messages: list[Message] = []
        self.leave_after = leave_after
        self._gone = asyncio.Event()

    async def send(self, message: Message) -> None:
        self.messages.append(dict(message))
        bodies = sum(m["type"] == "http.response.body" for m in self.messages)
        if self.leave_after is not None and bodies >= self.leave_after:
            self._gone.set()

    async def receive(self) -> Message:
        await self._gone.wait()
        return {"type": "http.disconnect"}

    def leave(self) -> None:
        self._gone.set()

    @property
    def status(self) -> int:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.messages
        return int(starts[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        return dict(starts[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages if m["type"] == "http.response.body")

    @property
    def ended(self) -> bool:
        """The response was completed (its last body message said no more)."""
        last = self.messages[-1] if self.messages else {}
        return last.get("type") == "http.response.body" and not last.get("more_body", False)

    @property
    def events(self) -> list[bytes]:
        return [e + b"\n\n" for e in self.body.split(b"\n\n") if e]

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass(slots=True)
class Held:
    """The reservation a relay runs under, as the relay sees it: where to read its progress
    (what a checkpoint records) and whether the reservation was found gone."""

    progress: Progress | None = None
    lost: bool = False


ADMISSION_HEADERS = [(b"x-ratelimit-limit-requests", b"60")]


def renamed(data: bytes) -> bytes:
    """What the client must see of upstream bytes: the public model name."""
    return data.replace(orjson.dumps(SERVED), orjson.dumps(PUBLIC))

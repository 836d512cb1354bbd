"""Small helpers for the plain ASGI handlers that serve /v1 (no framework on the hot path)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError, PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class ClientGone(Exception):
    """The client disconnected before the request body was read."""


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def with_header(send: Send, name: bytes, value: bytes) -> Send:
    """``send`` that adds one header to the response it starts."""

    async def send_with_header(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), (name, value)]
        await send(message)

    return send_with_header


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """Read the whole request body, refusing more than ``limit`` bytes early."""
    length = header(scope, b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadRequest("invalid Content-Length header") from None
        if declared > limit:
            raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(extra: list[tuple[bytes, bytes]] | None, request_id: str) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-request-id", request_id.encode())]
    if extra:
        headers.extend(extra)
    return headers


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    request_id: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete response: JSON by default."""
    all_headers = _headers(headers or JSON_HEADERS, request_id)
    all_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, payload: Any, request_id: str) -> None:
    await send_bytes(send, status, orjson.dumps(payload), request_id)


async def send_error(send: Send, error: GatewayError, request_id: str) -> None:
    """Answer a GatewayError as OpenAI does: its status, its headers, its JSON body."""
    extra = list(JSON_HEADERS)
    extra.extend((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    await send_bytes(send, error.status, error.body(), request_id, extra)


async def watch_disconnect(receive: Receive, task: asyncio.Task[object] | None) -> None:
    """Cancel ``task`` (a relay) when the client goes away (uvicorn's send() stays silent)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return


def uncancel() -> None:
    """Take back the cancellation :func:`watch_disconnect` requested (the relay ends itself)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()

"""uvicorn's HTTP/1.1 protocol with one socket write per event-loop pass.

uvicorn writes a response's head as soon as the application starts it and the body when
it sends it: two ``send()`` system calls for every non-streamed answer, and the client
wakes twice to read them. On loopback each write also wakes the reader, and on a busy
host that switch is the expensive part. Here the writes a connection makes during one
pass of the event loop are joined and written once, at the end of the pass: the head
and body of an answer leave together, as do stream chunks that arrive together.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: ``write`` queues, the queue is flushed once per loop pass."""

    __slots__ = ("_flush_scheduled", "_loop", "_queued", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._queued: list[bytes] = []
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._queued.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued (also before closing, so that nothing is left behind)."""
        self._flush_scheduled = False
        queued = self._queued
        if not queued:
            return
        self._queued = []
        if not self._transport.is_closing():
            self._transport.write(queued[0] if len(queued) == 1 else b"".join(queued))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._queued = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._queued))

    def __getattr__(self, name: str) -> Any:
        """Everything else (reading, flow control, extra info) is the transport's own."""
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]

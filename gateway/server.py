"""uvicorn's HTTP/1.1 protocol with one socket write per event-loop pass.

uvicorn writes a response's head as soon as the application starts it and the body when
it sends it: two ``send()`` system calls for every non-streamed answer, and the client
wakes twice to read them. On loopback each write also wakes the reader, and on a busy
host that switch is the expensive part. Here a write waits until a second one joins it
or the event loop's pass ends, whichever comes first: the head and body of an answer
leave together the moment the body is written, and stream chunks relayed in one pass
leave in pairs or with the pass's end.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """Wraps a transport: a write waits for a second one or the end of the loop pass."""

    __slots__ = ("_flush_scheduled", "_loop", "_queued", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._queued: list[bytes] = []
        self._flush_scheduled = False

    def write(self, data: bytes) -> None:
        if not data:
            return
        queued = self._queued
        queued.append(data)
        if len(queued) > 1:
            self.flush()  # a head and its body (or two chunks): nothing gains from waiting
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._end_of_pass)

    def _end_of_pass(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write what is queued (also before closing, so that nothing is left behind)."""
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

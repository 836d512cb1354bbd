"""uvicorn's HTTP/1.1 protocol with one socket write per event-loop pass.

uvicorn writes a response's head as soon as the application starts it and the body when
it sends it: two ``send()`` system calls for every non-streamed answer, and the client
wakes twice to read them. On loopback each write also wakes the reader, and on a busy
host that switch is the expensive part. Here the writes a connection makes during one
pass of the event loop are joined and written once, at the end of the pass: the head
and body of an answer leave together, as do stream chunks that arrive together.

It also holds clients to limits uvicorn does not have (issue #18: slowloris, header bombs):

* a request's line and headers must arrive within ``TOKENGATE_HEADER_TIMEOUT`` of the
  connection (first request) or of the request's first byte (later ones: the idle time
  between requests is uvicorn's ``timeout_keep_alive``), and may take at most
  ``TOKENGATE_MAX_HEADER_BYTES``: 408 or 431 beyond, then the connection is closed;
* a body may pause at most ``TOKENGATE_BODY_TIMEOUT`` between two reads: 408, closed; the
  request sees the client gone before its body was complete, so it was never admitted;
* a worker holds at most ``TOKENGATE_MAX_CONNECTIONS`` client connections: the ones beyond
  get a 503 at once, without being read, and are closed.

The timers cost the request path no timer handle: a connection notes the loop time when a
request's head starts, when it completes and at each body chunk (one float each), and one
sweep per worker and second compares those stamps for every open connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import error_body
from gateway.request_id import new_request_id

log = logging.getLogger("tokengate.server")

# After an error answer the connection is half-closed and what the client still sends is
# read and dropped for this long (or until it closes): closing at once with unread data
# would reset the connection, and the client might never read the answer.
LINGER_SECONDS = 2.0
# Phases of a connection, for the sweep: nothing timed (the application is answering, or
# uvicorn's keep-alive timer runs), a head expected or arriving, a body arriving.
_UNTIMED, _HEAD, _BODY = 0, 1, 2


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

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._queued = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._queued))

    def __getattr__(self, name: str) -> Any:
        """Everything else (reading, flow control, extra info) is the transport's own."""
        return getattr(self._transport, name)


@dataclass(frozen=True)
class ClientLimits:
    """What a client connection may take; from the environment (gateway/settings.py)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 4096


@functools.cache
def client_limits() -> ClientLimits:
    """Read once per worker process."""
    from gateway.settings import Settings

    settings = Settings()
    limits = ClientLimits(
        settings.header_timeout, settings.body_timeout, settings.max_header_bytes, settings.max_connections
    )
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < limits.max_connections + 256:
        log.warning(
            "TOKENGATE_MAX_CONNECTIONS=%d but this process may open only %d files "
            "(ulimit -n): raise the limit, or connections beyond it fail to be accepted",
            limits.max_connections,
            soft,
        )
    return limits


class _HeadTooLarge(Exception):
    """Raised from a parser callback: stops the parser at once."""


def _answer(
    status: int, message: str, code: str, default_headers: list[tuple[bytes, bytes]], extra: bytes = b""
) -> bytes:
    """A whole ``connection: close`` answer with the gateway's JSON error body."""
    error_type = "service_unavailable" if status == 503 else "invalid_request_error"
    body = error_body(message, error_type, code)
    head = [STATUS_LINE[status]]
    for name, value in default_headers:
        head += [name, b": ", value, b"\r\n"]
    head += [
        b"content-type: application/json\r\ncontent-length: ",
        str(len(body)).encode(),
        b"\r\nx-request-id: ",
        new_request_id().encode(),
        b"\r\n",
        extra,
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(head)


class _Sweep:
    """One per worker: every ``interval`` seconds, each connection's deadline is checked."""

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any], limits: ClientLimits) -> None:
        self.loop = loop
        self.connections = connections
        self.limits = limits
        # Deadlines are kept to within a quarter of the shortest timeout (a second at most).
        self.interval = min(1.0, limits.header_timeout / 4, limits.body_timeout / 4)
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(self.interval, self.run)

    def run(self) -> None:
        self.handle = None
        now = self.loop.time()
        head_timeout, body_timeout = self.limits.header_timeout, self.limits.body_timeout
        for connection in list(self.connections):
            if isinstance(connection, GatewayHttpProtocol):
                try:
                    connection.check_deadline(now, head_timeout, body_timeout)
                except Exception:  # one broken connection must not stop the sweep
                    log.exception("connection deadline check failed")
                    connection.transport.close()
        if self.connections:
            self.start()


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`CoalescingTransport`, with the
    header and body timeouts, header size bound and connection bound of the module's doc."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = client_limits()
        self._max_head = self.limits.max_header_bytes
        self._phase = _UNTIMED
        self._stamp = 0.0  # loop time of the last progress of the phase
        self._in_head = False  # a head has begun and is not complete
        self._head_fresh = False  # ... and began in the chunk being read
        self._head_bytes = 0  # request line and headers parsed so far
        self._head_raw = 0  # bytes of whole chunks read inside a head
        self._dropping = False  # answered and half-closed: input is read and dropped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        coalescing = CoalescingTransport(transport, self.loop)
        super().connection_made(coalescing)  # type: ignore[arg-type]
        self._phase = _HEAD  # the first head is due within the header timeout of the connection
        self._stamp = self.loop.time()
        sweep: _Sweep | None = getattr(self.server_state, "tokengate_sweep", None)
        if sweep is None or sweep.loop is not self.loop:
            sweep = _Sweep(self.loop, self.connections, self.limits)
            self.server_state.tokengate_sweep = sweep  # type: ignore[attr-defined]
        sweep.start()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Beyond the worker's bound: a 503 at once, never read, closed (not counted). The answer
        lingers like the others unless refusals pile up (then the connection is closed at once)."""
        self.transport = transport
        self._dropping = True
        _refusals.note(self.limits.max_connections)
        transport.write(
            _answer(
                503,
                "too many connections to this gateway worker; retry shortly",
                "too_many_connections",
                self.server_state.default_headers,
                b"retry-after: 1\r\n",
            )
        )
        if _refusals.lingering >= max(64, self.limits.max_connections // 8):
            transport.close()  # a flood: no lingering, the bound on descriptors comes first
            return
        _refusals.lingering += 1
        self._linger(transport)
        self.loop.call_later(LINGER_SECONDS, _refusals.lingered)

    def _linger(self, transport: Any) -> None:
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self.loop.call_later(LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._dropping:
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._head_too_large()
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_head:  # a head spans chunks: bound what the parser buffers of it
            if self._head_fresh:
                self._head_fresh = False  # began in this chunk: the callbacks counted its part
            else:
                self._head_raw += len(data)
                if self._head_raw > self._max_head:
                    self._head_too_large()

    def _head_too_large(self) -> None:
        self._fail(
            431,
            f"the request line and headers exceed {self._max_head} bytes",
            "request_header_fields_too_large",
            current=False,
        )

    def _fail(self, status: int, message: str, code: str, *, current: bool) -> None:
        """Answer ``status`` and close. ``current``: the request being read is the cycle's (a body
        timeout); otherwise the cycle (if any) is an earlier request's."""
        self._dropping = True
        self._phase = _UNTIMED
        self._in_head = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started or not current:  # an answer is (or must first be) under way
                self.transport.close()
                return
            cycle.disconnected = True  # the application sees the client gone
            cycle.message_event.set()
        self.transport.write(_answer(status, message, code, self.server_state.default_headers))
        self._linger(self.transport)

    def check_deadline(self, now: float, head_timeout: float, body_timeout: float) -> None:
        """Called by the sweep: close what overstayed its phase."""
        phase = self._phase
        if phase == _UNTIMED:
            cycle = self.cycle
            if (
                cycle is not None
                and cycle.response_complete
                and self.timeout_keep_alive_task is None
                and not self.pipeline
                and not self.transport.is_closing()
            ):
                # Bytes came after the keep-alive timer was cancelled but began no request
                # (blank lines): time them as a head.
                self._phase, self._stamp = _HEAD, now
            return
        if self.transport.is_closing():
            return
        if phase == _HEAD:
            if now - self._stamp <= head_timeout:
                return
            if self.flow.read_paused:  # the gateway is not reading: not the client's fault
                self._stamp = now
            elif self._in_head:
                self._fail(
                    408,
                    f"the request's headers did not arrive within {head_timeout:g} s",
                    "request_timeout",
                    current=False,
                )
            else:
                self._phase = _UNTIMED
                self.transport.close()  # connected and silent: nothing to answer
        elif phase == _BODY and now - self._stamp > body_timeout:
            cycle = self.cycle
            if cycle.response_complete:  # answered without reading the body; the rest never came
                self._phase = _UNTIMED
                self.transport.close()
            elif self.flow.read_paused or cycle.waiting_for_100_continue or cycle.response_started:
                self._stamp = now  # the gateway holds things up (or is answering): not the client
            else:
                self._fail(
                    408,
                    f"the request body paused for more than {body_timeout:g} s",
                    "request_timeout",
                    current=True,
                )

    # Parser callbacks (uvicorn's own, with the bookkeeping above)
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_fresh = True
        self._head_bytes = self._head_raw = 0
        if self._phase != _HEAD:  # a later request on the connection: its head is timed from now
            self._phase = _HEAD
            self._stamp = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._max_head:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._max_head:
            raise _HeadTooLarge
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._phase = _BODY
        self._stamp = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._stamp = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._phase = _UNTIMED
        super().on_message_complete()


class _Refusals:
    """Refused connections, logged at most every ten seconds (a flood must not flood the log)."""

    def __init__(self) -> None:
        self.count = 0
        self.logged = 0.0
        self.lingering = 0  # refused in the last LINGER_SECONDS, still reading and dropping

    def lingered(self) -> None:
        self.lingering -= 1

    def note(self, bound: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged >= 10.0:
            log.warning(
                "refused %d connection(s): this worker holds TOKENGATE_MAX_CONNECTIONS=%d", self.count, bound
            )
            self.count, self.logged = 0, now


_refusals = _Refusals()

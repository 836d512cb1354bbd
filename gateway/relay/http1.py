"""A lean HTTP/1.1 client to the upstreams: the relay's POSTs and the routing monitor's
GETs (``/health``, ``/metrics``), on one keep-alive pool.

aiohttp was the costliest part of the request path (about a fifth of the gateway's CPU per
request: request objects, header multidicts, payload writers, stream readers, timers). The
relay needs very little of it: POST a JSON body, get the status, then the body bytes as they
come (chunked or not), and either give the connection back or abort the upstream request.
This module does exactly that on an ``asyncio.Protocol`` with httptools' parser (the one
uvicorn uses), writes each request in one ``write``, and keeps one lazily re-armed timer per
connection for its deadlines instead of a timeout context per read. (The monitor's GETs
moved here too: aiohttp cost each worker 10 MB of memory for them.)

Errors are ``OSError`` subclasses, so callers tell them apart by class:
:class:`UpstreamConnectError` (refused, unreachable, connect timeout: safe to retry
elsewhere), :class:`TimeoutError` (connected, then silent too long), and
:class:`UpstreamClosed` (the connection broke or the response was malformed).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024  # buffered body bytes before reading from the upstream pauses
KEEPALIVE_S = 4.0  # idle pooled connections older than this are closed (uvicorn's default is 5)
_POST = (b"POST %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
         b"Content-Length: %d\r\n%s\r\n")
_GET = b"GET %s%s HTTP/1.1\r\nHost: %s\r\n\r\n"


class UpstreamConnectError(ConnectionError):
    """No connection could be made: nothing was sent, another endpoint may be tried."""


class UpstreamClosed(ConnectionError):
    """The connection broke (or spoke broken HTTP) before the response was complete."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an endpoint's requests go: address, TLS, and the bytes every request repeats."""

    host: str
    port: int
    tls: bool
    base_path: str
    host_header: bytes

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if tls else 80)
        return cls(host, port, tls, parts.path.rstrip("/"), (parts.netloc or host).encode("idna"))


class _Connection(asyncio.Protocol):
    """One socket to one upstream; carries one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> None:
        self.loop = loop
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.error: BaseException | None = None
        self.lost = False
        self.received = False  # any response byte on the current request
        self.waiter: asyncio.Future[None] | None = None
        self.headers_in = False
        self.paused = False
        self.deadline_s = 0.0  # silence allowed before the waiter fails with TimeoutError
        self.last_io = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.waited = 0.0  # seconds this request spent waiting on the upstream (connect included)

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.last_io = self.loop.time()
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamClosed("upstream answered with a protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamClosed(f"upstream sent malformed HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.cancel_timer()
        if not self.complete:
            reason = f": {exc}" if exc else ""
            self._fail(UpstreamClosed(f"upstream closed the connection{reason}"))

    # --- httptools callbacks ---------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_in = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self.cancel_timer()
        self._wake()

    # --- what the response uses ------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.abort()

    async def wait(self) -> None:
        """Until the parser has something new (or the deadline passes)."""
        if self.error is not None:
            raise self.error
        loop = self.loop
        self.waiter = loop.create_future()
        if self.timer is None:
            self.timer = loop.call_at(self.last_io + self.deadline_s, self._on_timer)
        started = loop.time()
        try:
            await self.waiter
        finally:
            self.waiter = None
            self.waited += loop.time() - started

    def _on_timer(self) -> None:
        """Fail the waiter after ``deadline_s`` of silence; otherwise check again later."""
        self.timer = None
        if self.complete or self.lost:
            return
        due = self.last_io + self.deadline_s
        if self.loop.time() < due:
            self.timer = self.loop.call_at(due, self._on_timer)
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError(f"upstream silent for {self.deadline_s:g}s"))
        else:
            self.timer = self.loop.call_at(self.loop.time() + self.deadline_s, self._on_timer)

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reset(self) -> None:
        """Ready for the next request on this connection."""
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.chunks = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.headers_in = False
        self.cancel_timer()

    def usable(self, now: float) -> bool:
        return (not self.lost and self.error is None and self.transport is not None
                and not self.transport.is_closing() and now - self.idle_since < KEEPALIVE_S)

    def abort(self) -> None:
        self.cancel_timer()
        if self.transport is not None:
            self.transport.abort()


class UpstreamResponse:
    """A response whose status is known; its body is read with :meth:`read_some` or :meth:`read`.

    End it with :meth:`release` (the connection goes back to the pool when the body ended
    cleanly) or :meth:`close` (aborts the upstream request: a vLLM server stops generating).
    """

    __slots__ = ("_conn", "_done", "_pool", "status")

    def __init__(self, conn: _Connection, pool: Http1Pool, idle_timeout: float) -> None:
        self._conn = conn
        self._pool = pool
        self._done = False
        self.status = conn.status
        conn.deadline_s = idle_timeout
        conn.cancel_timer()  # the first-byte deadline's timer; the next wait arms the idle one

    @property
    def waited(self) -> float:
        """Seconds spent waiting on the upstream so far: connecting, then for each byte."""
        return self._conn.waited

    async def read_some(self) -> bytes:
        """The body bytes that arrived since the last call; ``b""`` once the body has ended.

        Raises TimeoutError after the idle timeout without a byte, UpstreamClosed if the
        connection breaks first.
        """
        conn = self._conn
        while not conn.chunks:
            if conn.complete:
                return b""
            await conn.wait()
        return conn.take()

    async def read(self) -> bytes:
        """The whole body. The caller wants it all at once, so the high-water mark does not
        apply: what is buffered is taken, which resumes reading (a large embeddings answer
        would otherwise wait paused until the idle timeout)."""
        conn = self._conn
        parts: list[bytes] = []
        while not conn.complete:
            if conn.paused:
                parts.append(conn.take())
            await conn.wait()
        parts.append(conn.take())
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self) -> None:
        if self._done:
            return
        self._done = True
        conn = self._conn
        if conn.complete and conn.keep_alive and not conn.chunks and conn.error is None:
            self._pool.put_back(conn)
        else:
            conn.abort()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._conn.abort()


class Http1Pool:
    """Keep-alive connections per origin; unlimited, like the aiohttp connector it replaces."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False

    def origin(self, url: str) -> Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = self._origins[url] = Origin.of(url)
        return origin

    async def post(
        self,
        url: str,
        path: str,
        body: bytes,
        extra_headers: bytes,
        *,
        first_byte_timeout: float,
        idle_timeout: float,
    ) -> UpstreamResponse:
        """POST ``body`` to ``url + path``; returns once the response's status line is in.

        ``extra_headers`` are complete header lines (``b"Name: value\\r\\n"`` each). A pooled
        connection that turns out to be closed before any response byte is replaced by a
        fresh one once (the server timed it out between requests).
        """
        origin = self.origin(url)
        request = _POST % (origin.base_path.encode(), path.encode(), origin.host_header,
                           len(body), extra_headers) + body
        return await self._exchange(origin, request, first_byte_timeout, idle_timeout)

    async def get(self, url: str, path: str, timeout: float) -> tuple[int, bytes]:
        """GET ``url + path`` (a health probe, a metrics scrape): status and whole body,
        within ``timeout`` seconds in all."""
        origin = self.origin(url)
        request = _GET % (origin.base_path.encode(), path.encode(), origin.host_header)
        async with asyncio.timeout(timeout):
            response = await self._exchange(origin, request, timeout, timeout)
            try:
                return response.status, await response.read()
            finally:
                response.release()  # aborts the connection unless the body ended cleanly

    async def _exchange(self, origin: Origin, request: bytes, first_byte_timeout: float,
                        idle_timeout: float) -> UpstreamResponse:
        """Write ``request`` on a pooled (else new) connection; return once the status is in."""
        loop = asyncio.get_running_loop()
        for attempt in (0, 1):
            started = loop.time()
            conn, reused = await self._acquire(origin, fresh=attempt > 0)
            conn.deadline_s = first_byte_timeout
            conn.last_io = now = loop.time()
            conn.waited = now - started
            assert conn.transport is not None
            conn.transport.write(request)
            try:
                while not conn.headers_in:
                    await conn.wait()
            except UpstreamClosed:
                conn.abort()
                if reused and not conn.received:
                    continue
                raise
            except BaseException:
                conn.abort()
                raise
            return UpstreamResponse(conn, self, idle_timeout)
        raise AssertionError("unreachable")

    async def _acquire(self, origin: Origin, *, fresh: bool) -> tuple[_Connection, bool]:
        if not fresh:
            idle = self._idle.get(origin)
            if idle:
                now = asyncio.get_running_loop().time()
                while idle:
                    conn = idle.pop()
                    if conn.usable(now):
                        return conn, True
                    conn.abort()
        return await self._connect(origin), False

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, origin), origin.host, origin.port, ssl=context)
        except TimeoutError:
            raise UpstreamConnectError(
                f"no connection to {origin.host}:{origin.port} within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return conn

    def put_back(self, conn: _Connection) -> None:
        if self._closed or conn.lost:
            conn.abort()
            return
        conn.reset()
        conn.idle_since = conn.loop.time()
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = collections.deque()
        idle.append(conn)

    def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().abort()
        self._idle.clear()

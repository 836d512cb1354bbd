"""An auto-pipelining Redis connection on hiredis, for the request path.

redis-py spends ~45 us of Python per command (connection checkout, encoding, parsing,
release). The request path needs few commands (a GET, three scripts), so this connection
keeps it lean: commands issued during one event-loop pass are written to one socket in
one write, replies are parsed by hiredis and handed to their futures in order. Redis
answers in order on a connection, so no bookkeeping beyond a queue is needed.

Failures are loud and fast: a lost connection fails every command in flight with
``ConnectionError`` (the caller fails closed), a Redis that stops answering for
``timeout`` seconds is disconnected, and the next command reconnects.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
from redis import exceptions as rx
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = bytes | str | int

# Error replies that mean "not now" (loading, failed over, slot moving, cluster down, out of
# memory), raised as redis-py raises them, so one list of errors (UNAVAILABLE) serves both
# clients; any other error reply (WRONGTYPE, a script's own error) stays a ResponseError.
_TYPED_REPLIES: dict[str, type[rx.RedisError]] = {
    "LOADING": rx.BusyLoadingError,
    "READONLY": rx.ReadOnlyError,
    "TRYAGAIN": rx.TryAgainError,
    "CLUSTERDOWN": rx.ClusterDownError,
    "MASTERDOWN": rx.MasterDownError,
    "OOM": rx.OutOfMemoryError,
}


def reply_error(message: str) -> rx.RedisError:
    """The exception for an error reply, typed by its first word as redis-py types it."""
    return _TYPED_REPLIES.get(message.partition(" ")[0], ResponseError)(message)


def encode(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: ``*N`` then a bulk string per argument (hiredis, in C)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: a 1-tuple
    return packed


class _Protocol(asyncio.Protocol):
    """Owns the socket; matches replies to the futures waiting for them, in order."""

    def __init__(self, on_lost: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.outbox: list[bytes] = []
        self.flush_scheduled = False
        self.reader = hiredis.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            future = waiting.popleft()[0]
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply_error(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        error = RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}")
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(error)
        self._on_lost(self)


def _flush(protocol: _Protocol) -> None:
    """Write every command queued during this event-loop pass in one write."""
    protocol.flush_scheduled = False
    outbox, protocol.outbox = protocol.outbox, []
    if protocol.transport is not None and not protocol.transport.is_closing():
        protocol.transport.write(b"".join(outbox))


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    """TLS as redis-py sets it up from a ``rediss://`` URL's query."""
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    required = query.get("ssl_cert_reqs", "required").lower()
    if required not in ("none", "optional", "required"):
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {required!r}")
    if required != "required":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE if required == "none" else ssl.CERT_OPTIONAL
    return context


class PipelinedConnection:
    """One connection to one Redis server; safe to share by all tasks of one event loop."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout: float = 2.0, unix_path: str | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.db = host, port, db
        self.unix_path = unix_path  # a Unix socket instead of host and port
        self.tls = tls
        self.username, self.password = username, password
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    @classmethod
    def from_url(cls, url: str, timeout: float = 2.0) -> PipelinedConnection:
        """The URLs redis-py takes: ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://`` (TLS) and ``unix://[[user]:password@]/path.sock``; ``?db=N`` and
        ``?password=...`` as query parameters too, and for TLS ``?ssl_ca_certs=<CA file>``
        and ``?ssl_cert_reqs=none|optional|required`` (default: required)."""
        parts = urlparse(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"REDIS_URL must start with redis://, rediss:// or unix://, not {url!r}")
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        path_db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
        password = unquote(parts.password) if parts.password else query.get("password")
        return cls(parts.hostname or "127.0.0.1", parts.port or 6379,
                   db=int(path_db or query.get("db") or 0),
                   username=unquote(parts.username) if parts.username else query.get("username"),
                   password=password, timeout=timeout,
                   unix_path=parts.path if parts.scheme == "unix" else None,
                   tls=_tls_context(query) if parts.scheme == "rediss" else None)

    async def execute(self, *args: Arg) -> Any:
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, encode(args))

    async def execute_keyed(self, key: Arg, *args: Arg) -> Any:
        """As :meth:`execute`; ``key`` only matters to a cluster client (routing)."""
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, encode(args))

    async def execute_asking(self, *args: Arg) -> Any:
        """ASKING then the command, back to back on this connection (cluster redirects)."""
        protocol = self._protocol or await self._connect()
        asking = self._send(protocol, encode(("ASKING",)))
        reply = self._send(protocol, encode(args))
        await asking
        return await reply

    @staticmethod
    def _send(protocol: _Protocol, command: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append((future, time.monotonic()))
        protocol.outbox.append(command)
        if not protocol.flush_scheduled:
            protocol.flush_scheduled = True
            loop.call_soon(_flush, protocol)
        return future

    async def _connect(self) -> _Protocol:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        protocol: _Protocol | None = None
        try:
            async with asyncio.timeout(self.timeout):
                _, protocol = await self._open(loop)
                setup = []
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    setup.append(self._send(protocol, encode(("AUTH", *auth))))
                if self.db:
                    setup.append(self._send(protocol, encode(("SELECT", self.db))))
                for step in setup:
                    await step
        except (OSError, TimeoutError, rx.RedisError) as exc:  # incl. LOADING, a wrong password
            if protocol is not None and protocol.transport is not None:
                protocol.transport.close()
            where = self.unix_path or f"{self.host}:{self.port}"
            error = RedisConnectionError(f"cannot connect to Redis at {where}: {exc}")
            self._connecting.set_exception(error)
            self._connecting.exception()  # retrieved: waiters get it via shield
            self._connecting = None
            raise error from exc
        self._protocol = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        self._arm_watchdog(loop)
        return protocol

    def _open(self, loop: asyncio.AbstractEventLoop) -> Coroutine[Any, Any, tuple[Any, _Protocol]]:
        factory = functools.partial(_Protocol, self._lost)
        if self.unix_path is not None:
            return loop.create_unix_connection(factory, self.unix_path)
        return loop.create_connection(factory, self.host, self.port, ssl=self.tls)

    def _arm_watchdog(
        self, loop: asyncio.AbstractEventLoop, suspect: asyncio.Future[Any] | None = None
    ) -> None:
        """Disconnect when the oldest command waits longer than ``timeout`` (a hung Redis).

        A late command is only a suspect at first: after a stall of the event loop itself
        its answer may be sitting unread in the socket (libuv runs timers before polling),
        so the verdict waits one more pass of the loop, which reads the socket first.
        """
        protocol = self._protocol
        if protocol is None:
            return
        oldest = protocol.waiting[0] if protocol.waiting else None
        late = oldest is not None and time.monotonic() - oldest[1] > self.timeout
        if late and oldest is not None and oldest[0] is not suspect:
            self._watchdog = loop.call_later(0.01, self._arm_watchdog, loop, oldest[0])
            return
        if late:
            for future, _ in protocol.waiting:
                if not future.done():
                    future.set_exception(RedisTimeoutError("Redis did not answer in time"))
            if protocol.transport is not None:
                protocol.transport.abort()
            return
        self._watchdog = loop.call_later(min(self.timeout / 4, 0.25), self._arm_watchdog, loop)

    def _lost(self, protocol: _Protocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
            if self._watchdog is not None:
                self._watchdog.cancel()

    async def aclose(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

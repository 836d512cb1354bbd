"""``/v1/me*`` and ``/v1/packages`` at the public base URL, answered by the control plane.

Self-service reads the SQL ledger (usage history, orders, codes), and the data plane never
touches SQL. So these few requests are forwarded as they came to ``TOKENGATE_CONTROL_URL``
(the control plane serves the same paths) and its answer is streamed back: one
implementation of self-service, at the URL customers already use. It is not the token
path, so a plain connection per request (no pool) is enough.

The body is bounded before it is forwarded; only the headers self-service needs go along,
and the client's address is set here (``X-Forwarded-For``), never taken from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import httptools

from gateway.asgi import ClientGone, Receive, Scope, Send, read_body, send_error
from gateway.errors import GatewayError, ServiceUnavailable, UpstreamError, UpstreamTimeout

PATHS = ("/v1/me", "/v1/packages")
_FORWARDED_REQUEST_HEADERS = frozenset({
    b"authorization", b"content-type", b"accept", b"accept-language", b"user-agent",
    b"x-client-request-id", b"idempotency-key",
})
_DROPPED_RESPONSE_HEADERS = frozenset({
    b"connection", b"keep-alive", b"transfer-encoding", b"x-request-id", b"server", b"date",
})
_READ_SIZE = 65536


def is_self_service(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PATHS)


class SelfServiceForwarder:
    """Forwards one self-service request to the control plane and relays its answer."""

    def __init__(self, control_url: str | None, max_body_bytes: int, timeout: float = 30.0) -> None:
        self._control = urlsplit(control_url) if control_url else None
        self._limit = max_body_bytes
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        try:
            body = await read_body(scope, receive, self._limit)
            if self._control is None:
                raise ServiceUnavailable(
                    "self-service is not configured on this gateway: set TOKENGATE_CONTROL_URL "
                    "to the control plane's URL", code="control_plane_unconfigured")
            await self._forward(scope, body, send, request_id)
        except GatewayError as error:
            await send_error(send, error, request_id)
        except ClientGone:
            return

    async def _forward(self, scope: Scope, body: bytes, send: Send, request_id: str) -> None:
        control = self._control
        assert control is not None
        tls = control.scheme == "https"
        host, port = control.hostname or "127.0.0.1", control.port or (443 if tls else 80)
        try:
            async with asyncio.timeout(self._timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls or None)
        except (OSError, TimeoutError):
            raise ServiceUnavailable("the control plane (self-service) cannot be reached; try again",
                                     code="control_plane_unavailable", headers={"Retry-After": "5"}) from None
        try:
            writer.write(self._request(scope, body, request_id, control.netloc.encode()))
            await self._relay(reader, send, request_id)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _request(self, scope: Scope, body: bytes, request_id: str, host: bytes) -> bytes:
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        lines = [b"%s %s HTTP/1.1" % (scope["method"].encode(), target), b"Host: " + host,
                 b"Connection: close", b"Content-Length: %d" % len(body),
                 b"X-Request-Id: " + request_id.encode()]
        client = scope.get("client")
        if client:
            lines.append(b"X-Forwarded-For: " + str(client[0]).encode())
        for name, value in scope["headers"]:
            if name in _FORWARDED_REQUEST_HEADERS and b"\r" not in value and b"\n" not in value:
                lines.append(bytes(name) + b": " + bytes(value))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    async def _relay(self, reader: asyncio.StreamReader, send: Send, request_id: str) -> None:
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        started = False
        while not answer.complete:
            try:
                async with asyncio.timeout(self._timeout):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                if started:
                    return  # the client got a head; ending the body early is all that is left
                raise UpstreamTimeout("the control plane did not answer in time") from None
            except OSError:
                data = b""
            if not data:
                if started:  # a body delimited by the connection's close ends here
                    break
                raise UpstreamError("the control plane closed the connection before answering")
            try:
                parser.feed_data(data)
            except httptools.HttpParserError:
                if started:
                    return
                raise UpstreamError("the control plane sent a malformed answer") from None
            if answer.headers_done and not started:
                started = True
                headers = [(b"x-request-id", request_id.encode())]
                headers += [(k, v) for k, v in answer.headers if k not in _DROPPED_RESPONSE_HEADERS]
                await send({"type": "http.response.start", "status": parser.get_status_code(),
                            "headers": headers})
            if started and answer.body:
                chunk, answer.body = b"".join(answer.body), []
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class _Answer:
    """httptools callbacks: the head, then the body as it comes."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

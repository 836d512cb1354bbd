"""The admin API's door: the credential is checked and the body bounded before any of it is read;
every write is recorded in the audit log, with its outcome, before its answer ends.

FastAPI reads (and parses) a request body before it runs the dependencies that check the
credential, so an anonymous client could make it hold any body it sends. This guard answers
401 from the headers alone, 413 from a declared Content-Length, reads what remains up to the
limit itself, and hands FastAPI the body from memory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from gateway.contract import (
    ASGIApp,
    AuthenticationFailed,
    ClientGone,
    GatewayError,
    Message,
    Receive,
    Scope,
    Send,
    bearer_token,
    is_admin,
    read_body,
    send_error,
    with_header,
)

AuditWrite = Callable[[str, str, int, bytes], Awaitable[None]]  # method, path, status, body
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
log = logging.getLogger("tokengate.control")


class AdminGuard:
    __slots__ = ("_admin_key", "_app", "_audit", "_limit")

    def __init__(
        self, app: ASGIApp, admin_key: str | None, limit: int, audit: AuditWrite | None = None
    ) -> None:
        self._app = app
        self._admin_key = admin_key
        self._limit = limit
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        if not is_admin(bearer_token(scope), self._admin_key):
            error = AuthenticationFailed("admin credential required", code="invalid_admin_key")
            await send_error(send, error, request_id)
            return
        try:
            body = await read_body(scope, receive, self._limit)
        except GatewayError as error:  # 413, or an invalid Content-Length
            await send_error(send, error, request_id)
            return
        except ClientGone:
            return
        send = with_header(send, b"x-request-id", request_id.encode())
        if self._audit is None or scope["method"] not in WRITES:
            await self._app(scope, replay_body(body, receive), send)
            return
        status, logged = 0, False

        async def logging_send(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not logged:
                logged = True  # before the answer ends: a client that saw it finds it logged
                await self._log(scope, status, body)
            await send(message)

        try:
            await self._app(scope, replay_body(body, receive), logging_send)
        finally:
            if not logged:
                await self._log(scope, status, body)

    async def _log(self, scope: Scope, status: int, body: bytes) -> None:
        """One audit line; a log that cannot be written is reported, not raised."""
        assert self._audit is not None
        try:
            await self._audit(scope["method"], scope["path"], status, body)
        except Exception:
            log.exception("the audit log could not record %s %s", scope["method"], scope["path"])


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives the body read already, then waits on the client as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

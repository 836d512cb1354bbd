"""The admin API's door: the credential is checked and the body bounded before any of it is read.

FastAPI reads (and parses) a request body before it runs the dependencies that check the
credential, so an anonymous client could make it hold any body it sends. This guard answers
401 from the headers alone, 413 from a declared Content-Length, reads what remains up to the
limit itself, and hands FastAPI the body from memory.
"""

from __future__ import annotations

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


class AdminGuard:
    __slots__ = ("_admin_key", "_app", "_limit")

    def __init__(self, app: ASGIApp, admin_key: str | None, limit: int) -> None:
        self._app = app
        self._admin_key = admin_key
        self._limit = limit

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
        await self._app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that gives the body read already, then waits on the client as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay

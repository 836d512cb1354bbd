"""The control plane's ASGI application (``tokengate control``): the admin API, self-service
that reads the ledger, and room for webhooks and the console.

FastAPI gives these routes validation and an OpenAPI schema; none of it is on the token
path, which is the data plane's (``gateway/``). The process holds no state of its own
beyond its connections (the ledger in SQL, balances and keys in Redis), so two replicas
can run behind one load balancer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from billing import audit
from billing.service import Billing
from control import admin, console, endpoints, health, me, pay, webhooks
from control.admin_key import weakness
from control.client_address import request_bucket
from control.guard import AdminGuard, replay_body
from control.payments import provider_from
from gateway.contract import (
    BadRequest,
    ClientGone,
    GatewayError,
    NotFound,
    Receive,
    Scope,
    Send,
    Settings,
    connect_redis,
    error_body,
    error_type_for,
    new_request_id,
    open_key_authenticator,
    read_body,
    send_error,
    settle_heap,
    with_header,
)

log = logging.getLogger("tokengate.control")
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")  # what a 405's Allow may name


class ControlApp:
    """``/admin*`` through the admin door (credential and body bound first), the rest to FastAPI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        provider = provider_from(settings)  # a provider without its settings: refuse to start

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            redis = connect_redis(settings.redis_url)
            authenticator, close_authenticator = open_key_authenticator(settings)
            app.state.settings = settings
            app.state.redis = redis
            app.state.authenticator = authenticator
            app.state.billing = Billing.build(settings.database_url, redis, provider=provider,
                                              order_ttl_s=settings.order_ttl_s)
            await app.state.billing.prepare()  # migrates an embedded ledger; never blocks on PostgreSQL
            settle_heap()
            try:
                yield
            finally:
                await app.state.billing.close()
                await close_authenticator()
                await redis.aclose()

        # The schema and its docs are admin routes (behind the admin credential), not
        # FastAPI's public defaults.
        self.api = FastAPI(title="tokengate control plane", lifespan=lifespan, docs_url=None,
                           openapi_url=None, redoc_url=None)
        # The client's address for billing's limits per address (failed API keys on /v1/me):
        # X-Forwarded-For believed from TOKENGATE_TRUSTED_PROXIES only (the data plane).
        self.api.state.client_bucket = request_bucket
        self.api.include_router(health.router)
        self.api.include_router(admin.router)
        self.api.include_router(endpoints.router)
        self.api.include_router(me.router)
        self.api.include_router(webhooks.router)
        self.api.include_router(pay.router)
        console.install(self.api)
        self.api.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
        self.api.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
        self.api.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        weak = weakness(admin_key)
        if weak is not None:  # accepted (a local trial needs no ceremony), never silently
            log.warning("warning: TOKENGATE_ADMIN_KEY is weak: %s; anyone who guesses it is the "
                        "admin. Make one with: openssl rand -base64 32", weak)
        self.admin_guard = AdminGuard(self.api, admin_key, settings.max_body_bytes, self._audit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.api(scope, receive, send)
            return
        request_id = new_request_id()
        nul = nul_in_url(scope)
        if nul is not None:
            await send_error(send, nul, request_id)
            return
        if scope["path"].startswith("/admin"):
            await self.admin_guard(scope, receive, send, request_id)
            return
        try:  # bounded before FastAPI reads it, as at the admin door
            body = await read_body(scope, receive, self.settings.max_body_bytes)
        except GatewayError as error:
            await send_error(send, error, request_id)
            return
        except ClientGone:
            return
        send = with_header(send, b"x-request-id", request_id.encode())
        await self.api(scope, replay_body(body, receive), send)

    async def _audit(self, method: str, path: str, status: int, body: bytes) -> None:
        """An admin write, once answered: who (the admin credential), what, when, the outcome."""
        billing: Billing = self.api.state.billing
        await audit.record_now(billing.engine, at_ms=billing.clock(), actor="admin",
                               action=f"{method} {path}"[:64], target=path,
                               detail={"status": status, "body": audit.body_detail(body)})


async def _gateway_error(request: Request, error: GatewayError) -> Response:
    return Response(error.body(), status_code=error.status, headers=error.headers,
                    media_type="application/json")


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    """FastAPI's 422, in the same ``{"error": {...}}`` shape as every other error."""
    problems, params = [], []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("body", "query", "path"))
        params.append(where)
        problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    body = error_body("; ".join(problems) or "invalid request", error_type_for(422), "invalid_request",
                      next((p for p in params if p), None))
    return Response(body, status_code=422, media_type="application/json")


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own errors (unknown route, wrong method) in OpenAI's shape."""
    message = error.detail if isinstance(error.detail, str) else "request refused"
    headers = error.headers
    if error.status_code == 404:
        message = f"Unknown route {request.method} {request.url.path}"
    elif error.status_code == 405:
        message = f"{request.url.path} does not accept {request.method}"
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return Response(error_body(message, error_type_for(error.status_code)), status_code=error.status_code,
                    headers=headers, media_type="application/json")


def nul_in_url(scope: Scope) -> GatewayError | None:
    """The answer to a NUL character in the URL. PostgreSQL's text holds none, so an id or a
    filter with one would fail the ledger's statement (a 500, on any route, /pay's too): in
    the path it names nothing (404, as an id that is never ours), in the query it is no
    value of any parameter (400)."""
    if "\x00" in scope["path"]:
        return NotFound("no route or id has a NUL character in it")
    if b"%00" in scope["query_string"]:
        return BadRequest("a query parameter holds a NUL character (%00)", code="invalid_url")
    return None


def allowed_methods(request: Request) -> list[str]:
    """Every method the routes at this path accept. Starlette's 405 names only the first
    route's (``Allow: POST`` at ``/admin/accounts``, which also serves GET), and RFC 9110
    wants them all: each method is tried against the routes as a request would be."""
    routes = request.app.router.routes
    path, root_path = request.scope["path"], request.scope.get("root_path", "")

    def served(method: str) -> bool:
        probe = {"type": "http", "path": path, "root_path": root_path, "method": method}
        return any(route.matches(probe)[0] == Match.FULL for route in routes)

    return [method for method in _METHODS if served(method)]


def create_app(settings: Settings | None = None) -> ControlApp:
    return ControlApp(settings or Settings())

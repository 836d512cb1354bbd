"""The ASGI application: /v1 on a plain handler, everything else on FastAPI.

The OpenAI routes are every token's path, so they skip the framework; the admin and
self-service routes are control plane and use FastAPI's validation and docs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from billing.service import Billing
from gateway.api import admin, endpoints, health, me
from gateway.api.admin_guard import AdminGuard
from gateway.api.openai import OpenAIHandler, client_request_id, new_request_id
from gateway.asgi import Receive, Scope, Send, with_header
from gateway.catalog import Catalog
from gateway.errors import GatewayError, error_body, error_type_for
from gateway.heap import settle_heap
from gateway.settings import Settings
from gateway.state import GatewayState


class GatewayApp:
    """Dispatches /v1 (but /v1/me) to the plain handler and the rest to FastAPI."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.state: GatewayState | None = None
        self.handler: OpenAIHandler | None = None

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[None]:
            self.state = await GatewayState.start(settings, catalog)
            self.handler = OpenAIHandler(self.state.pipeline)
            app.state.gateway = self.state
            app.state.billing = Billing.build(settings.database_url, self.state.redis)
            await app.state.billing.prepare()  # never blocks start on the database
            settle_heap()  # after start-up built everything long-lived
            try:
                yield
            finally:
                await app.state.billing.close()
                await self.state.close()

        # The schema and its docs are served by admin routes (behind the admin credential),
        # not by FastAPI's public defaults.
        self.control = FastAPI(title="tokengate", lifespan=lifespan, docs_url=None,
                               openapi_url=None, redoc_url=None)
        self.control.include_router(health.router)
        self.control.include_router(admin.router)
        self.control.include_router(endpoints.router)
        self.control.include_router(me.router)
        self.control.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
        self.control.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
        self.control.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
        self.admin_guard = AdminGuard(self.control, admin_key, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.control(scope, receive, send)
            return
        client_id = client_request_id(scope)
        if client_id is not None:
            send = with_header(send, b"x-client-request-id", client_id)
        path = scope["path"]
        if self.handler is not None and path.startswith("/v1/") and not path.startswith("/v1/me"):
            await self.handler(scope, receive, send)
            return
        request_id = new_request_id()
        if path.startswith("/admin"):  # credential and body bound before FastAPI reads a byte
            await self.admin_guard(scope, receive, send, request_id)
            return
        await self.control(scope, receive, with_header(send, b"x-request-id", request_id.encode()))


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
    if error.status_code == 404:
        message = f"Unknown route {request.method} {request.url.path}"
    elif error.status_code == 405:
        message = f"{request.url.path} does not accept {request.method}"
    return Response(error_body(message, error_type_for(error.status_code)), status_code=error.status_code,
                    headers=error.headers, media_type="application/json")


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> GatewayApp:
    return GatewayApp(settings or Settings(), catalog)

"""The data plane's ASGI application: ``/v1/*``, ``/healthz``, ``/readyz``, ``/metrics``.

No framework: every token passes here. The OpenAI routes go to the plain handler;
``/v1/me*`` and ``/v1/packages`` (self-service, which reads the SQL ledger) are forwarded
to the control plane; the admin API is not served on this port at all (``tokengate
control`` serves it on its own listener).
"""

from __future__ import annotations

import logging

from gateway.api import health
from gateway.api.openai import OpenAIHandler, client_request_id
from gateway.api.selfservice import SelfServiceForwarder, is_self_service
from gateway.asgi import Receive, Scope, Send, send_error, with_header
from gateway.catalog import Catalog
from gateway.errors import MethodNotAllowed, NotFound
from gateway.heap import settle_heap
from gateway.request_id import new_request_id
from gateway.settings import Settings
from gateway.state import GatewayState

log = logging.getLogger("tokengate")
_PROBES = ("/healthz", "/readyz", "/metrics")


class GatewayApp:
    """Dispatches a data-plane request by path; runs the process's start-up and shutdown."""

    def __init__(self, settings: Settings, catalog: Catalog | None = None) -> None:
        self.settings = settings
        self.catalog = catalog
        self.state: GatewayState | None = None
        self.handler: OpenAIHandler | None = None
        self.self_service = SelfServiceForwarder(settings.control_url, settings.max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not served
        client_id = client_request_id(scope)
        if client_id is not None:
            send = with_header(send, b"x-client-request-id", client_id)
        path = scope["path"]
        if path.startswith("/v1/") and not is_self_service(path):
            assert self.handler is not None, "served before start-up completed"
            await self.handler(scope, receive, send)
            return
        request_id = new_request_id()
        if is_self_service(path):
            await self.self_service(scope, receive, send, request_id)
        elif path in _PROBES:
            await self.probe(path, scope, send, request_id)
        else:
            await send_error(send, NotFound(f"Unknown route {scope['method']} {path}", code="unknown_url"),
                             request_id)

    async def probe(self, path: str, scope: Scope, send: Send, request_id: str) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(send, MethodNotAllowed(f"{path} accepts GET only", headers={"Allow": "GET"}),
                             request_id)
        elif path == "/healthz":
            await health.healthz(send, request_id)
        else:
            assert self.state is not None
            if path == "/readyz":
                await health.readyz(self.state, send, request_id)
            else:
                await health.metrics(self.state, send, request_id)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan: build everything long-lived at start-up, drain and close at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.state = await GatewayState.start(self.settings, self.catalog)
                except Exception as exc:
                    log.exception("the gateway cannot start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                self.handler = OpenAIHandler(self.state.pipeline)
                settle_heap()  # after start-up built everything long-lived
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.state is not None:
                    await self.state.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None, catalog: Catalog | None = None) -> GatewayApp:
    return GatewayApp(settings or Settings(), catalog)

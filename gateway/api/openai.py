"""The OpenAI surface (/v1) as a plain ASGI handler: check the route, run the pipeline, answer.

No framework here: this is every token's path. The request's path itself (authenticate,
admit, route, relay, settle) is :meth:`gateway.pipeline.Pipeline.serve`; here errors raised
anywhere below become an OpenAI-shaped body with the status the official clients map to
their exception classes, and every request is counted in the metrics.
"""

from __future__ import annotations

import logging
import re
import time

from gateway.asgi import ClientGone, Receive, Scope, Send, send_error, send_json
from gateway.auth import bearer_token
from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.openai_request import Kind
from gateway.pipeline import Call, Pipeline
from gateway.request_id import new_request_id

log = logging.getLogger("tokengate.api")
_REQUEST_ID_OK = re.compile(rb"[A-Za-z0-9._:-]+")

ROUTES: dict[str, Kind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


def client_request_id(scope: Scope) -> bytes | None:
    """The client's own id for its request, if sane (``x-client-request-id``, as OpenAI
    takes it, or ``x-request-id``). It is echoed back as ``x-client-request-id`` and never
    becomes the request's id: a billing id the client could choose could be reused, which
    would let one request ride on another's reservation or knock out its usage record."""
    fallback: bytes | None = None
    for name, value in scope["headers"]:  # one pass: this runs for every request
        if name == b"x-client-request-id" and _sane_id(value):
            return bytes(value)
        if name == b"x-request-id" and fallback is None and _sane_id(value):
            fallback = bytes(value)
    return fallback


def _sane_id(value: bytes) -> bool:
    return 0 < len(value) <= 128 and _REQUEST_ID_OK.fullmatch(value) is not None


class OpenAIHandler:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_request_id()
        path = scope["path"].rstrip("/")
        method = scope["method"]
        started = time.perf_counter()
        kind = ROUTES.get(path)
        route = ROUTE_PATHS[kind] if kind is not None else "models" if path == "/v1/models" else "unknown"
        status = 200
        call: Call | None = None
        try:
            if path == "/v1/models":
                if method != "GET":
                    raise MethodNotAllowed(f"{path} accepts GET only", headers={"Allow": "GET"})
                await send_json(send, 200, await self.pipeline.list_models(bearer_token(scope), scope),
                                request_id)
                return
            if kind is None:
                raise NotFound(f"Unknown route {method} {scope['path']}", code="unknown_url")
            if method != "POST":
                raise MethodNotAllowed(f"{path} accepts POST only", headers={"Allow": "POST"})
            call = Call(request_id, kind)
            await self.pipeline.serve(call, scope, receive, send)
        except GatewayError as error:
            status = error.status
            await send_error(send, error, request_id)
        except ClientGone:
            status = 499
        finally:
            elapsed = time.perf_counter() - started
            if call is None:
                self.pipeline.metrics.answered(route, "", status, elapsed, elapsed)
            else:
                self.pipeline.metrics.answered(route, call.model_name, status, elapsed,
                                               max(0.0, elapsed - call.waited))


ROUTE_PATHS: dict[Kind, str] = {"chat": "chat/completions", "completions": "completions",
                                "embeddings": "embeddings"}

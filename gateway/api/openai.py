"""The OpenAI surface (/v1) as a plain ASGI handler: parse, run the pipeline, answer.

No framework here: this is every token's path. Errors raised anywhere below become an
OpenAI-shaped body with the status the official clients map to their exception classes.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass

from gateway.asgi import ClientGone, Receive, Scope, Send, read_body, send_error, send_json
from gateway.auth import bearer_token
from gateway.catalog import Endpoint, Model
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, UpstreamTimeout
from gateway.lease import LeaseKeeper
from gateway.openai_request import Kind, OpenAIRequest, parse_request
from gateway.pipeline import Pipeline
from gateway.quota.admission import Admission
from gateway.relay.answer import AttemptFailed, relay_json, relay_whole
from gateway.relay.http1 import UpstreamResponse
from gateway.relay.meter import Usage
from gateway.relay.outcome import Outcome
from gateway.relay.stream import relay_stream

log = logging.getLogger("tokengate.api")
_REQUEST_ID_OK = re.compile(rb"[A-Za-z0-9._:-]+")

ROUTES: dict[str, Kind] = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}


def new_request_id() -> str:
    """The id of one request: its x-request-id, its reservation and its usage record."""
    return "req_" + secrets.token_hex(12)


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
        facts = Facts()
        try:
            if path == "/v1/models":
                if method != "GET":
                    raise MethodNotAllowed(f"{path} accepts GET only", headers={"Allow": "GET"})
                await self.list_models(scope, send, request_id)
                return
            if kind is None:
                raise NotFound(f"Unknown route {method} {scope['path']}", code="unknown_url")
            if method != "POST":
                raise MethodNotAllowed(f"{path} accepts POST only", headers={"Allow": "POST"})
            await self.infer(kind, scope, receive, send, request_id, facts)
        except GatewayError as error:
            status = error.status
            await send_error(send, error, request_id)
        except ClientGone:
            status = 499
        finally:
            elapsed = time.perf_counter() - started
            self.pipeline.metrics.answered(route, facts.model, status, elapsed,
                                           max(0.0, elapsed - facts.waited))

    async def list_models(self, scope: Scope, send: Send, request_id: str) -> None:
        await self.pipeline.auth.authenticate_enabled(bearer_token(scope))
        catalog = self.pipeline.catalog
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "tokengate",
             "max_model_len": m.context_window}
            for m in catalog.models.values()
        ]
        await send_json(send, 200, {"object": "list", "data": data}, request_id)

    async def infer(self, kind: Kind, scope: Scope, receive: Receive, send: Send, request_id: str,
                    facts: Facts) -> None:
        """Authenticate, admit, relay, settle; ``facts`` learns the model and the time spent
        waiting on the upstream that answered (for metrics)."""
        pipeline = self.pipeline
        key = await pipeline.auth.authenticate(bearer_token(scope))
        raw = await read_body(scope, receive, pipeline.settings.max_body_bytes)
        request = parse_request(kind, raw)
        model = pipeline.model_for(request)
        facts.model = model.name
        admission = await pipeline.admit(key, request, model, request_id)
        outcome = Outcome(Usage(), status="upstream_error", counted_by="gateway")
        keeper = pipeline.keep_lease(key, request_id)  # however long the upstream takes
        try:
            body = pipeline.upstream_body(request, model, admission)
            affinity = pipeline.router.affinity_key(request.body)
            tried: list[Endpoint] = []
            broken = Usage()  # what attempts that broke off a whole answer had generated
            while True:
                endpoint, response = await pipeline.open_upstream(
                    model, "/v1/" + ROUTE_PATHS[kind], body, affinity, request_id, tried)
                fault = True
                try:
                    outcome = await self.relay(request, keeper, send, receive, request_id, response,
                                               model, admission)
                    fault = outcome.upstream_fault
                except UpstreamTimeout:  # slow, not broken (an embedding answer read too long)
                    fault = False
                    raise
                except AttemptFailed as failed:
                    broken = broken.plus(failed.generated)
                    outcome = Outcome(broken, status="upstream_error", counted_by="gateway")
                    if len(tried) >= pipeline.settings.upstream_attempts:
                        raise failed.error from None
                    continue
                finally:
                    pipeline.router.finished(endpoint, ok=not fault)
                    outcome.endpoint = endpoint
                    facts.waited = response.waited
                if broken != Usage():  # billed with the answer: the upstream did generate it
                    outcome.usage = outcome.usage.plus(broken)
                    outcome.counted_by = "gateway"
                break
        finally:
            keeper.stop()
            pipeline.settle_in_background(key, model, request_id, request.stream, outcome)

    async def relay(self, request: OpenAIRequest, keeper: LeaseKeeper, send: Send, receive: Receive,
                    request_id: str, response: UpstreamResponse, model: Model,
                    admission: Admission) -> Outcome:
        """Relay the upstream's answer as the client asked for it: a stream, or one body."""
        headers, prompt = admission.header_pairs(), self.pipeline.prompt_counter(request, model, admission)
        if response.status != 200 or request.kind == "embeddings":
            return await relay_json(send, request_id, response, model, headers, prompt)
        if request.stream:
            return await relay_stream(keeper, send, receive, request_id, response, request, model,
                                      admission.max_tokens, headers, prompt)
        return await relay_whole(keeper, send, receive, request_id, response, request, model,
                                 admission.max_tokens, headers, prompt,
                                 self.pipeline.settings.response_timeout_s)


@dataclass(slots=True)
class Facts:
    """What a request's metrics need to know once it is over."""

    model: str = ""  # the public model name, once resolved
    waited: float = 0.0  # seconds spent waiting on the upstream that answered


ROUTE_PATHS: dict[Kind, str] = {"chat": "chat/completions", "completions": "completions",
                                "embeddings": "embeddings"}

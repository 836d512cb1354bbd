"""The bridge's ASGI app: OpenAI's chat route for one provider, as the data plane expects of vLLM.

Routes: ``POST /v1/chat/completions`` (streamed or whole), ``GET /v1/models``, ``GET /health``
(the data plane's probe; ``/healthz`` too, the image's health check) and ``GET /metrics``
(the requests in flight, in vLLM's gauge names, which the data plane's load scorer reads).
When the cluster's endpoints name an ``api_key_env``, every request must carry one of those
keys as a bearer token: anyone who reaches the bridge spends the provider's account
unmetered. A request without one is the operator's misconfiguration, not the client's: 502,
which the data plane hides and counts against the endpoint (a 401 would tell the client its
own key is wrong).

A client that leaves (the data plane aborts its upstream request when its own client
leaves) cancels the provider call at once; its count so far was on the last chunk sent.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

import orjson

from bridge.answer import ChunkWriter, open_stream, sse
from bridge.errors import BridgeError, provider_error
from bridge.params import Call, build_call
from bridge.target import Target
from bridge.usage import RunningUsage
from gateway.asgi import (
    JSON_HEADERS,
    SSE_HEADERS,
    ClientGone,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_bytes,
    uncancel,
    watch_disconnect,
)
from gateway.catalog import Model
from gateway.errors import BadRequest, GatewayError
from gateway.openai_request import parse_request
from gateway.prompt_size import counted_prompt
from gateway.relay.assemble import AnswerAssembler
from gateway.relay.meter import Usage
from gateway.tokenizers import load_tokenizer

log = logging.getLogger("tokengate.bridge")

MAX_BODY_BYTES = 16 * 1024 * 1024  # the data plane bounds bodies first (TOKENGATE_MAX_BODY_BYTES)


class BridgeApp:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.in_flight = 0
        self._tokens = [b"Bearer " + token.encode() for token in sorted(target.tokens)]
        for model in (target.models or {}).values():
            load_tokenizer(model.tokenizer)  # a bad tokenizer fails at start, not mid-answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            if path in ("/health", "/healthz") and method == "GET":
                return await send_bytes(send, 200, b"", "", [(b"content-type", b"text/plain")])
            if path == "/metrics" and method == "GET":
                text = (f"vllm:num_requests_running {self.in_flight}\n"
                        "vllm:num_requests_waiting 0\n").encode()
                return await send_bytes(send, 200, text, "", [(b"content-type", b"text/plain")])
            if not self._authorized(scope):
                raise BridgeError(502, "the bridge refused the caller's credentials", "bridge_auth_failed")
            if path == "/v1/models" and method == "GET":
                return await send_bytes(send, 200, self._models(), "")
            if path == "/v1/chat/completions" and method == "POST":
                return await self._chat(scope, receive, send)
            raise BridgeError(404 if not path.startswith("/v1/") else 400,
                              "this model serves chat completions only", "unsupported_route")
        except BridgeError as error:
            await send_bytes(send, error.status, error.body(), "", JSON_HEADERS)
        except GatewayError as error:
            await send_bytes(send, error.status, error.body(), "", JSON_HEADERS)
        except ClientGone:
            return

    def _authorized(self, scope: Scope) -> bool:
        if not self._tokens:
            return True
        given = header(scope, b"authorization") or b""
        return any(hmac.compare_digest(given, token) for token in self._tokens)

    def _models(self) -> bytes:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": self.target.provider.name,
                 "max_model_len": model.context_window}
                for name, model in sorted((self.target.models or {}).items())]
        return orjson.dumps({"object": "list", "data": data})

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = await read_body(scope, receive, MAX_BODY_BYTES)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body is not a JSON object")
        model = self.target.model(str(body.get("model")))
        if model is None:
            raise BridgeError(404, f"The model '{body.get('model')}' does not exist",
                              "model_not_found", "model")
        call = build_call(body, self.target, model)
        tokenizer = load_tokenizer(model.tokenizer)
        usage = RunningUsage(tokenizer, call.max_tokens,
                             lambda: counted_prompt(parse_request("chat", raw), tokenizer, model))
        request_id = (header(scope, b"x-request-id") or b"-").decode("latin-1")[:100]
        self.in_flight += 1
        try:
            await self._answer(call, model, usage, receive, send, request_id)
        finally:
            self.in_flight -= 1

    async def _answer(self, call: Call, model: Model, usage: RunningUsage, receive: Receive,
                      send: Send, request_id: str) -> None:
        """Relay the provider's answer; a client that leaves cancels the provider call."""
        watcher = asyncio.ensure_future(watch_disconnect(receive, asyncio.current_task()))
        stream: Any = None
        started = False
        try:
            stream, tap = await open_stream(call)
            # A whole answer is assembled from the chunks: with the running usage and the trailer.
            writer = ChunkWriter(model.served_name,
                                 (call.continuous_usage and call.include_usage) or not call.stream,
                                 call.include_usage or not call.stream)
            events = sse(stream, tap, usage, writer)
            if not call.stream:
                return await self._whole(events, model, usage, send)
            first = await events.__anext__()  # an error before any output still has its status
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            started = True
            await send({"type": "http.response.body", "body": first, "more_body": True})
            async for data in events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
            uncancel()  # the client left: the provider call is closed below
            log.info("%s: client left: provider call cancelled after ~%d completion tokens",
                     request_id, usage.completion)
        except Exception as exc:
            error = exc if isinstance(exc, BridgeError) else provider_error(exc, request_id,
                                                                            self.target.api_key)
            if started:
                await send({"type": "http.response.body", "body": error.event(), "more_body": False})
            else:
                await send_bytes(send, error.status, error.body(), "", JSON_HEADERS)
        finally:
            watcher.cancel()
            if stream is not None:
                await _close(stream)

    async def _whole(self, events: Any, model: Model, usage: RunningUsage, send: Send) -> None:
        """A whole answer: the stream assembled, as the data plane assembles vLLM's."""
        answer = AnswerAssembler("chat", model.served_name)
        async for data in events:
            answer.feed(data)
        final = answer.final or Usage(usage.prompt, usage.completion, usage.cached)
        await send_bytes(send, 200, answer.body(final), "", JSON_HEADERS)


async def _close(stream: Any) -> None:
    """Close the provider's connection (a cancelled answer stops being generated)."""
    try:
        await stream.aclose()
    except Exception:  # closing a broken stream may fail as it likes: it is closed
        log.debug("closing the provider stream failed", exc_info=True)

"""aiohttp application: vLLM's OpenAI routes plus /sim/* control routes."""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .config import SimConfig
from .engine import SimState
from .generation import api_error_response, run_job
from .requests import ApiError, check_model, parse_chat, parse_completion, request_id
from .textgen import embedding_base64, render_chat
from .wire import full_usage

STATE_KEY = web.AppKey("vllm_sim_state", SimState)
# The last bodies received (--record-requests N), for tests that check what reached the upstream.
RECORD_KEY = web.AppKey("vllm_sim_requests", deque)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(f"1 validation error:\n  JSON decode error: {exc}", "Bad Request") from exc
    if not isinstance(body, dict):
        raise ApiError("1 validation error:\n  Input should be a valid dictionary", "Bad Request")
    recorded = request.app.get(RECORD_KEY)
    if recorded is not None and request.path.startswith("/v1/"):
        recorded.append({"path": request.path, "request_id": request.headers.get("X-Request-Id"),
                         "body": body})
    return body


def _api(fn: Callable[[SimState, web.Request], Awaitable[web.StreamResponse]]) -> Handler:
    """Bind the simulator state and turn ApiError into vLLM's error response."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request.app[STATE_KEY], request)
        except ApiError as err:
            return api_error_response(err)

    return handler


async def chat_completions(state: SimState, request: web.Request) -> web.StreamResponse:
    job = parse_chat(state, await _body(request), request.headers)
    return await run_job(state, request, job)


async def completions(state: SimState, request: web.Request) -> web.StreamResponse:
    job = parse_completion(state, await _body(request), request.headers)
    return await run_job(state, request, job)


async def embeddings(state: SimState, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    inputs = body.get("input")
    if isinstance(inputs, str) or (
        isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)
    ):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(
            "1 validation error:\n  input must be a string or a non-empty list",
            "Bad Request",
            400,
            "body.input",
        )
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(f"encoding_format {fmt!r} is not supported by the simulator")
    check_model(state, body)
    data, total = [], 0
    for idx, item in enumerate(inputs):
        if isinstance(item, str):
            n, key = len(state.model.encode(item)), item
        elif isinstance(item, list) and all(isinstance(t, int) for t in item):
            n, key = len(item), "ids:" + ",".join(map(str, item))
        else:
            raise ApiError(
                "1 validation error:\n  input items must be strings or token ids",
                "Bad Request",
                400,
                "body.input",
            )
        if n > state.config.max_model_len:
            raise ApiError(
                f"This model's maximum context length is {state.config.max_model_len}"
                f" tokens. However, your prompt contains {n} input tokens. "
                f"(parameter=input_tokens, value={n})",
                param="input_tokens",
            )
        vec = state.model.embedding(key, state.config.embedding_dim)
        data.append(
            {
                "index": idx,
                "object": "embedding",
                "embedding": embedding_base64(vec) if fmt == "base64" else vec,
            }
        )
        total += n
    state.count_prompt(total)
    state.free_kv(total)
    usage = full_usage(total, 0)
    return _json(
        {
            "id": f"embd-{request_id(body, request.headers)}",
            "object": "list",
            "created": int(time.time()),
            "model": state.config.name,
            "data": data,
            "usage": usage,
        }
    )


async def tokenize(state: SimState, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    check_model(state, body)
    if "messages" in body:
        try:
            text = render_chat(body["messages"], body.get("add_generation_prompt", True) is True)
        except ValueError as exc:
            raise ApiError(f"1 validation error:\n  {exc}", "Bad Request") from exc
    elif isinstance(body.get("prompt"), str):
        text = body["prompt"]
    else:
        raise ApiError("1 validation error:\n  prompt or messages is required", "Bad Request")
    tokens = state.model.encode(text)
    strs = None
    if body.get("return_token_strs"):
        strs = [state.model.tokenizer.decode([t]) for t in tokens]
    return _json(
        {
            "count": len(tokens),
            "max_model_len": state.config.max_model_len,
            "tokens": tokens,
            "token_strs": strs,
        }
    )


async def detokenize(state: SimState, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    check_model(state, body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise ApiError("1 validation error:\n  tokens must be a list of integers", "Bad Request")
    return _json({"prompt": state.model.tokenizer.decode(tokens)})


async def models(state: SimState, request: web.Request) -> web.StreamResponse:
    """One card per served name; root stands in for the model path (the first name)."""
    now = int(time.time())
    cfg = state.config

    def card(name: str) -> dict[str, Any]:
        permission = {
            "id": f"modelperm-{secrets.token_hex(8)}",
            "object": "model_permission",
            "created": now,
            "allow_create_engine": False,
            "allow_sampling": True,
            "allow_logprobs": True,
            "allow_search_indices": False,
            "allow_view": True,
            "allow_fine_tuning": False,
            "organization": "*",
            "group": None,
            "is_blocking": False,
        }
        return {
            "id": name,
            "object": "model",
            "created": now,
            "owned_by": "vllm",
            "root": cfg.name,
            "parent": None,
            "max_model_len": cfg.max_model_len,
            "permission": [permission],
        }

    return _json({"object": "list", "data": [card(name) for name in cfg.served_names]})


async def health(state: SimState, request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def version(state: SimState, request: web.Request) -> web.StreamResponse:
    return _json({"version": "0.32.0"})


async def metrics(state: SimState, request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=state.metrics_text(),
        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
    )


async def get_faults(state: SimState, request: web.Request) -> web.StreamResponse:
    return _json(state.fault.to_dict())


async def set_faults(state: SimState, request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    try:
        return _json(state.set_fault(body).to_dict())
    except ValueError as exc:
        raise ApiError(str(exc), param="fault") from exc


async def get_stats(state: SimState, request: web.Request) -> web.StreamResponse:
    return _json(state.stats_dict())


async def get_requests(state: SimState, request: web.Request) -> web.StreamResponse:
    """The recorded requests, oldest first: {"data": [{"path", "request_id", "body"}]}."""
    return _json({"data": list(request.app.get(RECORD_KEY) or ())})


async def get_generated(state: SimState, request: web.Request) -> web.StreamResponse:
    """Tokens generated per request id, for the last --record-requests requests:
    {"data": {"<X-Request-Id>": tokens}} (a request retried here counts each attempt)."""
    return _json({"data": dict(state.generated or {})})


async def reset_stats(state: SimState, request: web.Request) -> web.StreamResponse:
    state.reset_stats()
    return _json(state.stats_dict())


def build_app(config: SimConfig) -> web.Application:
    """The simulator app. Serve it with handler_cancellation=True (see serve())."""
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = SimState(config)
    if config.record_requests:
        app[RECORD_KEY] = deque(maxlen=config.record_requests)
    routes = [
        ("GET", "/health", health),
        ("GET", "/ping", health),
        ("GET", "/version", version),
        ("GET", "/v1/models", models),
        ("GET", "/metrics", metrics),
        ("POST", "/v1/chat/completions", chat_completions),
        ("POST", "/v1/completions", completions),
        ("POST", "/v1/embeddings", embeddings),
        ("POST", "/tokenize", tokenize),
        ("POST", "/detokenize", detokenize),
        ("GET", "/sim/faults", get_faults),
        ("POST", "/sim/faults", set_faults),
        ("GET", "/sim/stats", get_stats),
        ("POST", "/sim/reset", reset_stats),
        ("GET", "/sim/requests", get_requests),
        ("GET", "/sim/generated", get_generated),
    ]
    for method, path, fn in routes:
        app.router.add_route(method, path, _api(fn))
    return app

"""``/console/playground``: chat with a model from the browser, streamed, with each answer's
tokens and credits.

Design: the browser never holds an API key, and the control plane stores no secret. For
each answer the control plane creates a key of the session's organization (named
``console playground``, limited to the chosen model, one request at a time), sends the chat
to the data plane's public ``/v1/chat/completions`` (``TOKENGATE_DATA_URL``) with it, relays
the SSE stream to the browser, and revokes the key when the answer ends, is refused or the
browser goes away. So every playground answer is admitted, metered, billed and recorded by
the normal path, exactly like any API request (the usage page lists it under that key),
and a leaked request body or log line of the browser carries nothing reusable.

The request asks for ``stream_options.include_usage``; the relay reads the final usage chunk
and appends one event of its own (``event: cost``) with the tokens and the credits, computed
with the model's prices as the gateway charges them.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import httpx
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from billing.balances import account_balance
from billing.users import Session
from control.console.pages import ModelInfo, models_of, words
from control.console.web import HEADERS, CsrfFailed, billing_of, in_organization, render
from gateway.contract import BalanceUnknown, KeyLimits, Settings

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]
KEY_NAME = "console playground"
MAX_MESSAGES = 40
MAX_CHARS = 32_000  # the whole conversation
MAX_TOKENS = 1024
TIMEOUT = httpx.Timeout(connect=5.0, read=120.0, write=10.0, pool=5.0)


async def usable_models(request: Request, account_id: str) -> list[ModelInfo]:
    """The chat models the organization's credits may pay for (every chat model when a grant
    is unrestricted, or when the balance cannot be read: admission decides then)."""
    chat = [m for m in models_of(request) if m.kind == "chat"]
    billing = billing_of(request)
    try:
        view = await account_balance(billing.engine, billing.store, account_id, clock=billing.clock)
    except BalanceUnknown:
        return chat
    allowed: set[str] = set()
    for grant in view["grants"]:
        if grant["available"] <= 0:
            continue
        if grant["models"] is None:
            return chat
        allowed.update(grant["models"])
    return [m for m in chat if m.name in allowed] if allowed else chat


@router.get("/playground")
async def playground(request: Request, session: SessionDep) -> Response:
    assert session.account_id is not None
    settings: Settings = request.app.state.settings
    return render(
        request,
        "playground.html",
        session=session,
        models=await usable_models(request, session.account_id),
        configured=bool(settings.data_url),
    )


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "param": param}}, status_code=status, headers=HEADERS)


def _messages(body: Any, t: Callable[..., str]) -> list[dict[str, str]] | str:
    """The conversation of the request's JSON, or the message saying what is wrong with it."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        return t("c_enter_message")
    out, total = [], 0
    for item in messages:
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            return t("c_enter_message")
        content = item.get("content")
        if not isinstance(content, str):
            return t("c_enter_message")
        total += len(content)
        out.append({"role": item["role"], "content": content})
    if total > MAX_CHARS:
        return t("c_message_too_long")
    if out[-1]["role"] != "user" or not out[-1]["content"].strip():
        return t("c_enter_message")
    return out


def _usage_of(line: bytes) -> dict[str, Any] | None:
    """The ``usage`` of one SSE ``data:`` line, if it has one."""
    if not line.startswith(b"data:") or b'"usage"' not in line:
        return None
    try:
        chunk = orjson.loads(line[5:].strip())
    except orjson.JSONDecodeError:
        return None
    usage = chunk.get("usage") if isinstance(chunk, dict) else None
    return usage if isinstance(usage, dict) else None


@router.post("/playground/chat")
async def chat(request: Request, session: SessionDep) -> Response:
    """One answer, streamed as the data plane sends it, then ``event: cost``."""
    token = request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise CsrfFailed()
    t, account_id = words(request), session.account_id
    assert account_id is not None
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, t("c_enter_message"), "message")
    models = {m.name: m for m in await usable_models(request, account_id)}
    asked = body.get("model") if isinstance(body, dict) else None
    model = models.get(asked) if isinstance(asked, str) else None
    if model is None:
        return _error(400, t("c_unknown_model", name=str(asked)[:100]), "model")
    messages = _messages(body, t)
    if isinstance(messages, str):
        return _error(400, messages, "message")
    settings: Settings = request.app.state.settings
    if not settings.data_url:
        return _error(503, t("c_playground_off"))
    billing = billing_of(request)
    issued = await billing.accounts.create_key(
        account_id, KEY_NAME, KeyLimits([model.name], max_concurrency=1)
    )
    client = httpx.AsyncClient(timeout=TIMEOUT)
    payload = {
        "model": model.name,
        "messages": messages,
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "stream_options": {"include_usage": True},
    }

    async def finish() -> None:
        with anyio.CancelScope(shield=True):  # even when the browser went away mid-answer
            await client.aclose()
            await billing.accounts.revoke_key(issued["id"])

    try:
        upstream = await client.send(
            client.build_request(
                "POST",
                settings.data_url.rstrip("/") + "/v1/chat/completions",
                json=payload,
                headers={"Authorization": f"Bearer {issued['key']}"},
            ),
            stream=True,
        )
    except httpx.HTTPError:
        await finish()
        return _error(502, t("c_try_later"))
    if upstream.status_code != 200:
        raw = await upstream.aread()
        await finish()
        try:
            message = orjson.loads(raw)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = t("c_try_later")
        return _error(upstream.status_code, t("c_playground_failed", message=str(message)[:500]))

    async def relay() -> AsyncIterator[bytes]:
        usage, pending = None, b""
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    usage = _usage_of(line) or usage
            if usage is not None:
                prompt, completion = (
                    int(usage.get("prompt_tokens") or 0),
                    int(usage.get("completion_tokens") or 0),
                )
                cost = {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "credits": model.cost(prompt, completion),
                }
                yield b"event: cost\ndata: " + orjson.dumps(cost) + b"\n\n"
        except httpx.HTTPError:
            return  # the data plane went away mid-answer: it bills what it relayed
        finally:
            await finish()

    headers = {**HEADERS, "X-Accel-Buffering": "no"}
    return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)

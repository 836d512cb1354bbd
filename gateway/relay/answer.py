"""Relaying a whole answer: one JSON body to the client, counted however the upstream sent it.

A generation (chat, completions) is asked of the upstream as a stream and assembled here
(:mod:`gateway.relay.assemble`), so whatever the gateway gives up on is billed for what was
generated. A body the upstream sent whole (an error, embeddings, an upstream that ignored
``stream``) is relayed as it came and counted from its ``usage``, else from its content.
An answer the upstream broke off before anything reached the client is returned
``unanswered`` (see :class:`~gateway.relay.outcome.Outcome`): another endpoint may answer it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal

from gateway.asgi import JSON_HEADERS, Receive, Send, send_bytes, uncancel, watch_disconnect
from gateway.catalog import Model
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout, event_status, upstream_error_body
from gateway.lease import Checkpointed
from gateway.openai_request import OpenAIRequest
from gateway.relay.assemble import AnswerAssembler
from gateway.relay.http1 import UpstreamResponse
from gateway.relay.meter import ModelRenamer, Usage
from gateway.relay.outcome import Outcome, counted, of_answer
from gateway.tokenizers import load_tokenizer
from gateway.usage import (
    COUNTED_BY_GATEWAY,
    STATUS_CLIENT_GONE,
    STATUS_OK,
    STATUS_PARTIAL,
    STATUS_UPSTREAM_ERROR,
    Status,
)


async def relay_json(
    send: Send,
    request_id: str,
    response: UpstreamResponse,
    model: Model,
    headers: list[tuple[bytes, bytes]],
    prompt: Callable[[], int],
    head: bytes = b"",
) -> Outcome:
    """Relay a body the upstream sent whole (``head``: what was read of it already)."""
    try:
        body = head + await response.read()
    except TimeoutError:
        response.close()
        raise UpstreamTimeout("upstream stopped answering", code="upstream_timeout") from None
    except OSError as exc:
        response.close()
        raise UpstreamError(f"upstream failed mid-response: {exc.__class__.__name__}") from None
    except BaseException:
        response.close()
        raise
    response.release()
    if response.status >= 400:  # the upstream refused the request: relayed, free
        error = upstream_error_body(response.status, body, model.served_name, model.name)
        await send_bytes(send, response.status, error, request_id, [*JSON_HEADERS, *headers])
        return Outcome(Usage(), status=STATUS_UPSTREAM_ERROR, counted_by=COUNTED_BY_GATEWAY)
    await send_bytes(send, response.status, ModelRenamer(model.name)(body), request_id,
                     [*JSON_HEADERS, *headers])
    return of_answer(body, load_tokenizer(model.tokenizer), prompt)


async def relay_whole(
    held: Checkpointed,
    send: Send,
    receive: Receive,
    request_id: str,
    response: UpstreamResponse,
    request: OpenAIRequest,
    model: Model,
    reserved: int,
    headers: list[tuple[bytes, bytes]],
    prompt: Callable[[], int],
    deadline_s: float | None,
) -> Outcome:
    """Assemble the upstream's stream into one answer; stop (and bill what was generated)
    when the client leaves, the upstream falls silent for the idle timeout or passes
    ``deadline_s`` in all, or more than ``reserved`` completion tokens came."""
    kind: Literal["chat", "completions"] = "chat" if request.kind == "chat" else "completions"
    answer = AnswerAssembler(kind, model.name, load_tokenizer(model.tokenizer))
    held.progress = answer.progress
    watcher = asyncio.ensure_future(watch_disconnect(receive, asyncio.current_task()))
    failure: GatewayError | None = None
    fault = cut = whole = False
    status: Status = STATUS_OK
    head = b""
    try:
        async with asyncio.timeout(deadline_s) if deadline_s else contextlib.nullcontext():
            while data := await response.read_some():  # TimeoutError after the idle timeout
                if not head:
                    head = data
                    whole = data.lstrip()[:1] == b"{"
                    if whole:  # the upstream answered whole, not as a stream: relay_json
                        break
                answer.feed(data)
                if answer.done:
                    break
                if answer.exceeds(reserved):
                    cut = True
                    break
                if held.lost:
                    failure = UpstreamError("answer cut: its reservation expired")
                    break
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise
        uncancel()
        status = STATUS_CLIENT_GONE
    except TimeoutError:  # slow, not broken: the endpoint keeps its good name
        failure = UpstreamTimeout("upstream took too long to answer", code="upstream_timeout")
    except OSError as exc:
        failure = UpstreamError(f"upstream connection lost mid-answer: {exc.__class__.__name__}")
        fault = True
    finally:
        watcher.cancel()
        whole = whole and status == STATUS_OK and failure is None
        if answer.done:
            response.release()
        elif not whole:  # relay_json reads a whole answer on
            response.close()  # aborts the upstream request: vLLM stops generating
    if whole:
        return await relay_json(send, request_id, response, model, headers, prompt, head)
    return await _answer(send, request_id, answer, headers, prompt, status, failure, fault, cut,
                         model)


async def _answer(
    send: Send,
    request_id: str,
    answer: AnswerAssembler,
    headers: list[tuple[bytes, bytes]],
    prompt: Callable[[], int],
    status: Status,
    failure: GatewayError | None,
    fault: bool,
    cut: bool,
    model: Model,
) -> Outcome:
    """Send what the relay ended with; the outcome bills what the upstream generated."""
    generated = answer.delivered(prompt)
    if status == STATUS_CLIENT_GONE:
        return Outcome(generated, status=status, counted_by=COUNTED_BY_GATEWAY)
    if failure is None and not answer.done and answer.error is None and not cut:
        failure = UpstreamError("upstream closed the answer before it was complete")
        fault = True
    if failure is not None and fault:  # nothing reached the client: another endpoint may answer
        return Outcome(generated, status=STATUS_UPSTREAM_ERROR, counted_by=COUNTED_BY_GATEWAY,
                       upstream_fault=True, unanswered=failure)
    if failure is not None:
        await send_bytes(send, failure.status, failure.body(), request_id, [*JSON_HEADERS, *headers])
        return Outcome(generated, status=STATUS_UPSTREAM_ERROR, counted_by=COUNTED_BY_GATEWAY)
    if answer.error is not None:
        code = event_status(answer.error)
        error = upstream_error_body(code, answer.error, model.served_name, model.name)
        await send_bytes(send, code, error, request_id, [*JSON_HEADERS, *headers])
        return Outcome(generated, status=STATUS_UPSTREAM_ERROR, counted_by=COUNTED_BY_GATEWAY)
    if cut:
        await send_bytes(send, 200, answer.body(generated, cut=True), request_id, [*JSON_HEADERS, *headers])
        return Outcome(generated, status=STATUS_PARTIAL, counted_by=COUNTED_BY_GATEWAY)
    usage = answer.final if answer.final is not None else generated
    await send_bytes(send, 200, answer.body(usage), request_id, [*JSON_HEADERS, *headers])
    return counted(answer.final, generated)

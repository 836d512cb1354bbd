"""Relaying a stream: SSE bytes passed through as they come, counted on the way."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.asgi import SSE_HEADERS, Receive, Send, uncancel, watch_disconnect
from gateway.catalog import Model
from gateway.errors import GatewayError, UpstreamError, UpstreamTimeout
from gateway.lease import Checkpointed
from gateway.openai_request import OpenAIRequest
from gateway.relay.assemble import answer_as_stream
from gateway.relay.http1 import UpstreamResponse
from gateway.relay.meter import ModelRenamer, StreamMeter, Usage
from gateway.relay.outcome import Outcome, of_answer
from gateway.tokenizers import load_tokenizer
from gateway.usage import (
    COUNTED_BY_GATEWAY,
    STATUS_CLIENT_GONE,
    STATUS_OK,
    STATUS_PARTIAL,
    STATUS_UPSTREAM_ERROR,
    Status,
)


async def relay_stream(
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
) -> Outcome:
    """Pass SSE bytes through, counting; end cleanly on upstream faults and disconnects.

    ``held`` is the reservation, checkpointed with the meter's count meanwhile; the stream
    is cut once more than ``reserved`` completion tokens came (the upstream ignored
    max_tokens) and charged what was delivered. ``prompt`` counts the prompt for when the
    upstream reports no usage."""
    meter = StreamMeter(
        ModelRenamer(model.name),
        request.client_include_usage,
        request.client_continuous_usage,
        load_tokenizer(model.tokenizer),
    )
    start = [(b"x-request-id", request_id.encode()), *SSE_HEADERS, *headers]
    await send({"type": "http.response.start", "status": 200, "headers": start})
    watcher = asyncio.ensure_future(watch_disconnect(receive, asyncio.current_task()))
    held.progress = meter.progress
    failure: GatewayError | None = None
    fault = False
    status: Status = STATUS_OK
    whole: bytes | None = None
    first = True
    try:
        while data := await response.read_some():  # TimeoutError after the idle timeout
            if first:
                first = False
                if data.lstrip()[:1] == b"{":  # the upstream does not stream: one body
                    whole = data + await response.read()
                    break
            out = meter.feed(data)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            if meter.done:  # [DONE] relayed: the stream is complete, whatever follows
                break
            if meter.exceeds(reserved):
                failure = UpstreamError("stream cut: the upstream exceeded the reserved tokens")
                break
            if held.lost:
                failure = UpstreamError("stream cut: its reservation expired")
                break
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():
            raise
        uncancel()
        status = STATUS_OK if meter.done else STATUS_CLIENT_GONE
    except TimeoutError:  # silent for the idle timeout: slow or stuck, not broken
        failure = UpstreamTimeout("upstream went silent mid-stream", code="upstream_timeout")
    except OSError as exc:
        failure = UpstreamError(f"upstream connection lost mid-stream: {exc.__class__.__name__}")
        fault = True
    finally:
        watcher.cancel()
        if meter.done or whole is not None:
            response.release()  # back to the pool when the upstream's body has ended
        else:
            response.close()  # aborts the upstream request: vLLM stops generating
    if whole is not None:
        return await _whole_as_stream(send, whole, request, model, prompt)
    if status == STATUS_OK and failure is None and not meter.done and meter.error is None:
        failure = UpstreamError("upstream closed the stream before it was complete")
        fault = True
    if failure is not None:
        status = STATUS_PARTIAL
        await send({"type": "http.response.body", "body": failure.sse_event(), "more_body": False})
    elif status == STATUS_OK:
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    if meter.error is not None and status == STATUS_OK:
        status = STATUS_UPSTREAM_ERROR
    if meter.final is not None and status == STATUS_OK:
        return Outcome(meter.final)
    return Outcome(meter.delivered(prompt), status=status, counted_by=COUNTED_BY_GATEWAY,
                   upstream_fault=fault)


async def _whole_as_stream(send: Send, body: bytes, request: OpenAIRequest, model: Model,
                           prompt: Callable[[], int]) -> Outcome:
    """An upstream that answered a stream request with one body: its answer as SSE, billed
    from its usage, else counted from its content."""
    events = answer_as_stream(body, model.name, request.client_include_usage)
    if events is None:
        error = UpstreamError("upstream sent neither a stream nor an answer")
        await send({"type": "http.response.body", "body": error.sse_event(), "more_body": False})
        return Outcome(Usage(), status=STATUS_UPSTREAM_ERROR, counted_by=COUNTED_BY_GATEWAY,
                       upstream_fault=True)
    await send({"type": "http.response.body", "body": events, "more_body": False})
    return of_answer(body, load_tokenizer(model.tokenizer), prompt)

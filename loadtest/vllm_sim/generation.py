"""Running a validated job: faults, admission, timing, streaming and accounting.

Tokens are counted when the simulated engine produces them (just before they
are written), so a client that goes away mid-stream is charged only for what
was generated up to then. The app runs with aiohttp handler cancellation, so a
disconnect cancels the handler at once, even while it waits or sleeps.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from aiohttp import web

from .config import FaultSpec
from .engine import SimState
from .requests import ApiError, Job
from .wire import (
    DONE,
    StreamFormat,
    chat_response,
    completion_response,
    error_body,
    status_error_type,
    stream_error_event,
)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8"}  # as Starlette sends


class _Run:
    """Book-keeping for one admitted job (slots, KV tokens, per-choice progress)."""

    def __init__(self, state: SimState, job: Job, fault: FaultSpec) -> None:
        self.state, self.job = state, job
        self.done = [0] * len(job.seqs)
        self.kv = 0
        self.k = len(job.seqs)
        self.period = (state.config.itl_ms + fault.drip_ms) / 1000.0
        self.ttft = state.config.ttft_ms / 1000.0
        self.steps = max(s.ntokens for s in job.seqs)
        self.t0 = 0.0

    async def admit(self) -> None:
        await self.state.scheduler.acquire(self.k)
        self.t0 = asyncio.get_running_loop().time()
        self.kv += self.job.prompt_tokens
        self.state.count_prompt(self.job.prompt_tokens)

    def produce(self, pos: int, n: int = 1) -> None:
        self.done[pos] += n
        self.kv += n
        self.state.count_generated(n)

    def due(self, step: int) -> float:
        return self.t0 + self.ttft + step * self.period

    def steps_elapsed(self) -> int:
        """How many decode steps the engine has finished by now (for aborted non-streams)."""
        elapsed = asyncio.get_running_loop().time() - self.t0 - self.ttft
        if elapsed < 0:
            return 0
        return self.steps if self.period <= 0 else min(self.steps, 1 + int(elapsed / self.period))

    def finish(self, outcome: str) -> None:
        """Release the slots; outcome is completed, aborted or reset."""
        state = self.state
        state.scheduler.release(self.k)
        state.free_kv(self.kv)
        state.record_generated(self.job.request_id.split("-", 1)[-1], sum(self.done))
        for seq, done in zip(self.job.seqs, self.done, strict=True):
            reason = seq.finish if done >= seq.ntokens else "abort"
            state.finished[reason] = state.finished.get(reason, 0) + 1
        setattr(state.stats, outcome, getattr(state.stats, outcome) + 1)


async def _sleep_until(deadline: float) -> None:
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drop_connection(request: web.Request) -> None:
    """Close the TCP connection after flushing what was written (no [DONE])."""
    transport = request.transport
    if transport is None:
        return
    for _ in range(200):
        if transport.is_closing() or transport.get_write_buffer_size() == 0:
            break
        await asyncio.sleep(0.005)
    transport.abort()


def _fault_response(fault: FaultSpec) -> web.Response:
    status = fault.status
    message = fault.message or ("Internal server error" if status == 500 else HTTPStatus(status).phrase)
    body = error_body(message, status_error_type(status), status)
    return web.Response(status=status, body=body, content_type="application/json")


async def _engine_error(request: web.Request, job: Job) -> web.StreamResponse:
    """vLLM raises these inside generate(): a 400, or an SSE error event in a stream."""
    err = job.engine_error
    assert err is not None
    if not job.stream:
        raise err
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(stream_error_event(err.message, err.err_type, err.code, err.param) + DONE)
    return resp


async def run_job(state: SimState, request: web.Request, job: Job) -> web.StreamResponse:
    """Answer ``job`` as vLLM would, under the current fault."""
    if job.engine_error is not None:
        return await _engine_error(request, job)
    fault = state.take_fault()
    if fault.mode == "error_before":
        state.stats.errored += 1
        return _fault_response(fault)
    state.stats.started += 1
    if fault.mode == "hang":
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            state.stats.aborted += 1
            raise
    run = _Run(state, job, fault)
    resp: web.StreamResponse | None = None
    try:
        if job.stream:
            resp = web.StreamResponse(headers=SSE_HEADERS)
            await resp.prepare(request)  # vLLM sends headers before queueing/prefill
        await run.admit()
    except asyncio.CancelledError:
        state.stats.aborted += 1
        raise
    except ConnectionError:  # gone before headers went out; aiohttp handles it quietly
        state.stats.aborted += 1
        return resp or web.Response(status=499)
    outcome = "aborted"
    try:
        if resp is None:
            result: web.StreamResponse = await _respond_whole(run, fault, request)
        else:
            result = await _respond_stream(run, fault, request, resp)
        outcome = "reset" if fault.mode == "reset_after" else "completed"
        return result
    except asyncio.CancelledError:
        if resp is None and fault.mode != "reset_after":
            n = run.steps_elapsed()
            for pos, seq in enumerate(job.seqs):
                run.produce(pos, min(n, seq.ntokens))
        raise
    except ConnectionError:  # a write hit a closed connection: the client went away
        return resp or web.Response(status=499)
    finally:
        run.finish(outcome)


async def _respond_whole(run: _Run, fault: FaultSpec, request: web.Request) -> web.StreamResponse:
    job = run.job
    if fault.mode == "reset_after":  # produce N tokens' worth of time, then hang up
        await _sleep_until(run.due(max(0, min(fault.after_tokens, run.steps) - 1)))
        budget = fault.after_tokens
        for pos, seq in enumerate(job.seqs):
            take = min(budget, seq.ntokens)
            run.produce(pos, take)
            budget -= take
        await _drop_connection(request)
        return web.Response(status=500)
    await _sleep_until(run.due(run.steps - 1))
    for pos, seq in enumerate(job.seqs):
        run.produce(pos, seq.ntokens)
    model = run.state.model
    texts = [model.text(seq) for seq in job.seqs]
    build = chat_response if job.chat else completion_response
    body = build(job.request_id, job.created, job.model, texts, job.seqs, job.prompt_tokens,
                 run.state.config.report_usage)
    return web.Response(body=body, content_type="application/json")


async def _respond_stream(
    run: _Run, fault: FaultSpec, request: web.Request, resp: web.StreamResponse
) -> web.StreamResponse:
    job = run.job
    fmt = StreamFormat(job.chat, job.request_id, job.created, job.model, run.state.model.vocab_json)
    usage_for = job.prompt_lens if job.continuous else None
    budget = fault.after_tokens if fault.mode == "reset_after" else -1
    slow = run.period > 0 or budget >= 0
    parts: list[bytes] = []
    await _sleep_until(run.due(0))
    if job.chat:
        first_usage = usage_for[0] if usage_for else None
        parts += [fmt.role_chunk(seq.index, first_usage) for seq in job.seqs]
    for step in range(run.steps):
        if slow and step:
            await _sleep_until(run.due(step))
        for pos, seq in enumerate(job.seqs):
            if step >= seq.ntokens:
                continue
            if budget == 0:
                break
            run.produce(pos)
            budget -= 1
            prompt = usage_for[seq.prompt_idx] if usage_for else None
            parts.append(fmt.token_chunk(seq, step, prompt))
        if budget == 0:
            break
        if slow:
            await resp.write(b"".join(parts))
            parts.clear()
    if budget >= 0:  # reset_after: flush what was produced, then drop the connection
        if parts:
            await resp.write(b"".join(parts))
        await _drop_connection(request)
        return resp
    if job.include_usage:
        parts.append(fmt.usage_chunk(job.prompt_tokens, sum(s.ntokens for s in job.seqs)))
    parts.append(DONE)
    await resp.write(b"".join(parts))
    await resp.write_eof()
    return resp


def api_error_response(err: ApiError) -> web.Response:
    return web.Response(
        status=err.code,
        content_type="application/json",
        body=error_body(err.message, err.err_type, err.code, err.param),
    )

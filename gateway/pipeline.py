"""One request, end to end: authenticate -> admit -> route -> relay -> settle.

Every admitted request ends in exactly one settlement (``finally``), which releases the
unused reservation and appends the usage event. Settlement happens after the last byte
reached the client, so it is never in the client's way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from gateway.asgi import SSE_HEADERS, Receive, Send, send_bytes
from gateway.auth import Authenticator, KeyRef
from gateway.catalog import Catalog, Endpoint, Model
from gateway.errors import (
    BadRequest,
    GatewayError,
    NoHealthyEndpoint,
    NotFound,
    QuotaUnavailable,
    UpstreamError,
    UpstreamTimeout,
    upstream_error_body,
)
from gateway.lease import LeaseKeeper, Progress
from gateway.metrics import GatewayMetrics
from gateway.openai_request import OpenAIRequest, count_prompt_tokens
from gateway.quota.store import Admission, QuotaStore
from gateway.relay.http1 import UpstreamConnectError, UpstreamResponse
from gateway.relay.meter import ModelRenamer, StreamMeter, Usage, usage_of_response
from gateway.relay.upstream import UpstreamClient
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.tokenizers import load_tokenizer

log = logging.getLogger("tokengate.pipeline")

# OpenAI's (and vLLM's) legacy completions API stops at 16 tokens when max_tokens is absent;
# chat has no such default (the rest of the context window, or what the balance pays).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


@dataclass(slots=True)
class Outcome:
    """What settlement needs to know about how the relay ended."""

    usage: Usage
    status: str = "ok"
    counted_by: str = "upstream"
    endpoint: Endpoint | None = None


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        authenticator: Authenticator,
        quota: QuotaStore,
        router: Router,
        upstream: UpstreamClient,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.auth = authenticator
        self.quota = quota
        self.router = router
        self.upstream = upstream
        self.metrics = metrics
        self.settling: set[asyncio.Future[None]] = set()  # settlements under way (or retrying)

    def model_for(self, request: OpenAIRequest) -> Model:
        model = self.catalog.get(request.model)
        if model is None:
            raise NotFound(
                f"The model '{request.model}' does not exist", code="model_not_found", param="model"
            )
        wants_embedding = request.kind == "embeddings"
        if wants_embedding != (model.kind == "embedding"):
            route = "embeddings" if model.kind == "embedding" else "chat/completions or completions"
            raise BadRequest(f"model '{model.name}' is served on /v1/{route}", param="model")
        return model

    async def admit(self, key: KeyRef, request: OpenAIRequest, model: Model, request_id: str) -> Admission:
        tokenizer = load_tokenizer(model.tokenizer)
        size = count_prompt_tokens(request, tokenizer)
        choices = request.choices
        window = model.context_window
        if request.kind == "embeddings":
            if size.longest > window:
                raise BadRequest(
                    f"This model's maximum context length is {window} tokens. However, an input "
                    f"has about {size.longest} tokens. Please shorten it.",
                    param="input",
                    code="context_length_exceeded",
                )
            requested, ceiling = None, 0
        else:
            room = window - size.longest
            if request.max_tokens is not None and request.max_tokens > room:
                raise BadRequest(
                    f"This model's maximum context length is {window} tokens. However, "
                    f"you requested {request.max_tokens} completion tokens with about {size.longest} "
                    "in the prompt. Please reduce the prompt or max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            ceiling = max(1, window - size.longest_estimate) * choices
            max_tokens = request.max_tokens
            if max_tokens is None and request.kind == "completions":
                max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
            requested = max_tokens * choices if max_tokens is not None else None
        return await self.quota.admit(
            request_id=request_id,
            account_id=key.account_id,
            key_id=key.key_id,
            model=model.name,
            prompt_tokens=size.estimate,
            max_tokens=requested,
            max_tokens_ceiling=ceiling,
            input_pm=model.input_pm,
            output_pm=model.output_pm,
            lease_ms=int(self.settings.lease_seconds * 1000),
            choices=choices,
        )

    def upstream_body(self, request: OpenAIRequest, model: Model, admission: Admission) -> bytes:
        body = request.body
        body["model"] = model.served_name
        if request.kind != "embeddings":
            per_choice = admission.max_tokens // request.choices  # >= 1: admit_v3 grants per choice
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = per_choice
        if request.stream:
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            options["continuous_usage_stats"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def open_upstream(
        self, model: Model, path: str, body: bytes, affinity: int = 0, request_id: str = "",
        stream: bool = False,
    ) -> tuple[Endpoint, UpstreamResponse]:
        """Connect to an endpoint, failing over to another one before the first byte.

        Every attempt sends the same body under the same request id and reservation. A
        connect error, a 5xx or a 429 (saturated) moves on to the router's next pick, which
        avoids the endpoints (and, while it can, the clusters) already tried. Once response
        headers are in, the request stays where it is. ``affinity`` is the prompt's prefix key.
        """
        router = self.router
        tried: list[Endpoint] = []
        error: GatewayError | None = None
        for _ in range(self.settings.upstream_attempts):
            try:
                endpoint = router.pick(model, affinity, tried)
            except NoHealthyEndpoint:
                if not tried:
                    raise
                break
            tried.append(endpoint)
            router.started(endpoint)
            try:
                response = await self.upstream.post(endpoint, path, body, request_id, stream)
                if response.status < 500 and response.status != 429:
                    router.responded(endpoint)
                    return endpoint, response
                detail = (await response.read())[:300].decode("utf-8", "replace")
                response.release()
            except asyncio.CancelledError:
                router.finished(endpoint, ok=True)  # the request went away, not the endpoint
                raise
            except OSError as exc:
                if _silent(exc):  # connected, then nothing: it may be at work, so no retry
                    self._failed(endpoint, "timeout")
                    raise UpstreamTimeout(
                        f"upstream {endpoint.cluster} sent no response within "
                        f"{self.settings.answer_timeout(stream):g}s",
                        code="upstream_timeout",
                    ) from None
                self._failed(endpoint, "connect")  # refused, reset, connect timeout: next one
                error = UpstreamError(
                    f"cannot reach upstream in cluster {endpoint.cluster}: {exc.__class__.__name__}",
                    code="upstream_unreachable",
                )
                continue
            if response.status == 429:  # saturated: alive, so not a failure; try elsewhere
                router.saturated(endpoint)
                router.finished(endpoint, ok=True)
                self.metrics.upstream_errors.labels(endpoint.cluster, endpoint.url, "saturated").inc()
                error = NoHealthyEndpoint(
                    f"upstream in cluster {endpoint.cluster} is saturated (429): {detail}",
                    code="upstream_saturated",
                )
                continue
            self._failed(endpoint, "status")
            error = UpstreamError(
                f"upstream in cluster {endpoint.cluster} answered {response.status}: {detail}",
                code="upstream_error",
            )
        raise error or UpstreamError("no upstream attempt was made")

    def _failed(self, endpoint: Endpoint, kind: str) -> None:
        self.router.finished(endpoint, ok=False)
        self.metrics.upstream_errors.labels(endpoint.cluster, endpoint.url, kind).inc()

    async def relay_json(
        self,
        send: Send,
        request_id: str,
        response: UpstreamResponse,
        model: Model,
        headers: list[tuple[bytes, bytes]],
        estimate: int,
    ) -> Outcome:
        try:
            body = await response.read()
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
            await send_bytes(send, response.status, upstream_error_body(response.status, body), request_id,
                             [(b"content-type", b"application/json"), *headers])
            return Outcome(Usage(), status="upstream_error", counted_by="gateway")
        usage = usage_of_response(body)
        await send_bytes(send, response.status, ModelRenamer(model.name)(body),
                         request_id, [(b"content-type", b"application/json"), *headers])
        if usage is None:
            return Outcome(Usage(estimate, 0, 0), counted_by="gateway")
        return Outcome(usage)

    async def relay_stream(
        self,
        lease: LeaseKeeper,
        send: Send,
        receive: Receive,
        request_id: str,
        response: UpstreamResponse,
        request: OpenAIRequest,
        model: Model,
        admission: Admission,
        headers: list[tuple[bytes, bytes]],
        estimate: int,
    ) -> Outcome:
        """Pass SSE bytes through, counting; end cleanly on upstream faults and disconnects.

        ``lease`` renews the reservation meanwhile, checkpointing the meter's count."""
        meter = StreamMeter(
            ModelRenamer(model.name),
            request.client_include_usage,
            request.client_continuous_usage,
            load_tokenizer(model.tokenizer),
        )
        start = [(b"x-request-id", request_id.encode()), *SSE_HEADERS, *headers]
        await send({"type": "http.response.start", "status": 200, "headers": start})
        watcher = asyncio.ensure_future(_wait_disconnect(receive, asyncio.current_task()))
        lease.progress = meter.progress
        failure: GatewayError | None = None
        status = "ok"
        reserved = admission.max_tokens
        try:
            while data := await response.read_some():  # TimeoutError after the idle timeout
                out = meter.feed(data)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                if meter.done:  # [DONE] relayed: the stream is complete, whatever follows
                    break
                if meter.completion_so_far() > reserved:
                    failure = UpstreamError("stream cut: the upstream exceeded the reserved tokens")
                    break
                if lease.lost:
                    failure = UpstreamError("stream cut: its reservation expired")
                    break
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise
            _uncancel()
            status = "ok" if meter.done else "client_gone"
        except TimeoutError:
            failure = UpstreamTimeout("upstream went silent mid-stream", code="upstream_timeout")
        except OSError as exc:
            failure = UpstreamError(f"upstream connection lost mid-stream: {exc.__class__.__name__}")
        finally:
            watcher.cancel()
            if meter.done:
                response.release()  # back to the pool when the upstream's body has ended
            else:
                response.close()  # aborts the upstream request: vLLM stops generating
        if status == "ok" and failure is None and not meter.done and meter.error is None:
            failure = UpstreamError("upstream closed the stream before it was complete")
        if failure is not None:
            status = "partial"
            await send({"type": "http.response.body", "body": failure.sse_event(), "more_body": False})
        elif status == "ok":
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        if meter.error is not None and status == "ok":
            status = "upstream_error"
        if meter.final is not None and status == "ok":
            return Outcome(meter.final)
        return Outcome(meter.delivered(estimate), status=status, counted_by="gateway")

    def keep_lease(self, key: KeyRef, request_id: str) -> LeaseKeeper:
        """Renew the reservation's lease until :meth:`LeaseKeeper.stop` (see gateway.lease)."""
        lease_ms = int(self.settings.lease_seconds * 1000)

        async def checkpoint(progress: Progress | None) -> bool:
            """Renew the lease, recording what was delivered (the reaper's charge). Redis
            being unreachable is no reason to break a paid request: the next renewal retries."""
            completion, prompt = progress() if progress is not None else (0, None)
            try:
                return await self.quota.checkpoint(
                    request_id=request_id, account_id=key.account_id, key_id=key.key_id,
                    completion_tokens=completion, prompt_tokens=prompt, lease_ms=lease_ms,
                )
            except QuotaUnavailable:
                log.warning("checkpoint of %s skipped: Redis unreachable", request_id)
                return True

        return LeaseKeeper(checkpoint, self.settings.lease_seconds / 3)

    async def settle(
        self, key: KeyRef, model: Model, request_id: str, stream: bool, outcome: Outcome
    ) -> None:
        """Settle now; if Redis is unreachable, keep retrying (this runs as its own task,
        see :meth:`settle_in_background`).

        Never raises: the response is already with the client. Should this process die
        before Redis returns, the reservation's lease expires and the reaper settles it.
        """
        usage = outcome.usage
        endpoint = outcome.endpoint
        settle = functools.partial(
            self.quota.settle,
            request_id=request_id,
            account_id=key.account_id,
            key_id=key.key_id,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            status=outcome.status,
            counted_by=outcome.counted_by,
            stream=stream,
            cluster=endpoint.cluster if endpoint else "",
            endpoint=endpoint.url if endpoint else "",
        )
        try:
            await settle()
        except QuotaUnavailable:
            log.warning("settlement of %s deferred: Redis unreachable", request_id)
            await self._settle_later(request_id, settle)
            return
        except Exception:
            log.exception("settlement of %s failed; its lease will expire it", request_id)
            return
        self.metrics.billed(model.name, usage.prompt_tokens, usage.completion_tokens)

    def settle_in_background(
        self, key: KeyRef, model: Model, request_id: str, stream: bool, outcome: Outcome
    ) -> None:
        """Settle without holding up the request: its answer is already with the client.

        The task belongs to the pipeline, not to the request, so nothing that ends the
        request (a client gone, a server stopping) cuts it short; :meth:`drain` waits for
        the last ones at shutdown.
        """
        task = asyncio.ensure_future(self.settle(key, model, request_id, stream, outcome))
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the settlements under way (retrying included)."""
        if self.settling:
            await asyncio.wait(self.settling, timeout=timeout)

    async def _settle_later(
        self, request_id: str, settle: Callable[[], Awaitable[int | None]]
    ) -> None:
        delay = 0.1
        deadline = time.monotonic() + self.settings.lease_seconds * 10
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                await settle()
            except QuotaUnavailable:
                continue
            log.warning("deferred settlement of %s done", request_id)
            return
        log.error("gave up settling %s; its lease will expire it", request_id)


def _silent(exc: BaseException) -> bool:
    """The first-byte timeout (TimeoutError, an OSError), not a connect timeout."""
    return isinstance(exc, TimeoutError) and not isinstance(exc, UpstreamConnectError)


async def _wait_disconnect(receive: Receive, task: asyncio.Task[object] | None) -> None:
    """Cancel the relaying task when the client goes away (uvicorn's send() stays silent)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if task is not None:
                task.cancel()
            return


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def now_ms() -> int:
    return time.time_ns() // 1_000_000

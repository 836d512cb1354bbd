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

import orjson

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
)
from gateway.lease import LeaseKeeper, Progress
from gateway.metrics import GatewayMetrics
from gateway.openai_request import OpenAIRequest, count_prompt_tokens
from gateway.prompt_size import counted_prompt
from gateway.quota.store import Admission, Charged, QuotaStore
from gateway.relay.http1 import UpstreamConnectError, UpstreamResponse
from gateway.relay.outcome import Outcome
from gateway.relay.upstream import UpstreamClient
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.tokenizers import load_tokenizer

log = logging.getLogger("tokengate.pipeline")

# OpenAI's (and vLLM's) legacy completions API stops at 16 tokens when max_tokens is absent;
# chat has no such default (the rest of the context window, or what the balance pays).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


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
        """Reserve the prompt's honest bound (``size.estimate``) plus the granted max_tokens.

        The window checks and the ceiling use the tokenizer's count (a stand-in's too, so that
        ordinary prompts are not refused because their bytes exceed the window); that count
        is made only when the cheap ``size.bound`` does not already settle the question."""
        tokenizer = load_tokenizer(model.tokenizer)
        size = count_prompt_tokens(request, tokenizer, model)
        choices = request.choices
        window = model.context_window
        if request.kind == "embeddings":
            if size.bound > window and size.longest > window:
                raise BadRequest(
                    f"This model's maximum context length is {window} tokens. However, an input "
                    f"has about {size.longest} tokens. Please shorten it.",
                    param="input",
                    code="context_length_exceeded",
                )
            requested, ceiling = None, 0
        else:
            asked = request.max_tokens
            if asked is not None and asked > window - size.bound and asked > window - size.longest:
                raise BadRequest(
                    f"This model's maximum context length is {window} tokens. However, "
                    f"you requested {asked} completion tokens with about {size.longest} "
                    "in the prompt. Please reduce the prompt or max_tokens.",
                    param="max_tokens",
                    code="context_length_exceeded",
                )
            max_tokens = asked
            if max_tokens is None and request.kind == "completions":
                max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
            # The grant is at most window - prompt: with the bound when the ask fits under it
            # (the same grant, no tokenizing), else with the tokenizer's count.
            prompt = size.bound_estimate
            if max_tokens is None or max_tokens > window - prompt:
                prompt = size.longest_estimate
            ceiling = max(1, window - prompt) * choices
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

    def prompt_counter(self, request: OpenAIRequest, model: Model, admission: Admission
                       ) -> Callable[[], int]:
        """How to count the prompt should the upstream report no usage (called only then):
        the reservation's estimate for an exact tokenizer, else a count by the stand-in."""
        if model.tokenizer_exact:
            return lambda: admission.prompt_tokens
        return functools.partial(counted_prompt, request, load_tokenizer(model.tokenizer), model)

    def upstream_body(self, request: OpenAIRequest, model: Model, admission: Admission) -> bytes:
        body = request.body
        body["model"] = model.served_name
        if request.kind != "embeddings":
            per_choice = admission.max_tokens // request.choices  # >= 1: admit_v3 grants per choice
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = per_choice
            body["stream"] = True  # always a stream upstream, whole answers too: relay.answer
            options = dict(body.get("stream_options") or {})
            options["include_usage"] = True
            options["continuous_usage_stats"] = True
            body["stream_options"] = options
        return orjson.dumps(body)

    async def open_upstream(
        self, model: Model, path: str, body: bytes, affinity: int = 0, request_id: str = "",
        tried: list[Endpoint] | None = None,
    ) -> tuple[Endpoint, UpstreamResponse]:
        """Connect to an endpoint, failing over to another one before the first byte.

        Every attempt sends the same body under the same request id and reservation. A
        connect error, a 5xx or a 429 (saturated) moves on to the router's next pick, which
        avoids the endpoints (and, while it can, the clusters) already tried. Once response
        headers are in, the request stays where it is. ``affinity`` is the prompt's prefix key;
        ``tried`` the endpoints this request already tried (appended to), all attempts
        together bounded by ``upstream_attempts``.
        """
        router = self.router
        tried = [] if tried is None else tried
        error: GatewayError | None = None
        while len(tried) < self.settings.upstream_attempts:
            try:
                endpoint = router.pick(model, affinity, tried)
            except NoHealthyEndpoint:
                if not tried:
                    raise
                break
            tried.append(endpoint)
            router.started(endpoint)
            try:
                response = await self.upstream.post(endpoint, path, body, request_id)
                if response.status < 500 and response.status != 429:
                    router.responded(endpoint)
                    return endpoint, response
                detail = (await response.read())[:300].decode("utf-8", "replace")
                response.release()
            except asyncio.CancelledError:
                router.finished(endpoint, ok=True)  # the request went away, not the endpoint
                raise
            except OSError as exc:
                if _silent(exc):  # connected, then nothing: busy or stuck, and maybe at work on
                    # it, so no retry; not a failure either (health probes tell a dead server)
                    router.saturated(endpoint)
                    router.finished(endpoint, ok=True)
                    self.metrics.upstream_errors.labels(endpoint.cluster, endpoint.url, "timeout").inc()
                    raise UpstreamTimeout(
                        f"upstream {endpoint.cluster} sent no response within "
                        f"{self.settings.first_byte_timeout:g}s",
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
        Credits the balance could not pay (the actual cost beyond the reservation, past
        what was available) are counted and logged: never unbilled silently.
        """
        usage = outcome.usage
        endpoint = outcome.endpoint
        charge = functools.partial(
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
            charged = await charge()
        except QuotaUnavailable:
            log.warning("settlement of %s deferred: Redis unreachable", request_id)
            charged = await self._settle_later(request_id, charge)
        except Exception:
            log.exception("settlement of %s failed; its lease will expire it", request_id)
            return
        if charged is None:
            return  # already settled (or given up on: the reaper settles it)
        if charged.uncollected > 0:
            self.metrics.unpaid(model.name, charged.uncollected)
            log.warning("request %s: %d credits uncollected (actual cost above the reservation, "
                        "balance exhausted)", request_id, charged.uncollected)
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
        self, request_id: str, settle: Callable[[], Awaitable[Charged | None]]
    ) -> Charged | None:
        delay = 0.1
        deadline = time.monotonic() + self.settings.lease_seconds * 10
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            try:
                charged = await settle()
            except QuotaUnavailable:
                continue
            log.warning("deferred settlement of %s done", request_id)
            return charged
        log.error("gave up settling %s; its lease will expire it", request_id)
        return None


def _silent(exc: BaseException) -> bool:
    """The first-byte timeout (TimeoutError, an OSError), not a connect timeout."""
    return isinstance(exc, TimeoutError) and not isinstance(exc, UpstreamConnectError)


def now_ms() -> int:
    return time.time_ns() // 1_000_000

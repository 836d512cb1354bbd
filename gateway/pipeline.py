"""One request, end to end: authenticate -> parse -> admit -> route -> relay -> settle.

:meth:`Pipeline.serve` is the whole path of a /v1 request in one method; a :class:`Call`
carries what it learns on the way. The relays (``gateway.relay``) return what happened (an
:class:`Outcome`); the reservation (``gateway.reservation``) is renewed while the request
runs and settled exactly once when it ends (``finally``), after the last byte reached the
client, so settlement is never in the client's way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.asgi import Receive, Scope, Send, read_body
from gateway.auth import Authenticator, KeyRef, bearer_token
from gateway.cache_salt import CacheSalter
from gateway.catalog import Catalog, Endpoint, Model
from gateway.early_refusal import refuse_beyond_window, refuse_unaffordable
from gateway.errors import (
    BadRequest,
    BalanceUnknown,
    GatewayError,
    NoHealthyEndpoint,
    NotFound,
    UpstreamError,
    UpstreamTimeout,
    upstream_fault,
)
from gateway.flow import FairShares
from gateway.media_urls import check_remote_media
from gateway.metrics import GatewayMetrics
from gateway.openai_request import Kind, OpenAIRequest, parse_request
from gateway.prompt_size import Prompt, collect_prompt, counted_prompt, measure_prompt, prompt_floor
from gateway.quota.store import Admission, QuotaStore
from gateway.redact import redact_url
from gateway.relay.http1 import UpstreamConnectError, UpstreamResponse
from gateway.relay.meter import Usage
from gateway.relay.outcome import Outcome
from gateway.relay.respond import respond
from gateway.relay.upstream import UpstreamClient
from gateway.reservation import ReservationDesk
from gateway.routing.router import Router
from gateway.settings import Settings
from gateway.token_floor import token_floor
from gateway.tokenizers import load_tokenizer
from gateway.usage import COUNTED_BY_GATEWAY, STATUS_UPSTREAM_ERROR

__all__ = ["Call", "Outcome", "Pipeline"]

log = logging.getLogger("tokengate.pipeline")

# OpenAI's (and vLLM's) legacy completions API stops at 16 tokens when max_tokens is absent;
# chat has no such default (the rest of the context window, or what the balance pays).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

# A body this big is checked against the key, the window and the balance before its prompt
# is tokenized (two Redis reads, against milliseconds to seconds of tokenizing): see
# Pipeline.refuse_early. A smaller body goes straight to admission, as it always did.
EARLY_CHECK_BYTES = 16 * 1024

UPSTREAM_PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                                   "embeddings": "/v1/embeddings"}


@dataclass(slots=True)
class Call:
    """One /v1 request on its way through the pipeline; once it is over, the edge reads
    what its metrics need (the model, the time spent waiting on the upstream)."""

    request_id: str
    kind: Kind
    key: KeyRef | None = None
    request: OpenAIRequest | None = None
    model: Model | None = None
    admission: Admission | None = None
    endpoint: Endpoint | None = None  # the last one tried
    broken: Usage | None = None  # what attempts that broke off a whole answer had generated
    outcome: Outcome | None = None  # the relay's, once it answered
    waited: float = 0.0  # seconds spent waiting on the upstream that answered

    @property
    def model_name(self) -> str:
        return self.model.name if self.model is not None else ""

    def ended(self) -> Outcome:
        """What to settle: the relay's outcome, or for a request that got no answer, what its
        broken attempts generated (the upstream did generate it)."""
        if self.outcome is not None:
            return self.outcome
        return Outcome(self.broken or Usage(), status=STATUS_UPSTREAM_ERROR,
                       counted_by=COUNTED_BY_GATEWAY, endpoint=self.endpoint)


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
        self.reservations = ReservationDesk(quota, metrics, settings.lease_seconds,
                                            settings.progress_seconds)
        self.salter = CacheSalter.from_settings(settings)
        self.flow = FairShares(router, self._tier, catalog.routing)

    async def serve(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one /v1 request: its answer goes to ``send``; a GatewayError raised here was
        sent nothing yet (the edge answers it). The key is checked before the body is read."""
        key = call.key = await self.auth.authenticate(bearer_token(scope), scope)
        raw = await read_body(scope, receive, self.settings.max_body_bytes)
        request = call.request = parse_request(call.kind, raw)
        model = call.model = self.model_for(request)
        collected = None
        if len(raw) > EARLY_CHECK_BYTES:  # no tokenizing megabytes for a key that cannot pay
            collected = await self.refuse_early(key, request, model)
        if request.media_urls:  # http(s) media: allowed hosts with public addresses only
            await check_remote_media(request.media_urls, self.catalog.media_hosts)
        turn = await self.flow.turn(model, key.account_id)  # at once unless the model is full
        try:
            await self._serve_admitted(call, key, request, model, collected, send, receive)
        finally:
            turn.release()

    async def _serve_admitted(self, call: Call, key: KeyRef, request: OpenAIRequest, model: Model,
                              collected: Prompt | None, send: Send, receive: Receive) -> None:
        """Reserve, route, relay (failing over while nothing reached the client), settle."""
        admission = call.admission = await self.admit(key, request, model, call.request_id, collected)
        held = self.reservations.hold(key, model, call.request_id, request.stream)
        try:
            if request.kind != "embeddings":  # before the affinity key: it is per account
                request.body["cache_salt"] = self.salter.salt(key.account_id)
            body = self.upstream_body(request, model, admission)
            affinity = self.router.affinity_key(request.body)
            headers, prompt = admission.header_pairs(), self.prompt_counter(request, model, admission)
            tried: list[Endpoint] = []
            while True:  # route, relay; fail over while nothing reached the client
                endpoint, response = await self.open_upstream(
                    model, UPSTREAM_PATHS[request.kind], body, affinity, call.request_id, tried)
                call.endpoint = endpoint
                fault = True  # unless the relay, or its error, says otherwise
                try:
                    outcome = await respond(held, send, receive, call.request_id, response, request,
                                            model, admission.max_tokens, headers, prompt,
                                            self.settings.response_timeout_s)
                    fault = outcome.upstream_fault
                except GatewayError as error:
                    fault = error.endpoint_fault
                    raise
                finally:
                    self.router.finished(endpoint, ok=not fault)
                    call.waited = response.waited
                if outcome.unanswered is None:
                    break
                call.broken = outcome.usage if call.broken is None else call.broken.plus(outcome.usage)
                if len(tried) >= self.settings.upstream_attempts:
                    raise outcome.unanswered
            if call.broken is not None:  # billed with the answer: the upstream did generate it
                outcome.usage = outcome.usage.plus(call.broken)
                outcome.counted_by = COUNTED_BY_GATEWAY
            outcome.endpoint = endpoint
            call.outcome = outcome
        finally:
            held.settle(call.ended())

    async def _tier(self, account_id: str) -> int:
        """The account's package weight, read only when one of its requests must wait."""
        return await self.quota.tier(account_id, int(time.time() * 1000))

    async def list_models(self, token: str | None, scope: Scope | None = None) -> dict[str, object]:
        """/v1/models: the catalog's models the key may use (its own ``models``; null: all),
        for a live key: its record is read every time, so a revoked key lists nothing at
        once, on every worker."""
        _, allowed = await self.auth.live_key(token, scope)
        models = self.catalog.models.values()
        data = [
            {"id": m.name, "object": "model", "created": 0, "owned_by": "tokengate",
             "max_model_len": m.context_window}
            for m in models
            if allowed is None or m.name in allowed
        ]
        return {"object": "list", "data": data}

    async def refuse_early(self, key: KeyRef, request: OpenAIRequest, model: Model) -> Prompt:
        """Before a big prompt is tokenized, refuse what admission surely would: a disabled key,
        a model the key may not use, a prompt whose floor (tokens it takes at least, known
        without tokenizing: ``gateway.token_floor``) cannot fit the window, an account whose
        credits cannot pay for that floor. A key with one credit then never makes a worker
        tokenize megabytes (the body is bounded, and admission, which decides everything
        atomically, still runs for the rest). The balance read counts every live grant,
        whatever its models: it may overstate what the model can draw on, never understate
        it, so nothing admission would accept is refused (``gateway.early_refusal``).
        Returns the prompt as collected, for admission to measure."""
        try:
            await self.auth.check_key(key, model.name)
            prompt = collect_prompt(request, model)
            floor = prompt_floor(prompt, token_floor(model.tokenizer), model)
            refuse_beyond_window(request, model, floor)
            try:
                balance = await self.quota.balance(key.account_id)
            except BalanceUnknown:
                return prompt  # admission answers it (503 until reconciled)
            refuse_unaffordable(request, model, floor.estimate, balance["available"])
        except GatewayError as error:
            self.metrics.refused_early(error.code)
            raise
        return prompt

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

    async def admit(self, key: KeyRef, request: OpenAIRequest, model: Model, request_id: str,
                    collected: Prompt | None = None) -> Admission:
        """Reserve the prompt's honest bound (``size.estimate``) plus the granted max_tokens.

        The window checks and the ceiling use the tokenizer's count (a stand-in's too, so that
        ordinary prompts are not refused because their bytes exceed the window); that count
        is made only when the cheap ``size.bound`` does not already settle the question.
        ``collected``: the request's prompt if :meth:`refuse_early` collected it already."""
        tokenizer = load_tokenizer(model.tokenizer)
        if collected is None:
            collected = collect_prompt(request, model)
        size = measure_prompt(collected, tokenizer, model)
        choices = request.choices
        window = model.context_window
        refuse_beyond_window(request, model, size, "about")
        if request.kind == "embeddings":
            requested, ceiling = None, 0
        else:
            max_tokens = request.max_tokens
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
            per_choice = admission.max_tokens // request.choices  # >= 1: admit_v4 grants per choice
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
                if response.status < 400 or (response.status != 429 and not upstream_fault(response.status)):
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
                    self._upstream_trouble(endpoint, "timeout", "no response head in time")
                    raise UpstreamTimeout(
                        f"the upstream sent no response within {self.settings.first_byte_timeout:g}s",
                        code="upstream_timeout",
                    ) from None
                self._failed(endpoint, "connect")  # refused, reset, connect timeout: next one
                self._upstream_trouble(endpoint, None, f"cannot connect: {exc!r}")
                error = UpstreamError("cannot reach the upstream", code="upstream_unreachable")
                continue
            if response.status == 429:  # saturated: alive, so not a failure; try elsewhere
                router.saturated(endpoint)
                router.finished(endpoint, ok=True)
                self._upstream_trouble(endpoint, "saturated", f"answered 429: {detail!r}")
                error = NoHealthyEndpoint("the upstream is saturated (429)", code="upstream_saturated")
                continue
            self._failed(endpoint, "status")
            self._upstream_trouble(endpoint, None, f"answered {response.status}: {detail!r}",
                                   logging.WARNING)
            # The client learns the status, never the upstream's text nor where it runs: those
            # are in the log and the metrics (docs/errors.md).
            error = UpstreamError(f"the upstream answered {response.status}", code="upstream_error")
        raise error or UpstreamError("no upstream attempt was made")

    def _failed(self, endpoint: Endpoint, kind: str) -> None:
        self.router.finished(endpoint, ok=False)
        self.metrics.upstream_errors.labels(endpoint.cluster, redact_url(endpoint.url), kind).inc()

    def _upstream_trouble(self, endpoint: Endpoint, kind: str | None, what: str,
                          level: int = logging.INFO) -> None:
        """Log (and with ``kind``, count) an upstream's trouble where operators look: its
        text and where it runs are never in the client's answer."""
        if kind is not None:
            self.metrics.upstream_errors.labels(endpoint.cluster, redact_url(endpoint.url), kind).inc()
        log.log(level, "upstream %s (cluster %s) %s", redact_url(endpoint.url), endpoint.cluster, what[:500])

    async def settle(self, key: KeyRef, model: Model, request_id: str, stream: bool,
                     outcome: Outcome) -> None:
        """Settle a request's reservation now (what a held reservation does in the background)."""
        await self.reservations.settle(key, model, request_id, stream, outcome)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the settlements under way (retrying included)."""
        await self.reservations.drain(timeout)


def _silent(exc: BaseException) -> bool:
    """The first-byte timeout (TimeoutError, an OSError), not a connect timeout."""
    return isinstance(exc, TimeoutError) and not isinstance(exc, UpstreamConnectError)


"""Request parsing and validation with vLLM 0.32's error messages and order.

Order as in vLLM: body validation, model check, output-token budget vs
max_model_len, prompt length, then sampling params (max_tokens >= 1).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDictProxy

from .engine import SimState
from .textgen import Seq, render_chat


class ApiError(Exception):
    """An error answered as vLLM's ErrorResponse with ``code`` as HTTP status."""

    def __init__(
        self,
        message: str,
        err_type: str = "BadRequestError",
        code: int = 400,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.err_type, self.code, self.param = message, err_type, code, param


def validation_error(message: str, param: str | None = None) -> ApiError:
    """VLLMValidationError: str() appends the parameter and value."""
    return ApiError(message, "BadRequestError", 400, param)


@dataclass
class Job:
    """A validated generation request, ready to run."""

    chat: bool
    stream: bool
    include_usage: bool
    continuous: bool
    request_id: str
    model: str
    prompt_lens: list[int]
    seqs: list[Seq]
    created: int = field(default_factory=lambda: int(time.time()))
    engine_error: ApiError | None = None  # raised once generation starts (stream: SSE event)

    @property
    def prompt_tokens(self) -> int:
        return sum(self.prompt_lens)


def request_id(body: dict[str, Any], headers: CIMultiDictProxy[str]) -> str:
    """X-Request-Id header, else the body's request_id, else 16 random hex digits."""
    rid = headers.get("X-Request-Id") or body.get("request_id")
    return rid if isinstance(rid, str) and rid else secrets.token_hex(8)


def check_model(state: SimState, body: dict[str, Any]) -> None:
    model = body.get("model")
    names = state.config.served_names
    if model and model not in names:
        raise ApiError(
            f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
            "NotFoundError",
            404,
            "model",
        )


def _usage_flags(state: SimState, body: dict[str, Any]) -> tuple[bool, bool, bool]:
    """_stream_flags, but a server that reports no usage, or never streams, ignores what
    was asked for."""
    stream, include, continuous = _stream_flags(body)
    if state.config.ignore_stream:
        return False, False, False
    if not state.config.report_usage:
        return stream, False, False
    return stream, include, continuous


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool, bool]:
    stream = bool(body.get("stream"))
    opts = body.get("stream_options")
    if opts and not stream:
        raise ApiError(
            "1 validation error:\n  Value error, Stream options can only be "
            "defined when `stream=True`.",
            "Bad Request",
            400,
            "stream_options",
        )
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(
            "1 validation error:\n  stream_options must be an object",
            "Bad Request",
            400,
            "stream_options",
        )
    include = bool(opts and opts.get("include_usage"))
    return stream, include, include and bool(opts and opts.get("continuous_usage_stats"))


def _int_field(body: dict[str, Any], name: str, default: int | None) -> int | None:
    value = body.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ApiError(
            f"1 validation error:\n  {name} must be an integer", "Bad Request", 400, name
        )
    return value


def _limit(state: SimState, prompt_len: int, requested: int | None, param: str) -> int:
    """vLLM's get_max_tokens(): the budget is clamped to the context, not rejected."""
    max_len = state.config.max_model_len
    if prompt_len > max_len:
        shown = min(prompt_len, max_len + 1)  # vLLM tokenizes with max_length=M+1
        qualifier = "at least " if shown == max_len + 1 else ""
        raise validation_error(
            f"This model's maximum context length is {max_len} tokens. However, your prompt "
            f"contains {qualifier}{shown} input tokens, which exceeds this limit even without "
            f"any output tokens. Please reduce the length of the input prompt. "
            f"(parameter=input_tokens, value={shown})",
            "input_tokens",
        )
    limit = max_len - prompt_len if requested is None else min(max_len - prompt_len, requested)
    if state.config.ignore_max_tokens:
        limit = max_len - prompt_len
    if limit < 1:
        raise validation_error(
            f"max_tokens must be at least 1, got {limit}. (parameter=max_tokens, value={limit})",
            "max_tokens",
        )
    return limit


def _check_budget(state: SimState, requested: int | None, param: str) -> None:
    max_len = state.config.max_model_len
    if requested is not None and requested > max_len:
        raise validation_error(
            f"{param}={requested} cannot be greater than max_model_len={max_len}. "
            f"Please request fewer output tokens. (parameter={param}, value={requested})",
            param,
        )


def _n(body: dict[str, Any]) -> int:
    n = _int_field(body, "n", 1)
    if n is None:
        return 1
    if n < 1:
        raise validation_error(f"n must be at least 1, got {n}.")
    return n


def parse_chat(state: SimState, body: dict[str, Any], headers: CIMultiDictProxy[str]) -> Job:
    if "messages" not in body:
        raise ApiError("1 validation error:\n  Field required", "Bad Request", 400, "body.messages")
    stream, include, continuous = _usage_flags(state, body)
    n = _n(body)
    if body.get("max_completion_tokens") is not None:
        param, requested = "max_completion_tokens", _int_field(body, "max_completion_tokens", None)
    else:
        param, requested = "max_tokens", _int_field(body, "max_tokens", None)
    check_model(state, body)
    _check_budget(state, requested, param)
    try:
        prompt = render_chat(body["messages"], body.get("add_generation_prompt", True) is True)
    except ValueError as exc:
        raise ApiError(
            f"1 validation error:\n  {exc}", "Bad Request", 400, "body.messages"
        ) from exc
    plen = len(state.model.encode(prompt))
    limit = _limit(state, plen, requested, param)
    key = prompt.encode()
    seqs = [state.model.generate(key, i, 0, limit, body.get("ignore_eos") is True) for i in range(n)]
    return Job(
        True,
        stream,
        include,
        continuous,
        f"chatcmpl-{request_id(body, headers)}",
        state.config.name,
        [plen],
        seqs,
    )


def _prompts(body: dict[str, Any]) -> list[str | list[int]]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompt):
            return list(prompt)
    if prompt is None:
        raise validation_error("Either prompt or prompt_embeds must be provided and non-empty.")
    raise ApiError(
        "1 validation error:\n  prompt must be a string, a list of strings, a list "
        "of token ids or a list of token id lists",
        "Bad Request",
        400,
        "body.prompt",
    )


def parse_completion(state: SimState, body: dict[str, Any], headers: CIMultiDictProxy[str]) -> Job:
    stream, include, continuous = _usage_flags(state, body)
    n = _n(body)
    requested = _int_field(body, "max_tokens", 16)  # CompletionRequest's default
    prompts = _prompts(body)
    check_model(state, body)
    _check_budget(state, requested, "max_tokens")
    lens: list[int] = []
    seqs: list[Seq] = []
    engine_error = None
    for p_idx, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            ids, key = state.model.encode(prompt), prompt.encode()
        else:
            ids, key = prompt, b"ids:" + ",".join(map(str, prompt)).encode()
        limit = _limit(state, len(ids), requested, "max_tokens")
        if not ids:
            engine_error = validation_error("The decoder prompt cannot be empty")
        lens.append(len(ids))
        seqs += [state.model.generate(key, i, p_idx, limit, body.get("ignore_eos") is True) for i in range(n)]
    for i, seq in enumerate(seqs):
        seq.index = i  # prompt_idx * n + choice, as vLLM numbers batch choices
    return Job(
        False,
        stream,
        include,
        continuous,
        f"cmpl-{request_id(body, headers)}",
        state.config.name,
        lens,
        seqs,
        engine_error=engine_error,
    )

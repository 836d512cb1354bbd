"""Parse an OpenAI request body just enough to meter and route it (no pydantic per request).

We check the body's top-level fields against the route's allowlist
(``gateway.request_fields``: steering and unknown fields refused, a few OpenAI-only ones
dropped), read the fields that admission, routing and counting need, refuse bad input with
a clear 400 naming the parameter, collect the media URLs that are not ``data:`` (the
pipeline checks them against the catalog before admission: ``gateway.media_urls``), and
leave the values of everything else for the upstream to judge. Counting the prompt
(``count_prompt_tokens``) lives in ``gateway.prompt_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import BadRequest
from gateway.media_urls import remote_media_urls
from gateway.prompt_size import PromptRules, PromptSize, count_prompt_tokens, prompt_list
from gateway.request_fields import check_fields

__all__ = ["Kind", "OpenAIRequest", "PromptRules", "PromptSize", "count_prompt_tokens", "parse_request"]

Kind = Literal["chat", "completions", "embeddings"]


@dataclass(slots=True)
class OpenAIRequest:
    kind: Kind
    body: dict[str, Any]
    model: str
    stream: bool
    n: int
    max_tokens: int | None
    client_include_usage: bool
    client_continuous_usage: bool
    choices: int  # sequences generated: n per prompt (several completions prompts); 1 for embeddings
    media_urls: tuple[str, ...] = ()  # media URLs other than data: ones, checked before admission


def parse_request(kind: Kind, raw: bytes) -> OpenAIRequest:
    """Validate the fields the gateway relies on; raise BadRequest naming the culprit."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON (UTF-8): {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    check_fields(kind, body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", param="model")
    stream = _optional(body, "stream", bool, False)
    n = _optional(body, "n", int, 1)
    if not 1 <= n <= 128:
        raise BadRequest("'n' must be between 1 and 128", param="n")
    max_tokens = _max_tokens(body, kind)
    best_of = _optional(body, "best_of", int, None)
    if best_of is not None and best_of > n:  # the reservation pays for n sequences, not best_of
        raise BadRequest(f"'best_of' ({best_of}) greater than 'n' ({n}) is not supported",
                         param="best_of", code="unsupported_value")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    options = options or {}
    _require_input(body, kind)
    prompts = len(prompt_list(body["prompt"])) if kind == "completions" else 1
    media_urls = remote_media_urls(body["messages"]) if kind == "chat" else ()
    return OpenAIRequest(
        kind=kind,
        body=body,
        model=model,
        stream=stream and kind != "embeddings",
        n=n,
        max_tokens=max_tokens,
        client_include_usage=bool(options.get("include_usage")),
        client_continuous_usage=bool(options.get("continuous_usage_stats")),
        choices=1 if kind == "embeddings" else n * prompts,
        media_urls=media_urls,
    )


def _optional(body: dict[str, Any], name: str, typ: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise BadRequest(f"'{name}' must be of type {typ.__name__}", param=name)
    return value


def _max_tokens(body: dict[str, Any], kind: Kind) -> int | None:
    if kind == "embeddings":
        return None
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = _optional(body, name, int, None)
    if value is not None and value < 1:
        raise BadRequest(f"'{name}' must be at least 1, got {value}", param=name)
    return value  # type: ignore[no-any-return]


def _require_input(body: dict[str, Any], kind: Kind) -> None:
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty array", param="messages")
        if not all(isinstance(m, dict) for m in messages):
            raise BadRequest("each message must be an object", param="messages")
    elif kind == "completions":
        if not isinstance(body.get("prompt"), str | list) or body.get("prompt") == []:
            raise BadRequest("'prompt' must be a string or a non-empty array", param="prompt")
    elif not isinstance(body.get("input"), str | list) or body.get("input") in ("", []):
        raise BadRequest("'input' must be a non-empty string or array", param="input")


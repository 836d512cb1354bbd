"""Parse an OpenAI request body just enough to meter and route it (no pydantic per request).

We read the fields that admission, routing and counting need, refuse bad input with a
clear 400 naming the parameter, and leave everything else for the upstream to judge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.errors import BadRequest
from gateway.tokenizers import Tokenizer

Kind = Literal["chat", "completions", "embeddings"]

# Chat templates add tokens per message (role markers, separators) and per request (the
# assistant's turn, default system prompts such as Qwen's); these bounds exceed common ones.
PER_MESSAGE_OVERHEAD = 16
PER_REQUEST_OVERHEAD = 32


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


def parse_request(kind: Kind, raw: bytes) -> OpenAIRequest:
    """Validate the fields the gateway relies on; raise BadRequest naming the culprit."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON (UTF-8): {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", param="model")
    stream = _optional(body, "stream", bool, False)
    n = _optional(body, "n", int, 1)
    if not 1 <= n <= 128:
        raise BadRequest("'n' must be between 1 and 128", param="n")
    max_tokens = _max_tokens(body, kind)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", param="stream_options")
    options = options or {}
    _require_input(body, kind)
    prompts = len(_prompts(body["prompt"])) if kind == "completions" else 1
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


@dataclass(frozen=True, slots=True)
class PromptSize:
    """Token counts of a request's prompt(s), by the model's tokenizer."""

    longest: int  # content tokens of the longest prompt (what must fit the context window)
    longest_estimate: int  # that prompt's upper bound, template overhead included
    estimate: int  # upper bound of all prompts together (what the reservation charges)


def count_prompt_tokens(request: OpenAIRequest, tokenizer: Tokenizer) -> PromptSize:
    """The prompt sizes of a request; several completions prompts or embedding inputs are
    separate sequences, each of which must fit the window, and all of which are billed."""
    body = request.body
    if request.kind == "chat":
        content = sum(_message_tokens(m, tokenizer) for m in body["messages"])
        for extra in ("tools", "functions", "response_format"):
            if body.get(extra):
                content += len(tokenizer.encode(orjson.dumps(body[extra]).decode()))
        estimate = content + PER_MESSAGE_OVERHEAD * len(body["messages"]) + PER_REQUEST_OVERHEAD
        return PromptSize(content, estimate, estimate)
    key = "prompt" if request.kind == "completions" else "input"
    sizes = [_prompt_tokens(p, tokenizer) for p in _prompts(body[key])]
    longest = max(sizes)
    return PromptSize(longest, longest + PER_REQUEST_OVERHEAD, sum(sizes) + PER_REQUEST_OVERHEAD)


def _prompts(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one prompt given as token ids
    return list(value)


def _prompt_tokens(prompt: Any, tokenizer: Tokenizer) -> int:
    if isinstance(prompt, str):
        return len(tokenizer.encode(prompt))
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise BadRequest("each prompt must be a string or an array of token ids", param="prompt")


def _message_tokens(message: dict[str, Any], tokenizer: Tokenizer) -> int:
    total = 0
    for key, value in message.items():
        if isinstance(value, str):
            total += len(tokenizer.encode(value))
        elif key == "content" and isinstance(value, list):
            for part in value:
                text = part.get("text") if isinstance(part, dict) else None
                total += len(tokenizer.encode(text)) if isinstance(text, str) else 0
        elif value is not None:
            total += len(tokenizer.encode(orjson.dumps(value).decode()))
    return total

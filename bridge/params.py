"""An OpenAI chat request as litellm's arguments.

The data plane has checked the request's fields against its allowlist (OpenAI's and vLLM's);
a provider takes fewer. A field the provider cannot honour is refused with 400 naming it,
as OpenAI refuses an unknown one, rather than dropped: a client asking for ``logprobs`` or
``n: 3`` must not be served something else. ``cache_salt`` (the data plane's per-account
salt of vLLM's prefix cache) is dropped: a provider has no such field. The call always
streams with usage: a client that leaves cancels it, and what was generated is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import litellm

from bridge.errors import BridgeError
from bridge.target import Target
from gateway.catalog import Model

_OURS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens"})
_DROPPED = frozenset({"cache_salt"})


@dataclass(frozen=True, slots=True)
class Call:
    """What the bridge asks litellm, and how the client wants the answer."""

    arguments: dict[str, Any]
    stream: bool
    max_tokens: int | None
    include_usage: bool  # the usage trailer
    continuous_usage: bool  # the running usage on every chunk (the data plane asks it)


def supported(target: Target, model: Model) -> frozenset[str]:
    """The OpenAI parameters litellm maps for this provider and model."""
    names = litellm.get_supported_openai_params(model=target.provider.model_id(model.served_name),
                                                custom_llm_provider=target.provider.name)
    return frozenset(names or ())


def build_call(body: dict[str, Any], target: Target, model: Model) -> Call:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BridgeError(400, "messages must be a non-empty array", "invalid_request", "messages")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise BridgeError(400, "max_tokens must be a positive integer", "invalid_request", "max_tokens")
    allowed = supported(target, model)
    extra: dict[str, Any] = {}
    for name, value in body.items():
        if name in _OURS or name in _DROPPED or value is None:
            continue
        if name == "n" and value == 1:
            continue
        if name not in allowed:
            raise BridgeError(400, f"Unsupported parameter for this model: {name}",
                              "unsupported_parameter", name)
        extra[name] = value
    options = body.get("stream_options") or {}
    options = options if isinstance(options, dict) else {}
    arguments: dict[str, Any] = {
        **target.provider.options,
        **extra,
        "model": target.litellm_model(model),
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens is not None:
        arguments["max_tokens"] = max_tokens
    if target.api_key:
        arguments["api_key"] = target.api_key
    if target.provider.api_base:
        arguments["api_base"] = target.provider.api_base
    return Call(arguments, bool(body.get("stream")), max_tokens,
                bool(options.get("include_usage")), bool(options.get("continuous_usage_stats")))

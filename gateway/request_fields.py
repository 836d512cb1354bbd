"""Which top-level request fields a route accepts, and what becomes of the others.

Every /v1 body is checked against an explicit allowlist per route before anything else
reads it: OpenAI's documented fields plus vLLM's documented sampling and rendering extras.
A field outside it is

- **refused** (400, ``unsupported_parameter``, ``param`` = the field) when it steers the
  server rather than the generation: queue priority, disaggregated-serving transfer
  parameters, the prefix-cache salt (the gateway sets its own per account), request and
  session ids, server-side logits processors and extension arguments (``STEERING_FIELDS``);
- **dropped** when OpenAI documents it but vLLM has no use for it (``DROPPED_FIELDS``:
  ``store``, ``metadata``, ``service_tier``...): clients written for OpenAI keep working
  and the upstream never sees fields a later vLLM might give a meaning;
- **refused** as unknown otherwise (400, ``unsupported_parameter``), as OpenAI does.

The fields that make the prompt unknowable (``prompt_rules.UNKNOWABLE_FIELDS``: a chat
template of the request's own...) are on the allowlist and refused afterwards unless the
model's catalog entry allows them (``prompt_size``). The list is documented in
docs/models-yaml.md ("Request fields"); keep the two in step.

The check is one set difference of the body's keys against a frozenset (in C): nothing
more runs for an ordinary request.
"""

from __future__ import annotations

from typing import Any, Literal

from gateway.errors import BadRequest
from gateway.prompt_rules import UNKNOWABLE_FIELDS

RouteKind = Literal["chat", "completions", "embeddings"]

# vLLM's sampling extras, shared by chat and completions (vLLM's `--8<-- sampling-params`).
_SAMPLING = frozenset(
    {
        "top_k",
        "min_p",
        "repetition_penalty",
        "length_penalty",
        "use_beam_search",
        "stop_token_ids",
        "include_stop_str_in_output",
        "ignore_eos",
        "min_tokens",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "truncate_prompt_tokens",
        "truncation_side",
        "prompt_logprobs",
        "logprob_token_ids",
        "allowed_token_ids",
        "bad_words",
        "add_special_tokens",
        "structured_outputs",
        "guided_json",
        "guided_regex",
        "guided_choice",
        "guided_grammar",
        "guided_decoding_backend",
        "guided_whitespace_pattern",
        "structural_tag",
        "return_tokens_as_token_ids",
        "return_token_ids",
        "thinking_token_budget",
        "repetition_detection",
        "stream_interval",
    }
)
# What both generating routes share with OpenAI (`best_of` only with best_of <= n: the
# reservation pays for n sequences; openai_request checks it).
_GENERATION = (
    frozenset(
        {
            "model",
            "stream",
            "stream_options",
            "n",
            "best_of",
            "max_tokens",
            "frequency_penalty",
            "presence_penalty",
            "logit_bias",
            "logprobs",
            "seed",
            "stop",
            "temperature",
            "top_p",
            "user",
            "response_format",
        }
    )
    | _SAMPLING
    | frozenset(UNKNOWABLE_FIELDS)
)

FORWARDED_FIELDS: dict[RouteKind, frozenset[str]] = {
    "chat": _GENERATION
    | frozenset(
        {
            "messages",
            "max_completion_tokens",
            "top_logprobs",
            "tools",
            "tool_choice",
            "parallel_tool_calls",
            "functions",
            "function_call",
            "reasoning_effort",
            "include_reasoning",
            "echo",
            "add_generation_prompt",
            "continue_final_message",
            "documents",
        }
    ),
    "completions": _GENERATION | frozenset({"prompt", "suffix", "echo"}),
    "embeddings": frozenset(
        {
            "model",
            "input",
            "encoding_format",
            "dimensions",
            "user",
            "truncate_prompt_tokens",
            "add_special_tokens",
            "normalize",
            "embed_dtype",
            "endianness",
            "use_activation",
            "messages",  # refused by prompt_size with a message of its own ("send the text as input")
        }
    ),
}

# OpenAI documents these; vLLM ignores them: accepted, not forwarded.
DROPPED_FIELDS: frozenset[str] = frozenset(
    {
        "store",
        "metadata",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "prediction",
        "web_search_options",
        "modalities",
        "audio",
        "verbosity",
    }
)

# Fields that steer the upstream server itself: refused whatever their value.
STEERING_FIELDS: dict[str, str] = {
    "priority": "it would move the request ahead of other customers' in the upstream's queue",
    "kv_transfer_params": "disaggregated-serving transfer parameters name hosts inside the serving network",
    "ec_transfer_params": "encoder-cache transfer parameters name hosts inside the serving network",
    "cache_salt": "the gateway salts every account's prefix cache itself",
    "request_id": "the gateway names each request upstream (the x-request-id header is echoed back)",
    "session_id": "upstream session ids are shared by every customer of the server",
    "vllm_xargs": "extension arguments are the operator's, not a request's",
    "logits_processors": "logits processors are loaded and run on the server",
}


def check_fields(kind: RouteKind, body: dict[str, Any]) -> None:
    """Refuse steering and unknown fields; drop the ones vLLM ignores (``body`` is edited)."""
    extra = body.keys() - FORWARDED_FIELDS[kind]
    if not extra:
        return
    for name in sorted(extra):  # the same field is named whatever the body's order
        if name in DROPPED_FIELDS:
            del body[name]
        elif name in STEERING_FIELDS:
            raise BadRequest(
                f"'{name}' is not accepted: {STEERING_FIELDS[name]}", param=name, code="unsupported_parameter"
            )
        else:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise BadRequest(
                f"Unrecognized request argument supplied: {shown}", param=shown, code="unsupported_parameter"
            )

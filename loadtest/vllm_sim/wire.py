"""Byte-exact vLLM 0.32 wire shapes, built from precomputed fragments.

Mirrors vllm/entrypoints/openai/{chat_completion,completion}/serving.py:
stream chunks are ``model_dump_json(exclude_unset=True)`` of pydantic models,
so only the fields vLLM passes explicitly appear, in class-field order; the
trailing usage chunk adds ``exclude_none=True``; non-streaming bodies are a
full ``model_dump()`` rendered compactly by Starlette's JSONResponse.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

from .textgen import Seq

DONE = b"data: [DONE]\n\n"
_NULLS = b'"logprobs":null,"finish_reason":null'


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> bytes:
    """vLLM's ErrorResponse: {"error": {message, type, param, code}}."""
    error = {"message": message, "type": err_type, "param": param, "code": code}
    return orjson.dumps({"error": error})


def stream_error_event(message: str, err_type: str, code: int, param: str | None) -> bytes:
    """An error raised inside vLLM's stream generator: json.dumps (with spaces)."""
    import json

    error = {"message": message, "type": err_type, "param": param, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


def status_error_type(status: int) -> str:
    """The error ``type`` vLLM would pair with an HTTP status (fault injection)."""
    known = {
        400: "BadRequestError",
        404: "NotFoundError",
        500: "InternalServerError",
        501: "NotImplementedError",
        503: "ServiceUnavailableError",
    }
    if status in known:
        return known[status]
    try:
        return HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "") + "Error"
    except ValueError:
        return "InternalServerError"


def usage_json(prompt: int, completion: int, tail: bytes = b"") -> bytes:
    """UsageInfo fields in class order: prompt_tokens, total_tokens, completion_tokens."""
    return b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d%s}' % (
        prompt,
        prompt + completion,
        completion,
        tail,
    )


class StreamFormat:
    """Per-request chunk templates; a token chunk is three concatenations."""

    def __init__(
        self, chat: bool, request_id: str, created: int, model: str, vocab_json: list[bytes]
    ) -> None:
        self.chat = chat
        self.vocab_json = vocab_json
        obj = b"chat.completion.chunk" if chat else b"text_completion"
        self.head = b'data: {"id":%s,"object":"%s","created":%d,"model":%s,"choices":' % (
            orjson.dumps(request_id),
            obj,
            created,
            orjson.dumps(model),
        )
        self._pre: dict[int, bytes] = {}
        if chat:
            self.mid = b'"},' + _NULLS + b',"token_ids":null}]'
            self.end_mid = (
                b'"},"logprobs":null,"finish_reason":"%s","stop_reason":null,"token_ids":null}]'
            )
        else:
            self.mid = (
                b'",' + _NULLS + b',"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]'
            )
            self.end_mid = (
                b'","logprobs":null,"finish_reason":"%s","stop_reason":null,'
                b'"prompt_token_ids":null,"token_ids":null}]'
            )
        # Chat continuous usage passes completion_tokens_details=None explicitly.
        self.usage_tail = b',"completion_tokens_details":null' if chat else b""

    def _prefix(self, index: int) -> bytes:
        pre = self._pre.get(index)
        if pre is None:
            field = b'"delta":{"content":"' if self.chat else b'"text":"'
            pre = self._pre[index] = self.head + b'[{"index":%d,%s' % (index, field)
        return pre

    def role_chunk(self, index: int, usage_prompt: int | None) -> bytes:
        """Chat only: the first chunk per choice (role + empty content)."""
        body = self.head + (
            b'[{"index":%d,"delta":{"role":"assistant","content":""},' % index + _NULLS + b"}]"
        )
        if usage_prompt is not None:
            body += b',"usage":' + usage_json(usage_prompt, 0, self.usage_tail)
        return body + b',"prompt_token_ids":null,"prompt_text":null}\n\n'

    def token_chunk(self, seq: Seq, step: int, usage_prompt: int | None) -> bytes:
        """Chunk for token ``step`` of ``seq``; the last one carries finish_reason."""
        last = step == seq.ntokens - 1
        piece = self.vocab_json[seq.words[step]] if step < len(seq.words) else b""
        mid = self.end_mid % seq.finish.encode() if last else self.mid
        if usage_prompt is None:
            return self._prefix(seq.index) + piece + mid + b"}\n\n"
        usage = usage_json(usage_prompt, step + 1, self.usage_tail)
        return self._prefix(seq.index) + piece + mid + b',"usage":' + usage + b"}\n\n"

    def usage_chunk(self, prompt: int, completion: int) -> bytes:
        """The include_usage trailer: choices=[] and usage as the last field."""
        return self.head + b'[],"usage":' + usage_json(prompt, completion) + b"}\n\n"


def chat_response(
    request_id: str, created: int, model: str, texts: list[str], seqs: list[Seq], prompt_tokens: int,
    usage: bool = True,
) -> bytes:
    """Non-streaming ChatCompletionResponse.model_dump()."""
    choices = [
        {
            "index": s.index,
            "message": {
                "role": "assistant",
                "content": t,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": s.finish,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
        for s, t in zip(seqs, texts, strict=True)
    ]
    body = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": full_usage(prompt_tokens, sum(s.ntokens for s in seqs)),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "prompt_text": None,
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    if not usage:
        del body["usage"]
    return orjson.dumps(body)


def completion_response(
    request_id: str, created: int, model: str, texts: list[str], seqs: list[Seq], prompt_tokens: int,
    usage: bool = True,
) -> bytes:
    """Non-streaming CompletionResponse.model_dump()."""
    choices = [
        {
            "index": s.index,
            "text": t,
            "logprobs": None,
            "finish_reason": s.finish,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for s, t in zip(seqs, texts, strict=True)
    ]
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": full_usage(prompt_tokens, sum(s.ntokens for s in seqs)),
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
    if not usage:
        del body["usage"]
    return orjson.dumps(body)


def full_usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }

"""Pipeline.admit: the reservation holds the honest bound; the window checks keep the
tokenizer's count, so a stand-in's byte bound never refuses a prompt that fits."""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest

from gateway.auth import KeyRef
from gateway.catalog import Model, parse_catalog
from gateway.errors import BadRequest
from gateway.openai_request import Kind, parse_request
from gateway.pipeline import Pipeline
from gateway.prompt_rules import PER_MESSAGE_OVERHEAD, PER_REQUEST_OVERHEAD, byte_bound
from gateway.settings import Settings
from gateway.tokenizers import load_tokenizer

CATALOG = """
clusters:
  - name: a
    endpoints: [{url: "http://127.0.0.1:9"}]
models:
  - name: stand-in
    tokenizer: tiktoken:cl100k_base
    context_window: 1000
    price: {input: 1, output: 1}
    deployments: [a]
  - name: exact
    tokenizer: tiktoken:cl100k_base
    tokenizer_exact: true
    context_window: 1000
    price: {input: 1, output: 1}
    deployments: [a]
"""
OVERHEAD = PER_MESSAGE_OVERHEAD + PER_REQUEST_OVERHEAD


class FakeQuota:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def admit(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return kwargs


def pipeline() -> tuple[Pipeline, FakeQuota, dict[str, Model]]:
    quota = FakeQuota()
    catalog = parse_catalog(CATALOG)
    none = cast(Any, None)
    return Pipeline(Settings(), catalog, none, cast(Any, quota), none, none, none), quota, catalog.models


async def admit(model: str, kind: Kind = "chat", **body: Any) -> dict[str, Any]:
    pipe, quota, models = pipeline()
    request = parse_request(kind, orjson.dumps({"model": model, **body}))
    await pipe.admit(KeyRef("k", "a"), request, models[model], "req-1")
    return quota.calls[0]


ENGLISH = "The river runs past the city and on to the sea. " * 40  # ~2,000 bytes, ~480 tokens
CJK = "长江流经武汉。" * 30


async def test_stand_in_reserves_bytes_but_fits_the_window_by_its_count() -> None:
    messages = [{"role": "user", "content": ENGLISH}]
    call = await admit("stand-in", messages=messages, max_tokens=300)
    assert call["prompt_tokens"] == byte_bound(ENGLISH) + byte_bound("user") + OVERHEAD > 1000
    assert call["max_tokens"] == 300  # bytes exceed the window; the stand-in's count does not
    tokens = len(load_tokenizer("tiktoken:cl100k_base").encode(ENGLISH)) + 1
    assert call["max_tokens_ceiling"] == 1000 - tokens - OVERHEAD
    with pytest.raises(BadRequest) as caught:
        await admit("stand-in", messages=messages, max_tokens=1000 - tokens + 1)
    assert caught.value.code == "context_length_exceeded"


class Untouchable:
    def encode(self, text: str) -> list[int]:
        raise AssertionError("tokenized although the byte bound settled it")

    def decode(self, tokens: list[int]) -> str:
        raise AssertionError


async def test_no_tokenizing_when_the_bound_already_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.pipeline.load_tokenizer", lambda spec: Untouchable())
    call = await admit("stand-in", messages=[{"role": "user", "content": CJK}], max_tokens=10)
    assert call["prompt_tokens"] == byte_bound(CJK) + byte_bound("user") + OVERHEAD
    assert call["max_tokens_ceiling"] == 1000 - (byte_bound(CJK) + byte_bound("user") + OVERHEAD)


async def test_exact_tokenizer_reserves_its_count() -> None:
    call = await admit("exact", messages=[{"role": "user", "content": CJK}])
    tokens = len(load_tokenizer("tiktoken:cl100k_base").encode(CJK)) + 1
    assert call["prompt_tokens"] == tokens + OVERHEAD
    assert call["max_tokens"] is None and call["max_tokens_ceiling"] == 1000 - tokens - OVERHEAD


async def test_completions_default_and_several_prompts() -> None:
    call = await admit("stand-in", "completions", prompt=[CJK, "hi"], n=2)
    assert call["prompt_tokens"] == byte_bound(CJK) + byte_bound("hi") + PER_REQUEST_OVERHEAD + 2
    assert call["max_tokens"] == 16 * 4 and call["choices"] == 4

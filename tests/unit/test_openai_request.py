# ruff: noqa: RUF001  (Chinese text keeps its fullwidth punctuation)
"""Prompt counting: the reservation's bound covers what any upstream tokenizer can count.

A stand-in tokenizer (tiktoken in front of Qwen or Llama) reserves the byte bound; the
model's own tokenizer reserves its count. Everything a template renders is counted, and what
cannot be bounded (unpriced media, unknown parts, a request's own template) is refused.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

from gateway.errors import BadRequest
from gateway.openai_request import Kind, PromptSize, count_prompt_tokens, parse_request
from gateway.prompt_rules import (
    LENGTHENING,
    PER_MESSAGE_OVERHEAD,
    PER_REQUEST_OVERHEAD,
    PER_TOOL_CALL_OVERHEAD,
    TOOLS_OVERHEAD,
    MediaLimits,
    byte_bound,
    lengthening,
)
from gateway.tokenizers import load_tokenizer

CL100K = load_tokenizer("tiktoken:cl100k_base")
O200K = load_tokenizer("tiktoken:o200k_base")
BYTES = load_tokenizer("bytes")

SAMPLES = {
    "cjk": "长江是中国第一大河，全长六千三百多公里。武汉位于长江与汉江的交汇处。" * 20,
    "digits": "3141592653 5897932384 6264338327 9502884197 1693993751 " * 20,
    "emoji": "🙂👍🏽🚀🇨🇳 👨‍👩‍👧‍👦 " * 20,
    "compat": "ﷺ ㍻ ﬃ שּׁ ΐ Å ｱｲｳ " * 20,  # NFC/NFKC lengthen these
}


@dataclass(frozen=True)
class Rules:
    name: str = "m"
    tokenizer_exact: bool = False
    media: MediaLimits = field(default_factory=MediaLimits)
    allowed_fields: frozenset[str] = field(default_factory=frozenset)


STAND_IN = Rules()
EXACT = Rules(tokenizer_exact=True)


def _corpus() -> list[str]:
    words = ["the", "river", "city", "token", "长江", "武汉", "宜昌", "digits", "12345", "67890", "café",
             "naïve", "🙂", "code", "def", "return"]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(300)]


@cache
def qwen_like() -> HFTokenizer:
    """A byte-level BPE after NFC (how Qwen2's tokenizer.json is built), trained here."""
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


@cache
def sentencepiece_like() -> HFTokenizer:
    """A byte-fallback BPE after NFKC with a leading '▁' (SentencePiece's shape), trained here."""
    tok = HFTokenizer(models.BPE(byte_fallback=True))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=900, special_tokens=[f"<0x{i:02X}>" for i in range(256)], show_progress=False))
    return tok


def counts(text: str) -> dict[str, int]:
    return {
        "cl100k": len(CL100K.encode(text)),
        "o200k": len(O200K.encode(text)),
        "bytes": len(BYTES.encode(text)),
        "qwen-like": len(qwen_like().encode(text, add_special_tokens=False).ids),
        "sentencepiece-like": len(sentencepiece_like().encode(text, add_special_tokens=False).ids),
    }


@pytest.mark.parametrize("name", SAMPLES)
def test_byte_bound_covers_real_tokenizers_on_hard_text(name: str) -> None:
    text = SAMPLES[name]
    bound = byte_bound(text)
    assert all(count <= bound for count in counts(text).values()), (counts(text), bound)
    assert counts(text)["cl100k"] < bound  # the stand-in alone would have held less


def test_normalization_can_lengthen_text_and_the_bound_follows() -> None:
    text = "\ufdfa"  # 3 bytes; NFKC makes it 33, which byte fallback spells out
    assert byte_bound(text) == len("صلى الله عليه وسلم".encode()) + 1
    assert len(sentencepiece_like().encode(text, add_special_tokens=False).ids) == byte_bound(text)
    hebrew = "\ufb2c"  # 3 bytes; NFC makes it 6
    assert len(qwen_like().encode(hebrew, add_special_tokens=False).ids) > len(hebrew.encode()) + 1
    assert len(qwen_like().encode(hebrew, add_special_tokens=False).ids) <= byte_bound(hebrew)


LENGTHENERS = sorted(LENGTHENING)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=8), st.sampled_from(LENGTHENERS),
                          st.sampled_from(["\uff0c", "\uff76\uff9e", "e\u0301", "\u1100\u1161", "가"])),
                max_size=30).map("".join))
def test_byte_bound_covers_both_normal_forms(text: str) -> None:
    """The bound normalizes only texts holding a character that can lengthen them: that
    shortcut must never miss a lengthening (random mixes with combining marks included)."""
    for form in ("NFC", "NFKC"):
        assert len(unicodedata.normalize(form, text).encode()) + 1 <= byte_bound(text), form


def test_the_lengthening_characters_are_all_in_the_scanned_planes() -> None:
    everything = ((0x80, 0xD800), (0xE000, 0x110000))
    assert lengthening(everything) == LENGTHENING
    assert "\ufb2c" in LENGTHENING and "\ufdfa" in LENGTHENING and "\uff0c" not in LENGTHENING


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_byte_bound_property(text: str) -> None:
    bound = byte_bound(text)
    assert len(text.encode()) + 1 <= bound
    assert len(BYTES.encode(text)) + 1 <= bound
    assert all(count <= bound for count in counts(text).values()), (text, counts(text), bound)


# --- what is counted -------------------------------------------------------------------


def chat(**body: Any) -> Any:
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    return parse_request("chat", orjson.dumps({"model": "m", **body}))


def size(request: Any, rules: Rules = STAND_IN, tokenizer: Any = CL100K) -> PromptSize:
    return count_prompt_tokens(request, tokenizer, rules)


def test_stand_in_reserves_the_byte_bound_and_keeps_its_count_for_the_window() -> None:
    text = SAMPLES["cjk"]
    got = size(chat(messages=[{"role": "user", "content": text}]))
    overhead = PER_MESSAGE_OVERHEAD + PER_REQUEST_OVERHEAD
    assert got.overhead == overhead
    assert got.estimate == byte_bound(text) + byte_bound("user") + overhead
    assert got.bound == got.estimate - overhead
    assert got.longest == len(CL100K.encode(text)) + len(CL100K.encode("user")) < got.bound


def test_exact_tokenizer_reserves_its_own_count() -> None:
    text = SAMPLES["cjk"]
    got = size(chat(messages=[{"role": "user", "content": text}]), EXACT, O200K)
    content = len(O200K.encode(text)) + len(O200K.encode("user"))
    assert (got.longest, got.bound, got.estimate) == (content, content, content + got.overhead)
    by_bytes = size(chat(messages=[{"role": "user", "content": text}]), EXACT, BYTES)
    assert by_bytes.bound == len(text.encode()) + len(b"user")


def test_tools_functions_documents_and_response_format_are_counted() -> None:
    plain = size(chat()).estimate
    tool = {"type": "function", "function": {"name": "weather", "description": "天气 in a city",
                                             "parameters": {"type": "object", "properties": {
                                                 "city": {"type": "string"}}}}}
    with_tools = size(chat(tools=[tool, tool]))
    dumped = orjson.dumps([tool, tool])
    assert with_tools.estimate >= plain + TOOLS_OVERHEAD + len(dumped)
    assert with_tools.overhead > size(chat()).overhead + TOOLS_OVERHEAD
    docs = [{"title": "长江", "text": "全长六千三百多公里" * 10}]
    assert size(chat(documents=docs)).estimate > plain + len(orjson.dumps(docs))
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    assert size(chat(response_format=schema)).estimate > plain + len(orjson.dumps(schema))
    assert size(chat(functions=[tool["function"]])).estimate > plain + TOOLS_OVERHEAD


def test_tool_calls_tool_messages_and_names_are_counted() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "武汉", "days": 3}'}}
    messages = [
        {"role": "user", "content": "weather?", "name": "alice"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "晴 " * 50},
    ]
    got = size(chat(messages=messages), EXACT)
    texts = ["user", "weather?", "alice", "assistant", "tool", "call_1", "晴 " * 50]
    assert got.estimate >= sum(len(CL100K.encode(t)) for t in texts) + len(CL100K.encode(
        orjson.dumps([call]).decode())) + 3 * PER_MESSAGE_OVERHEAD + 2 * PER_TOOL_CALL_OVERHEAD


def test_text_parts_are_counted_with_their_joints() -> None:
    parts = [{"type": "text", "text": "hello"}, "world", {"type": "input_text", "text": "again"}]
    got = size(chat(messages=[{"role": "user", "content": parts}]), EXACT)
    assert got.bound == 1 + 1 + 1 + 1 + 2  # user, three words, two newlines
    with pytest.raises(BadRequest, match="needs a string 'text'"):
        size(chat(messages=[{"role": "user", "content": [{"type": "text"}]}]))


IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
AUDIO = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
VIDEO = {"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}


@pytest.mark.parametrize("part", [IMAGE, AUDIO, VIDEO, {"type": "image_embeds", "image_embeds": "x"},
                                  {"type": "audio_url", "audio_url": {"url": "x"}},
                                  {"type": "image_pil", "image_pil": None}])
def test_media_without_catalog_media_is_refused(part: dict[str, Any]) -> None:
    request = chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}, part]}])
    with pytest.raises(BadRequest) as caught:
        size(request, Rules(name="qwen"))
    error = caught.value
    assert (error.status, error.param, error.code) == (400, "messages", "unsupported_content")
    assert part["type"] in error.message and "'qwen'" in error.message


def test_media_is_reserved_per_part() -> None:
    rules = Rules(media=MediaLimits(image=1280, audio=750))
    text_only = size(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what?"}]}]),
                     rules)
    content = [{"type": "text", "text": "what?"}, IMAGE, IMAGE, AUDIO]
    got = size(chat(messages=[{"role": "user", "content": content}]), rules)
    assert got.estimate == text_only.estimate + 2 * 1280 + 750
    assert got.bound == text_only.bound  # the window checks count text only
    with pytest.raises(BadRequest, match="video"):
        size(chat(messages=[{"role": "user", "content": [VIDEO]}]), rules)


@pytest.mark.parametrize("part", [{"type": "file", "file": {"file_id": "f"}}, {"image_url": "x"},
                                  {"type": "prompt_embeds", "data": "x"}, 5])
def test_unknown_parts_are_refused(part: object) -> None:
    rules = Rules(media=MediaLimits(image=1, audio=1, video=1))
    with pytest.raises(BadRequest) as caught:
        size(chat(messages=[{"role": "user", "content": [part]}]), rules)
    assert (caught.value.param, caught.value.code) == ("messages", "unsupported_content")


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [("chat", "chat_template", "{{ messages }}"), ("chat", "chat_template_kwargs", {"x": "y"}),
     ("chat", "mm_processor_kwargs", {"max_pixels": 10**9}), ("chat", "media_io_kwargs", {"video": {}}),
     ("completions", "prompt_embeds", "AAAA"), ("completions", "chat_template_kwargs", {"a": 1})],
)
def test_fields_that_make_the_prompt_unknowable(kind: Kind, field: str, value: object) -> None:
    body: dict[str, Any] = {"model": "m", field: value}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi"})
    request = parse_request(kind, orjson.dumps(body))
    with pytest.raises(BadRequest) as caught:
        size(request)
    error = caught.value
    assert (error.status, error.param, error.code) == (400, field, "unsupported_parameter")
    allowed = size(request, Rules(allowed_fields=frozenset({field})))
    body.pop(field)
    assert allowed.estimate > size(parse_request(kind, orjson.dumps(body))).estimate  # counted


def test_null_and_harmless_fields_pass() -> None:
    size(chat(chat_template=None, chat_template_kwargs={}, add_generation_prompt=False,
              continue_final_message=False, add_special_tokens=True, truncate_prompt_tokens=100))


def test_embeddings_refuse_messages() -> None:
    request = parse_request("embeddings", orjson.dumps({"model": "m", "input": "x", "messages": []}))
    with pytest.raises(BadRequest) as caught:
        size(request)
    assert caught.value.param == "messages"


@pytest.mark.parametrize(("best_of", "n", "ok"), [(3, 1, False), (2, 2, True), (1, 1, True), (None, 4, True)])
def test_best_of_beyond_n_is_refused(best_of: int | None, n: int, ok: bool) -> None:
    raw = orjson.dumps({"model": "m", "prompt": "x", "best_of": best_of, "n": n})
    if ok:
        assert parse_request("completions", raw).choices == n
        return
    with pytest.raises(BadRequest) as caught:
        parse_request("completions", raw)
    assert (caught.value.param, caught.value.status) == ("best_of", 400)


def test_several_prompts_each_bounded_and_all_reserved() -> None:
    prompts = ["short", SAMPLES["digits"], [1, 2, 3]]
    got = size(parse_request("completions", orjson.dumps({"model": "m", "prompt": prompts})))
    bounds = [byte_bound("short"), byte_bound(SAMPLES["digits"]), 3]
    assert got.bound == max(bounds)
    assert got.estimate == sum(bounds) + PER_REQUEST_OVERHEAD + 2 * 2
    assert got.longest == len(CL100K.encode(SAMPLES["digits"]))
    embeddings = size(parse_request("embeddings", orjson.dumps({"model": "m", "input": ["a", "bc"]})))
    assert embeddings.estimate == 2 + 3 + PER_REQUEST_OVERHEAD + 2
    with pytest.raises(BadRequest) as caught:
        size(parse_request("embeddings", orjson.dumps({"model": "m", "input": [{"x": 1}]})))
    assert caught.value.param == "input"

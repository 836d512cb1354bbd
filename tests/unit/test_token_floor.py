"""The floor of a text's tokens, known without tokenizing: never above the real count.

The early refusal of big prompts (gateway.early_refusal) is sound only if every floor here
is at most what the tokenizer counts: checked on random and hostile text (the vocabulary's
longest tokens repeated, text that normalizers shorten the most) for tiktoken, bytes and
Hugging Face BPEs shaped like Qwen2, Llama 3 and Llama 2 / Mistral, and the normalizers'
shrink factors against every code point. Tokenizer shapes that allow no floor get none.
"""

from __future__ import annotations

import copy
import json
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import models, normalizers, pre_tokenizers, trainers

from gateway.openai_request import parse_request
from gateway.prompt_size import collect_prompt, measure_prompt, prompt_floor
from gateway.token_floor import NO_FLOOR, SHRINK, TokenFloor, _byte_alphabet, hf_floor, token_floor
from gateway.tokenizers import HFTokenizer, TiktokenTokenizer, Tokenizer, load_tokenizer
from tests.unit.test_openai_request import EXACT, STAND_IN, Rules, qwen_like, sentencepiece_like

# Text that normalizers shorten the most, long runs, code points of every width.
HOSTILE = ["\u1fef", "\U000107a5", "\u0390", "\u212a", "\U0001d400", "\u1100\u1161\u11a8", "가",
           "e\u0301", "\u03b9\u0308\u0301", "\uff21", "\u2126", "\ufdfa", "\ufb2c", " " * 200,
           "\n" * 50, "=" * 300, "-" * 129, "0123456789" * 5, "长江" * 30, "🙂" * 20, "\t" * 70]
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    words = ["the", "river", "长江", "武汉", "digits", "12345", "café", "naïve", "🙂", "def", "return",
             " " * 16, "=" * 24, "\uff2b\uff45\uff4c\uff56\uff49\uff4e", "ΐ", "가나다"]
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(300)]


@cache
def llama3_like() -> RustTokenizer:
    """Split by Llama 3's pattern, then byte-level BPE without a normalizer; added tokens."""
    tok = RustTokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=_regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=["<|begin_of_text|>", "<|eot_id|>"]))
    return tok


@cache
def nfkc_lowercase_like() -> RustTokenizer:
    """Byte-level BPE after NFKC and lowercasing: the widest shrink accepted (12 x 4)."""
    tok = RustTokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return tok


def _regex(pattern: str) -> Any:
    from tokenizers import Regex

    return Regex(pattern)


HF = {"qwen-like": qwen_like, "sentencepiece-like": sentencepiece_like, "llama3-like": llama3_like,
      "nfkc-lowercase-like": nfkc_lowercase_like}


@cache
def hf_spec(name: str, root: str) -> str:
    directory = Path(root) / name
    directory.mkdir(parents=True, exist_ok=True)
    HF[name]().save(str(directory / "tokenizer.json"))
    return f"hf:{directory}"


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = str(tmp_path_factory.mktemp("hf"))
    found = {"cl100k": "tiktoken:cl100k_base", "o200k": "tiktoken:o200k_base", "bytes": "bytes"}
    return {**found, **{name: hf_spec(name, root) for name in HF}}


def longest_tokens(tokenizer: Tokenizer, limit: int = 20) -> list[str]:
    """Texts of the vocabulary's longest tokens: where a floor is tightest."""
    if isinstance(tokenizer, TiktokenTokenizer):
        raw = sorted(tokenizer.token_bytes(), key=len, reverse=True)
        return [t.decode("utf-8", "replace") for t in raw[:limit]]
    if isinstance(tokenizer, HFTokenizer):
        byte_of = {char: byte for byte, char in enumerate(_gpt2_chars())}
        texts = []
        for token in tokenizer.config()["model"]["vocab"]:
            if all(char in byte_of for char in token):  # byte-level: its characters are bytes
                texts.append(bytes(byte_of[char] for char in token).decode("utf-8", "replace"))
            else:
                texts.append(token.replace("▁", " "))
        return sorted(texts, key=lambda text: len(text.encode()), reverse=True)[:limit]
    return ["x", "长"]


def _gpt2_chars() -> list[str]:
    """GPT-2's byte-to-character table, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def hostile_text(extra: list[str]) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(max_size=12), st.sampled_from(HOSTILE + extra))
    return st.lists(piece, max_size=40).map("".join)


# --- the shrink factors ---------------------------------------------------------------


def _bytes(text: str) -> int:
    return len(text.encode())


def test_the_shrink_factors_cover_every_code_point() -> None:
    """Decomposing shrinks per character; composing merges the characters of a composite's
    canonical decomposition; lowercasing maps each character to some: all measured here."""
    decomposing = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000
                   and (unicodedata.decomposition(chr(c)) or 0xAC00 <= c <= 0xD7A3)]
    nfd = max(_bytes(c) / _bytes(unicodedata.normalize("NFD", c)) for c in decomposing)
    nfkd = max(_bytes(c) / _bytes(unicodedata.normalize("NFKD", c)) for c in decomposing)
    composing = max(_bytes(unicodedata.normalize("NFD", c)) / _bytes(c) for c in decomposing)
    lowering = max(_bytes(chr(c)) / _bytes(chr(c).lower()) for c in range(0x110000)
                   if not 0xD800 <= c < 0xE000)
    assert (nfd, nfkd, composing, lowering) == (3, 4, 3, 3)  # U+1FEF, U+107A5, U+0390, U+212A
    assert SHRINK["NFD"] >= nfd and SHRINK["NFKD"] >= nfkd and SHRINK["Lowercase"] >= lowering
    assert SHRINK["NFC"] >= nfd * composing and SHRINK["NFKC"] >= nfkd * composing


@settings(max_examples=300, deadline=None)
@given(hostile_text([]))
def test_normal_forms_shrink_no_more_than_their_factor(text: str) -> None:
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        assert _bytes(text) <= SHRINK[form] * _bytes(unicodedata.normalize(form, text)), form
    assert _bytes(text) <= SHRINK["Lowercase"] * _bytes(text.lower())


def test_the_byte_alphabet_is_gpt2s() -> None:
    assert _byte_alphabet() == frozenset(pre_tokenizers.ByteLevel.alphabet()) == frozenset(_gpt2_chars())


# --- floors never above the count ------------------------------------------------------------


def test_floors_read_from_the_vocabularies(specs: dict[str, str]) -> None:
    assert token_floor(specs["cl100k"]) == TokenFloor(128)
    assert token_floor(specs["o200k"]) == TokenFloor(128)
    assert token_floor(specs["bytes"]) == TokenFloor(1)
    assert token_floor(specs["qwen-like"]).shrink == SHRINK["NFC"]  # type: ignore[attr-defined]
    assert token_floor(specs["sentencepiece-like"]).shrink == SHRINK["NFKC"]  # type: ignore[attr-defined]
    assert token_floor(specs["llama3-like"]).shrink == 1  # type: ignore[attr-defined]
    assert token_floor(specs["nfkc-lowercase-like"]).shrink == SHRINK["NFKC"] * SHRINK["Lowercase"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["cl100k", "o200k", "bytes", *HF])
def test_a_floor_is_never_above_the_count(specs: dict[str, str], name: str) -> None:
    tokenizer = load_tokenizer(specs[name])
    floor = token_floor(specs[name])
    assert isinstance(floor, TokenFloor)
    longest = longest_tokens(tokenizer)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.one_of(hostile_text(longest), st.lists(st.sampled_from(longest), max_size=60).map("".join)))
    def check(text: str) -> None:
        assert floor(text) <= len(tokenizer.encode(text)), (text, floor(text))

    check()
    # and it is tight where the text is the longest token over and over
    text = longest[0] * 40
    assert len(tokenizer.encode(text)) <= 2 * floor(text) * (1 if text.isascii() else floor.shrink)


# --- shapes without a floor -------------------------------------------------------------


def qwen_config() -> dict[str, Any]:
    config: dict[str, Any] = json.loads(qwen_like().to_str())
    return config


def _changed(change: Any) -> dict[str, Any]:
    config = copy.deepcopy(qwen_config())
    change(config)
    return config


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(config: dict[str, Any]) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop_byte(config: dict[str, Any]) -> None:
    del config["model"]["vocab"]["Ā"]  # the byte 0x00


ADDED = {"id": 9999, "content": "<mask>", "single_word": False, "lstrip": True, "rstrip": False,
         "normalized": False, "special": True}


@pytest.mark.parametrize("change", [
    _set(("model", "type"), "WordPiece"),
    _set(("truncation",), {"max_length": 512, "strategy": "LongestFirst", "stride": 0}),
    _set(("normalizer",), {"type": "Strip", "strip_left": True, "strip_right": True}),
    _set(("normalizer",), {"type": "StripAccents"}),
    _set(("normalizer",), {"type": "Replace", "pattern": {"String": "  "}, "content": " "}),
    _set(("normalizer",), {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}),
    _set(("pre_tokenizer",), {"type": "Whitespace"}),
    _set(("pre_tokenizer",), {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
    _set(("added_tokens",), [ADDED]),
    _set(("added_tokens",), [{**ADDED, "lstrip": False, "normalized": True}]),
    _drop_byte,
], ids=["wordpiece", "truncation", "strip", "strip-accents", "shrinking-replace", "regex-replace",
        "whitespace", "split-removed", "lstrip", "normalized-added", "byte-missing"])
def test_shapes_that_allow_no_floor_get_none(change: Any) -> None:
    assert hf_floor(qwen_config()) is not None
    assert hf_floor(_changed(change)) is None


def test_a_lengthening_replace_keeps_the_floor() -> None:
    spaces = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}  # SentencePiece's shape
    config = _changed(_set(("normalizer",), {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, spaces]}))
    floor = hf_floor(config)
    assert floor is not None and floor.shrink == 1


def test_an_unknown_shape_counts_nothing(tmp_path: Path) -> None:
    tok = RustTokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(
        vocab_size=300, special_tokens=["[UNK]"], show_progress=False))
    tok.save(str(tmp_path / "tokenizer.json"))
    floor = token_floor(f"hf:{tmp_path}")
    assert floor is NO_FLOOR and floor("x" * 1000) == 0
    assert len(tok.encode("x" * 1000).ids) == 1  # one [UNK] covers the whole word: no byte floor


# --- a prompt's floor never above its size ---------------------------------------------------

TEXT = st.one_of(st.text(max_size=60), st.sampled_from(HOSTILE))
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]), "content": TEXT})
TOOL = st.fixed_dictionaries({"type": st.just("function"), "function": st.fixed_dictionaries(
    {"name": st.sampled_from(["weather", "天气"]), "description": TEXT})})


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["chat", "completions", "embeddings"]))
    if kind == "chat":
        body: dict[str, Any] = {"messages": draw(st.lists(MESSAGE, min_size=1, max_size=5))}
        if draw(st.booleans()):
            body["tools"] = draw(st.lists(TOOL, min_size=1, max_size=2))
    else:
        prompts = draw(st.lists(st.one_of(TEXT, st.lists(st.integers(0, 1000), min_size=1, max_size=5)),
                                min_size=1, max_size=4))
        body = {"prompt" if kind == "completions" else "input": prompts}
    return kind, {"model": "m", **body}


@pytest.mark.parametrize("rules", [EXACT, STAND_IN], ids=["exact", "stand-in"])
@pytest.mark.parametrize("name", ["cl100k", "bytes", "qwen-like", "sentencepiece-like"])
def test_a_prompts_floor_is_never_above_its_size(specs: dict[str, str], name: str, rules: Rules) -> None:
    tokenizer, floor = load_tokenizer(specs[name]), token_floor(specs[name])

    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(requests())
    def check(drawn: tuple[str, dict[str, Any]]) -> None:
        kind, body = drawn
        request = parse_request(kind, orjson.dumps(body))  # type: ignore[arg-type]
        prompt = collect_prompt(request, rules)
        low, size = prompt_floor(prompt, floor, rules), measure_prompt(prompt, tokenizer, rules)
        assert low.estimate <= size.estimate
        assert low.bound <= size.bound
        assert low.longest <= size.longest
        if not rules.tokenizer_exact:  # a stand-in's estimate needs no tokenizer: it is exact
            assert (low.estimate, low.bound) == (size.estimate, size.bound)

    check()

"""The fewest tokens a text can take by a tokenizer, known without tokenizing it.

Counting runs on the event loop, and a megabyte takes a tokenizer from a fraction of a
second (tiktoken) to seconds (a Hugging Face BPE). Every token a tokenizer makes covers at
most ``max_bytes`` bytes of the text (its longest vocabulary entry), and every byte of the
text is in some token, so a text of ``b`` bytes takes at least ``ceil(b / max_bytes)``
tokens: a floor that costs a length, and proves a big prompt too long for the window or too
dear for its key before anything is counted (``gateway.pipeline``, bodies over 16 KiB).

A normalizer can shorten text before the tokenizer sees it (NFKC makes U+1D400 of 4 bytes
"A"), so for non-ASCII text the floor also divides by how much the tokenizer's normalizers
can shrink it (``shrink``; ASCII keeps its length through all those accepted). The bound is
read once per tokenizer from its vocabulary:

* ``bytes``: one token per byte (the floor is the count);
* ``tiktoken:`` encodings: byte-level BPE, no normalizer; the longest token (cl100k_base,
  o200k_base: 128 bytes);
* ``hf:`` ``tokenizer.json``: BPE whose every byte has a token (byte-level like GPT-2,
  Qwen2, Llama 3, or byte fallback like Llama 2 and Mistral), with normalizers and
  pre-tokenizers that drop nothing and added tokens that absorb no whitespace. For any other
  shape (WordPiece or Unigram, whose unknown-word tokens can cover any length; stripping
  normalizers; truncation) no floor is known: :data:`NO_FLOOR` counts 0, and the prompt is
  counted as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gateway.tokenizers import BYTES, HFTokenizer, TiktokenTokenizer, load_tokenizer

Floor = Callable[[str], int]

# How many times shorter (in UTF-8) a normalizer can make a text, at most. Decomposing is per
# character: NFD at most 3 (U+1FEF, 3 bytes, is "`"), NFKD 4 (U+107A5 to one byte); composing
# merges the characters of one composite's canonical decomposition, at most 3 times its
# bytes (U+0390); so NFC <= 3 x 3 and NFKC <= 4 x 3. Lowercase maps each character to at
# least one byte (3: U+212A KELVIN SIGN is "k"). tests/unit/test_token_floor.py checks these
# against every code point of Python's Unicode database.
SHRINK = {"NFD": 3, "NFKD": 4, "NFC": 9, "NFKC": 12, "Lowercase": 4}
# Pre-tokenizers that only split (or add a prefix), never drop text; Split and Punctuation
# unless their behavior is "Removed".
_SPLITTERS = frozenset({"ByteLevel", "Metaspace", "Split", "Digits", "Punctuation", "UnicodeScripts"})


@dataclass(frozen=True, slots=True)
class TokenFloor:
    """``ceil(bytes / max_bytes)`` tokens for ASCII text, ``ceil(bytes / (max_bytes * shrink))``
    for any other (its normalizers may shorten it first)."""

    max_bytes: int
    shrink: int = 1

    def __call__(self, text: str) -> int:
        if text.isascii():  # O(1); ASCII is not shortened by any normalizer accepted here
            return -(-len(text) // self.max_bytes)
        return -(-len(text.encode()) // (self.max_bytes * self.shrink))


def _no_floor(text: str) -> int:
    return 0


NO_FLOOR: Floor = _no_floor  # a tokenizer of unknown shape: 0 is the only sound floor


@lru_cache(maxsize=32)
def token_floor(spec: str) -> Floor:
    """The floor of the tokenizer ``spec`` names (once per process: it reads the vocabulary)."""
    tokenizer = load_tokenizer(spec)
    if tokenizer is BYTES:
        return TokenFloor(1)
    if isinstance(tokenizer, TiktokenTokenizer):
        return TokenFloor(max(map(len, tokenizer.token_bytes())))
    if isinstance(tokenizer, HFTokenizer):
        return hf_floor(tokenizer.config()) or NO_FLOOR
    return NO_FLOOR


def hf_floor(config: dict[str, Any]) -> TokenFloor | None:
    """The floor of a ``tokenizer.json``'s tokenizer, or None when its shape allows none."""
    model = config.get("model") or {}
    if model.get("type") != "BPE" or config.get("truncation") is not None:
        return None
    shrink = _normalizer_shrink(config.get("normalizer"))
    pre = config.get("pre_tokenizer")
    if shrink is None or not _only_splits(pre):
        return None
    added = config.get("added_tokens") or []
    if any(t.get("lstrip") or t.get("rstrip") or t.get("normalized") for t in added):
        return None  # absorbs the whitespace around it, or matches text the normalizer made
    vocab: dict[str, int] = model.get("vocab") or {}
    if _byte_level(pre):
        alphabet = _byte_alphabet()
        if not all(char in vocab for char in alphabet):
            return None  # a byte without a token: an unknown one may cover any length
        # a byte-level entry's characters are bytes of the text; other entries are text
        longest = max(len(t) if alphabet.issuperset(t) else len(t.encode()) for t in vocab)
    elif model.get("byte_fallback") and all(f"<0x{b:02X}>" in vocab for b in range(256)):
        longest = max(len(t.encode()) for t in vocab)  # '▁' (3 bytes) stands for a space (1)
    else:
        return None
    longest = max([longest, *(len(str(t.get("content", "")).encode()) for t in added)])
    return TokenFloor(max(1, longest), shrink)


def _normalizer_shrink(normalizer: dict[str, Any] | None) -> int | None:
    """How many times shorter the normalizer can make non-ASCII text; None: unbounded."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        product = 1
        for part in normalizer.get("normalizers") or []:
            shrink = _normalizer_shrink(part)
            if shrink is None:
                return None
            product *= shrink
        return product
    if kind in SHRINK:
        return SHRINK[kind]
    if kind == "Prepend":
        return 1
    if kind == "Replace":  # a fixed string replaced by one at least as long only lengthens
        pattern = (normalizer.get("pattern") or {}).get("String")
        content = normalizer.get("content")
        if isinstance(pattern, str) and pattern and isinstance(content, str) \
                and len(content.encode()) >= len(pattern.encode()):
            return 1
    return None  # Strip, StripAccents, Bert, Precompiled, a regex Replace: may drop any text


def _only_splits(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return True
    if pre.get("type") == "Sequence":
        return all(_only_splits(p) for p in pre.get("pretokenizers") or [])
    return pre.get("type") in _SPLITTERS and pre.get("behavior") != "Removed"


def _byte_level(pre: dict[str, Any] | None) -> bool:
    if pre is None:
        return False
    if pre.get("type") == "Sequence":
        return any(_byte_level(p) for p in pre.get("pretokenizers") or [])
    return pre.get("type") == "ByteLevel"


@lru_cache(maxsize=1)
def _byte_alphabet() -> frozenset[str]:
    """The 256 characters byte-level BPE writes bytes as (GPT-2's table)."""
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}  # '!'-'~', '¡'-'¬', '®'-'ÿ'
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return frozenset(chars)

"""Deterministic "model": prompt rendering, token counting and generated text.

Generated text is a sequence of vocabulary words, each a single token of the
configured tokenizer (with its leading space), chosen by a PRNG seeded from a
hash of the prompt and the choice index. One word = one streamed chunk = one
completion token, so the streamed pieces join to the non-streamed text and
every piece is valid text on its own.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from gateway.tokenizers import Tokenizer, load_tokenizer

MIN_NATURAL_TOKENS = 16
MAX_NATURAL_TOKENS = 64

_WORD_TEXT = """
the of and to in is was for on are with as his they be at one have this from
or had by not but what some we can out other were all there when up use your
how said an each she which do their time if will way about many then them
write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call
first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give
our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set
three want air well also play small end put home read hand port large spell
add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build
self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last
let thought city tree cross farm hard start might story saw far sea draw left
late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both
mark often letter until mile river car feet care second book carry took
science eat room friend began idea fish mountain stop once base hear horse cut
sure watch color face wood main enough plain girl usual young ready above ever
red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete
ship area half rock order fire south problem piece told knew pass since top
whole king space heard best hour better true during hundred five remember step
early hold west ground interest reach fast verb sing listen six table travel
less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold
notice voice unit power town fine certain fly fall lead cry dark machine note
wait plan figure star box noun field rest correct able pound done beauty drive
stood contain front teach week final gave green quick develop ocean warm free
minute strong special mind behind clear tail produce fact street inch multiply
nothing course stay wheel full force blue object decide surface deep moon
island foot system busy test record boat common gold possible plane stead dry
wonder laugh thousand ago ran check game shape equate hot miss brought heat
snow tire bring yes distant fill east paint language among
"""
_WORDS = _WORD_TEXT.split()


@dataclass(slots=True)
class Seq:
    """One generated choice: word ids plus why it ended.

    A ``stop`` sequence ends with an EOS token that decodes to "" but counts as a
    completion token, as in vLLM; a ``length`` sequence has exactly max_tokens words.
    """

    index: int
    prompt_idx: int
    words: list[int]
    finish: str

    @property
    def ntokens(self) -> int:
        return len(self.words) + (1 if self.finish == "stop" else 0)


def render_chat(messages: Any, add_generation_prompt: bool = True) -> str:
    """Apply the simulator's fixed chat template (see the package docstring)."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError("each message must be an object with a string 'role'")
        parts.append(f"<|im_start|>{message['role']}\n{content_text(message.get('content'))}")
        parts.append("<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def content_text(content: Any) -> str:
    """Message content as vLLM flattens it: text parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise ValueError("text content parts need a string 'text'")
                texts.append(text)
        return "\n".join(texts)
    raise ValueError("message content must be a string, a list of parts or null")


class SimModel:
    """Tokenizer-backed deterministic text and embedding generator."""

    def __init__(self, tokenizer_spec: str) -> None:
        self.tokenizer: Tokenizer = load_tokenizer(tokenizer_spec)
        self.vocab: list[str] = self._build_vocab()
        # JSON string bodies (no quotes) of each word, ready to splice into chunks.
        self.vocab_json: list[bytes] = [orjson.dumps(w)[1:-1] for w in self.vocab]

    def _build_vocab(self) -> list[str]:
        enc = self.tokenizer.encode
        words = [f" {w}" for w in _WORDS if len(enc(f" {w}")) == 1]
        if len(words) < 32:  # an exotic tokenizer: fall back to its own token pieces
            pieces = {self.tokenizer.decode([t]) for w in _WORDS for t in enc(f" {w}")}
            words = sorted(p for p in pieces if p.strip() and p.isascii() and p.isprintable())
        if not words:
            raise ValueError("tokenizer yields no usable vocabulary for the simulator")
        return words

    @staticmethod
    @lru_cache(maxsize=8)
    def for_tokenizer(tokenizer_spec: str) -> SimModel:
        """Shared instance per tokenizer: it is immutable and costs ~0.1 s to build."""
        return SimModel(tokenizer_spec)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def generate(self, key: bytes, index: int, prompt_idx: int, limit: int, ignore_eos: bool = False) -> Seq:
        """The choice ``index`` for a prompt (given by ``key``), capped at ``limit`` tokens;
        with ``ignore_eos`` (vLLM's sampling parameter) it runs to the limit."""
        digest = hashlib.blake2b(key, digest_size=8, person=b"vllm-sim").digest()
        rng = random.Random(int.from_bytes(digest, "little") ^ (index * 0x9E3779B97F4A7C15))
        natural = rng.randint(MIN_NATURAL_TOKENS, MAX_NATURAL_TOKENS)  # words + EOS
        if natural <= limit and not ignore_eos:
            count, finish = natural - 1, "stop"
        else:
            count, finish = limit, "length"
        words = rng.choices(range(len(self.vocab)), k=count)
        return Seq(index, prompt_idx, words, finish)

    def text(self, seq: Seq) -> str:
        vocab = self.vocab
        return "".join([vocab[w] for w in seq.words])

    def embedding(self, text: str, dim: int) -> list[float]:
        """A unit-norm float32 vector that depends only on the text."""
        digest = hashlib.blake2b(text.encode(), digest_size=8, person=b"vllm-emb").digest()
        rng = random.Random(digest)
        values = [rng.uniform(-1.0, 1.0) for _ in range(dim)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        packed = struct.pack(f"<{dim}f", *(v / norm for v in values))
        return list(struct.unpack(f"<{dim}f", packed))


def embedding_base64(values: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded (vLLM's encoding_format=base64)."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()

"""What the upstream renders into a prompt, and how many tokens it can take at most.

Admission reserves credits for an upper bound of the prompt (invariant 2), so everything
the upstream's chat template renders must be counted: message text, tool calls, tool and
document definitions, media parts; and a request that could make the prompt unknowable
(its own chat template, prompt embeddings, media processor settings) is refused unless the
catalog allows it. This module holds those rules; ``gateway.openai_request`` applies them.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

# Chat templates add tokens per message (role markers, separators) and per request (the
# assistant's turn, default system prompts such as Qwen's or Llama 3.1's dates); these
# bounds exceed the common templates' (ChatML: 5 per message; Llama 3: 5 + 4 + ~25).
PER_MESSAGE_OVERHEAD = 16
PER_REQUEST_OVERHEAD = 32
# Each further sequence of a batch (completions prompts, embedding inputs): BOS and EOS/SEP.
PER_SEQUENCE_OVERHEAD = 2
# Templates wrap tool definitions in instructions: Qwen2.5's "# Tools ... <tools></tools> ...
# <tool_call>" block is ~110 tokens, Llama 3.1's "Given the following functions ..." ~80,
# Hermes-style ones up to ~200. 512 covers them with room; each definition or document then
# gets its own frame (markers, separators, the indentation of `tojson(indent=4)`).
TOOLS_OVERHEAD = 512
PER_ITEM_OVERHEAD = 16
# A tool call (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`) or a tool result
# (`<tool_response>...</tool_response>`, often in a turn of its own) around its JSON.
PER_TOOL_CALL_OVERHEAD = 24

# Content part types whose text the template renders, and the field holding it (vLLM's parsers).
TEXT_PARTS: dict[str, str] = {
    "text": "text",
    "input_text": "text",
    "output_text": "text",
    "thinking": "thinking",
    "refusal": "refusal",
}
# Content part types that become media placeholders, by the media kind the catalog prices.
MEDIA_PARTS: dict[str, str] = {
    "image_url": "image",
    "input_image": "image",
    "image_embeds": "image",
    "image_pil": "image",
    "input_audio": "audio",
    "audio_url": "audio",
    "audio_embeds": "audio",
    "video_url": "video",
    "video_embeds": "video",
}

# Request fields (vLLM extensions) after which no count of the request bounds the prompt:
# refused unless the model's catalog entry lists them in `allowed_fields`. Fields that only
# remove or add a couple of tokens (add_generation_prompt, continue_final_message,
# add_special_tokens, truncate_prompt_tokens) are within the overheads and pass.
UNKNOWABLE_FIELDS: dict[str, str] = {
    "chat_template": "a chat template of the request's own can render any prompt",
    "chat_template_kwargs": "template variables can add any text to the prompt",
    "mm_processor_kwargs": "processor settings change how many tokens a media part takes",
    "media_io_kwargs": "media loading settings (such as video frames) change a part's tokens",
    "prompt_embeds": "a prompt given as embeddings has no text to count",
}


@dataclass(frozen=True, slots=True)
class MediaLimits:
    """The prompt tokens one content part of each kind can take at most; None: refused."""

    image: int | None = None
    audio: int | None = None
    video: int | None = None

    def get(self, kind: str) -> int | None:
        if kind == "image":
            return self.image
        if kind == "audio":
            return self.audio
        return self.video if kind == "video" else None


def byte_bound(text: str) -> int:
    """Tokens that any byte-level BPE or byte-fallback SentencePiece tokenizer makes of
    ``text`` at most: each of their tokens covers at least one byte of the normalized text
    (NFC for Qwen2, NFKC for XLM-R; normalizing can lengthen text, e.g. U+FB2C, U+FDFA),
    plus the one leading-space piece SentencePiece may add per text."""
    if text.isascii():  # O(1) in CPython; ASCII is stable under both normalizations
        return len(text) + 1
    size = len(text.encode())
    if not (unicodedata.is_normalized("NFC", text) and unicodedata.is_normalized("NFKC", text)) \
            and not LENGTHENING.isdisjoint(text):  # normalizing (~0.1 us a character) may lengthen it
        for form in ("NFC", "NFKC"):
            size = max(size, len(unicodedata.normalize(form, text).encode()))
    return size + 1


def lengthening(ranges: tuple[tuple[int, int], ...] = ((0x80, 0xD800), (0xE000, 0x20000),
                                                        (0x2F000, 0x30000))) -> frozenset[str]:
    """The characters without which NFC and NFKC cannot make a text longer in UTF-8: those
    whose own normal form is longer (U+FB2C, U+FDFA, U+3250...), and combining marks (their
    reordering could keep a neighbour from composing). Fullwidth punctuation, common in
    Chinese, only shrinks: such text is not normalized at all. ``ranges``: the planes that
    hold decompositions and combining marks (a test checks them against all of Unicode)."""
    norm, decomposition, combining = unicodedata.normalize, unicodedata.decomposition, unicodedata.combining
    found = []
    for low, high in ranges:
        for point in range(low, high):
            char = chr(point)
            if combining(char):
                found.append(char)
            elif decomposition(char):
                size = len(char.encode())
                if len(norm("NFC", char).encode()) > size or len(norm("NFKC", char).encode()) > size:
                    found.append(char)
    return frozenset(found)


LENGTHENING = lengthening()  # ~1,800 characters, ~15 ms once per process

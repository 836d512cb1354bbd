"""The size of a request's prompt: an honest bound for the reservation, a count for the window.

The reservation must cover what the upstream will count (invariant 2). With the model's own
tokenizer (``tokenizer_exact``) we count each rendered text with it. With a stand-in (a
tiktoken encoding in front of Qwen or Llama) a count can fall short (CJK text, digits, byte
fallback), so the reservation holds :func:`gateway.prompt_rules.byte_bound` instead, which
needs no tokenizer at all. The context-window checks keep the tokenizer's count (a stand-in's
too): the byte bound of an ordinary English prompt is ~4x its tokens and would refuse requests
that fit; that count is made only when the byte bound does not already prove the fit.

This runs for every request on the event loop: each text is measured once, JSON is dumped
once, and a stand-in tokenizes nothing unless a window check needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.errors import BadRequest
from gateway.prompt_rules import (
    MEDIA_PARTS,
    PER_ITEM_OVERHEAD,
    PER_MESSAGE_OVERHEAD,
    PER_REQUEST_OVERHEAD,
    PER_SEQUENCE_OVERHEAD,
    PER_TOOL_CALL_OVERHEAD,
    TEXT_PARTS,
    TOOLS_OVERHEAD,
    UNKNOWABLE_FIELDS,
    MediaLimits,
    byte_bound,
)
from gateway.tokenizers import BYTES, Tokenizer

if TYPE_CHECKING:
    from gateway.openai_request import OpenAIRequest

Count = Callable[[str], int]


class PromptRules(Protocol):
    """What counting needs to know of a model (``gateway.catalog.Model`` has it all)."""

    @property
    def name(self) -> str: ...

    @property
    def tokenizer_exact(self) -> bool: ...

    @property
    def media(self) -> MediaLimits: ...

    @property
    def allowed_fields(self) -> frozenset[str]: ...


class _Pieces:
    """The texts of one prompt as the upstream renders them, and what needs no tokenizer."""

    __slots__ = ("extra", "texts")

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.extra = 0  # JSON separators, text-part joints, prompts given as token ids

    def json(self, value: Any) -> None:
        """A value that templates render as JSON: HF's ``tojson`` writes ", " and ": " where
        the compact dump has "," and ":", so each of those may cost one more token."""
        dumped = orjson.dumps(value)
        self.texts.append(dumped.decode())
        self.extra += dumped.count(b",") + dumped.count(b":")

    def size(self, measure: Count) -> int:
        return sum(map(measure, self.texts)) + self.extra


class PromptSize:
    """A request's prompt(s) as admission sees them.

    ``estimate``: the reservation's prompt tokens, an upper bound of what the upstream counts
    (every prompt, template overheads, media). ``bound``: an upper bound of the longest
    prompt's content, and ``longest`` the tokenizer's count of it (the stand-in's for a
    stand-in), made on first use; both without the template ``overhead``.
    """

    __slots__ = ("_count", "_longest", "_pieces", "bound", "estimate", "overhead")

    def __init__(self, estimate: int, bound: int, overhead: int, *, longest: int | None = None,
                 pieces: Sequence[_Pieces] = (), count: Count | None = None) -> None:
        self.estimate = estimate
        self.bound = bound
        self.overhead = overhead
        self._longest = longest
        self._pieces = pieces
        self._count = count

    @property
    def longest(self) -> int:
        """Content tokens of the longest prompt by the model's tokenizer (for the window)."""
        if self._longest is None:
            count = self._count
            self._longest = max(p.size(count) for p in self._pieces) if count else self.bound
        return self._longest

    @property
    def longest_estimate(self) -> int:
        return self.longest + self.overhead

    @property
    def bound_estimate(self) -> int:
        return self.bound + self.overhead


class Prompt:
    """What the upstream renders of a request, collected once (no text measured yet): the
    sequences (one chat, or each completions prompt or embedding input), the template
    overhead, the media tokens, and the allowed fields' values."""

    __slots__ = ("allowed", "media", "overhead", "sequences")

    def __init__(self, sequences: list[_Pieces], overhead: int, media: int, allowed: _Pieces) -> None:
        self.sequences = sequences
        self.overhead = overhead
        self.media = media
        self.allowed = allowed


def collect_prompt(request: OpenAIRequest, rules: PromptRules) -> Prompt:
    """The texts of a request's prompt(s); several completions prompts or embedding inputs
    are separate sequences, each of which must fit the window, and all of which are billed.

    Raises BadRequest for what cannot be bounded: a field of ``UNKNOWABLE_FIELDS`` the
    model does not allow, a media part the model's ``media`` does not price, an unknown part.
    """
    body = request.body
    allowed = _checked_fields(request, rules)
    media = 0
    if request.kind == "chat":
        prompts = [_Pieces()]
        overhead, media = _chat(body, rules, prompts[0])
    else:
        key = "prompt" if request.kind == "completions" else "input"
        prompts = [_sequence(p, key) for p in prompt_list(body[key])]
        suffix = body.get("suffix") if request.kind == "completions" else None
        if isinstance(suffix, str):  # inserted after the prompt by upstreams that support it
            for pieces in prompts:
                pieces.texts.append(suffix)
        overhead = PER_REQUEST_OVERHEAD
    return Prompt(prompts, overhead, media, allowed)


def measure_prompt(prompt: Prompt, tokenizer: Tokenizer, rules: PromptRules) -> PromptSize:
    """The prompt sizes admission uses: the model's tokenizer counts every text when it is
    exact; a stand-in's estimate is the byte bound, its count made only on first use."""
    count = _counter(tokenizer)
    if rules.tokenizer_exact:
        return _measured(prompt, count, None)
    return _measured(prompt, byte_bound, count)


def prompt_floor(prompt: Prompt, floor: Count, rules: PromptRules) -> PromptSize:
    """Sizes no greater than :func:`measure_prompt`'s, with no tokenizer run: the same sums
    with ``floor`` (at most the tokenizer's count of each text: ``gateway.token_floor``) in
    place of the count. A stand-in's estimate and bound need no tokenizer: they are exact."""
    if rules.tokenizer_exact:
        return _measured(prompt, floor, None)
    return _measured(prompt, byte_bound, floor)


def count_prompt_tokens(request: OpenAIRequest, tokenizer: Tokenizer, rules: PromptRules) -> PromptSize:
    """The prompt sizes of a request (:func:`collect_prompt`, then :func:`measure_prompt`)."""
    return measure_prompt(collect_prompt(request, rules), tokenizer, rules)


def _measured(prompt: Prompt, measure: Count, count: Count | None) -> PromptSize:
    """The estimate and bound by ``measure``; the longest prompt by ``count`` on first use
    (None: ``measure`` is the count)."""
    sizes = [p.size(measure) for p in prompt.sequences]
    bound = max(sizes)
    estimate = (sum(sizes) + prompt.overhead + PER_SEQUENCE_OVERHEAD * (len(sizes) - 1) + prompt.media
                + prompt.allowed.size(measure))
    if count is None:
        return PromptSize(estimate, bound, prompt.overhead, longest=bound)
    return PromptSize(estimate, bound, prompt.overhead, pieces=prompt.sequences, count=count)


class _Exact:
    """A model's rules, its tokenizer taken as exact: counting with it, not the byte bound."""

    __slots__ = ("_rules",)

    def __init__(self, rules: PromptRules) -> None:
        self._rules = rules

    name = property(lambda self: self._rules.name)
    media = property(lambda self: self._rules.media)
    allowed_fields = property(lambda self: self._rules.allowed_fields)
    tokenizer_exact = True


def counted_prompt(request: OpenAIRequest, tokenizer: Tokenizer, rules: PromptRules) -> int:
    """The gateway's own count of a request's prompt: the catalog's tokenizer (a stand-in's
    too), template overheads and media included. What is billed for the prompt when the
    upstream reports no usage: the byte bound the reservation holds for a stand-in is an
    upper bound, 2 to 5 times the real count, not a count."""
    return count_prompt_tokens(request, tokenizer, _Exact(rules)).estimate


def prompt_list(value: Any) -> list[Any]:
    """The prompts of a completions ``prompt`` or embeddings ``input``: strings or id lists."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one prompt given as token ids
    return list(value)


def _counter(tokenizer: Tokenizer) -> Count:
    if tokenizer is BYTES:
        return _utf8_length
    return lambda text: len(tokenizer.encode(text))


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def _sequence(prompt: Any, key: str) -> _Pieces:
    pieces = _Pieces()
    if isinstance(prompt, str):
        pieces.texts.append(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        pieces.extra = len(prompt)
    else:
        raise BadRequest("each prompt must be a string or an array of token ids", param=key)
    return pieces


def _checked_fields(request: OpenAIRequest, rules: PromptRules) -> _Pieces:
    """Refuse the fields after which the prompt cannot be bounded, unless the model allows
    them; an allowed one is counted as prompt text (templates may render its values)."""
    body = request.body
    if request.kind == "embeddings" and body.get("messages") is not None:
        raise BadRequest("'messages' is not accepted on /v1/embeddings: send the text as 'input'",
                         param="messages", code="unsupported_parameter")
    pieces = _Pieces()
    for name, why in UNKNOWABLE_FIELDS.items():
        value = body.get(name)
        if value is None or value == {}:
            continue
        if name not in rules.allowed_fields:
            raise BadRequest(f"'{name}' is not accepted for model '{rules.name}': {why}, so the "
                             "request's cost could not be reserved", param=name,
                             code="unsupported_parameter")
        pieces.json(value)
    return pieces


def _chat(body: dict[str, Any], rules: PromptRules, pieces: _Pieces) -> tuple[int, int]:
    """Collect what a chat template renders; return (template overhead, media tokens)."""
    messages: list[dict[str, Any]] = body["messages"]
    overhead = PER_MESSAGE_OVERHEAD * len(messages) + PER_REQUEST_OVERHEAD
    media = 0
    texts = pieces.texts
    for message in messages:
        if message.get("role") in ("tool", "function"):
            overhead += PER_TOOL_CALL_OVERHEAD
        for key, value in message.items():
            if isinstance(value, str):  # content, name, role, tool_call_id, reasoning_content...
                texts.append(value)
            elif key == "content" and isinstance(value, list):
                media += _parts(value, rules, pieces)
            elif value is not None:
                pieces.json(value)
                if key == "tool_calls" and isinstance(value, list):
                    overhead += PER_TOOL_CALL_OVERHEAD * len(value)
                elif key == "function_call":
                    overhead += PER_TOOL_CALL_OVERHEAD
    items = 0
    for key in ("tools", "functions", "documents"):
        value = body.get(key)
        if value:
            pieces.json(value)
            items += len(value) if isinstance(value, list) else 1
    if body.get("tools") or body.get("functions"):
        overhead += TOOLS_OVERHEAD
    response_format = body.get("response_format")
    if response_format:
        pieces.json(response_format)
    return overhead + PER_ITEM_OVERHEAD * items, media


def _parts(parts: list[Any], rules: PromptRules, pieces: _Pieces) -> int:
    """Collect the text of content parts; return the media tokens of the others."""
    media = joined = 0
    for part in parts:
        if isinstance(part, str):
            pieces.texts.append(part)
            joined += 1
            continue
        kind = part.get("type") if isinstance(part, dict) else None
        field = TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if field is None:
            media += _media_tokens(kind, rules)
            continue
        text = part.get(field)
        if not isinstance(text, str):
            raise BadRequest(f"a content part of type '{kind}' needs a string '{field}'", param="messages")
        pieces.texts.append(text)
        joined += 1
    pieces.extra += max(0, joined - 1)  # vLLM joins text parts with newlines
    return media


def _media_tokens(kind: object, rules: PromptRules) -> int:
    """The most prompt tokens one part of this type can take, as the catalog says."""
    medium = MEDIA_PARTS.get(kind) if isinstance(kind, str) else None
    if medium is None:
        what = f"content part type '{kind[:64]}'" if isinstance(kind, str) else \
            "a content part without a string 'type'"
        raise BadRequest(f"{what} is not supported for model '{rules.name}'", param="messages",
                         code="unsupported_content")
    limit = rules.media.get(medium)
    if limit is None:
        raise BadRequest(f"model '{rules.name}' does not accept {medium} input (content part type "
                         f"'{kind}'): its catalog entry lists no 'media.{medium}'", param="messages",
                         code="unsupported_content")
    return limit

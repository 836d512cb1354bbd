"""Running usage of a provider's stream: the provider's figures as it reports them, ours between.

litellm's stream wrapper (``CustomStreamWrapper``) holds the usage a provider reports while
it streams (Anthropic's ``message_start`` input tokens, Gemini's running counts) until the
stream's end. :class:`UsageTap` sits between the wrapper and the provider's own event
iterator (the wrapper's ``completion_stream``) and notes each report as it passes.
:class:`RunningUsage` turns those notes and the generated text into the usage every chunk
carries: the prompt as the provider reported it (else our count), the completion as the
provider last reported it plus our count of what was generated since (Anthropic reports
output only at the end), never above ``max_tokens`` (the provider stops there, so a count
above it is our tokenizer's error, and the data plane would cut the stream at it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gateway.tokenizers import Tokenizer


@dataclass(slots=True)
class Report:
    """What a provider event said of the usage so far."""

    prompt: int | None
    completion: int | None
    cached: int | None
    with_output: bool  # the event also carried generated output (covered by its count)


def _number(usage: Any, *names: str) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def report_of(event: Any) -> Report | None:
    """The usage a provider event (litellm's ``ModelResponseStream`` or
    ``GenericStreamingChunk``) carries, if any."""
    usage = event.get("usage") if isinstance(event, dict) else getattr(event, "usage", None)
    if usage is None:
        return None
    details = usage.get("prompt_tokens_details") if isinstance(usage, dict) else getattr(
        usage, "prompt_tokens_details", None)
    return Report(prompt=_number(usage, "prompt_tokens", "input_tokens"),
                  completion=_number(usage, "completion_tokens", "output_tokens"),
                  cached=_number(details, "cached_tokens") if details is not None else None,
                  with_output=has_output(event))


def has_output(event: Any) -> bool:
    """Whether a provider event carries generated text, reasoning or tool calls."""
    if isinstance(event, dict):  # GenericStreamingChunk
        return bool(event.get("text") or event.get("tool_use"))
    for choice in getattr(event, "choices", None) or ():
        delta = getattr(choice, "delta", None)
        if delta is not None and (getattr(delta, "content", None) or getattr(delta, "tool_calls", None)
                                  or getattr(delta, "reasoning_content", None)):
            return True
    return False


class UsageTap:
    """The provider's event iterator, with each event's usage noted on its way to litellm."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._events: AsyncIterator[Any] = inner.__aiter__()
        self._pending: Report | None = None
        self.reported = False  # the provider reported usage at least once

    def __aiter__(self) -> UsageTap:
        return self  # litellm iterates it afresh for each chunk it builds: never restart

    async def __anext__(self) -> Any:
        event = await self._events.__anext__()
        report = report_of(event)
        if report is not None:
            self.reported = True
            if self._pending is None:
                self._pending = report
            else:  # several reports before one chunk: the latest figures, any output
                self._pending = Report(
                    report.prompt if report.prompt is not None else self._pending.prompt,
                    report.completion if report.completion is not None else self._pending.completion,
                    report.cached if report.cached is not None else self._pending.cached,
                    report.with_output or self._pending.with_output)
        return event

    def take(self) -> Report | None:
        """The reports since the last call, merged (None if none)."""
        report, self._pending = self._pending, None
        return report

    async def aclose(self) -> None:
        close = getattr(self._inner, "aclose", None)
        if close is not None:
            await close()

    def __getattr__(self, name: str) -> Any:  # anything else litellm asks of its stream
        return getattr(self._inner, name)


class TextCount:
    """Tokens of a growing text by one tokenizer, without recounting all of it at each piece.

    The text up to the last line break followed by a non-space (where the byte-level BPE
    tokenizers' pre-tokenizers always split) is counted once and set aside; only the rest is
    counted again as pieces arrive. A run of 8 KiB without such a break is set aside at its
    last space (a count off by at most a token there)."""

    FOLD_AT = 1024
    LONG_LINE = 8192

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._encode = tokenizer.encode
        self._counted = 0
        self._tail = ""

    def add(self, text: str) -> None:
        self._tail += text

    def reset(self) -> None:
        self._counted, self._tail = 0, ""

    def total(self) -> int:
        tail = self._tail
        if len(tail) > self.FOLD_AT:
            cut = _line_start(tail)
            if cut <= 0 and len(tail) > self.LONG_LINE:
                cut = tail.rfind(" ", 0, len(tail) - 1)
            if cut > 0:
                self._counted += len(self._encode(tail[:cut]))
                self._tail = tail = tail[cut:]
        return self._counted + (len(self._encode(tail)) if tail else 0)


def _line_start(text: str) -> int:
    """Where the last line of ``text`` that starts with a non-space begins (0: none)."""
    at = len(text)
    while (at := text.rfind("\n", 0, at)) >= 0:
        after = at + 1
        if after < len(text) and not text[after].isspace():
            return after
    return 0


class RunningUsage:
    """The usage a chunk carries: ``step`` it with each chunk's report and generated text."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int | None, prompt: Callable[[], int]) -> None:
        self._text = TextCount(tokenizer)
        self._max = max_tokens
        self._count_prompt = prompt
        self._prompt: int | None = None
        self._reported = 0  # the provider's completion count at its last report
        self._began = False  # output was generated
        self.cached = 0

    def step(self, report: Report | None, output: str) -> None:
        """One chunk: the provider's reports since the last one, and its generated text."""
        if report is not None:
            if report.prompt is not None:
                self._prompt = report.prompt
            if report.cached is not None:
                self.cached = report.cached
            # A count before any output (Anthropic's message_start says 1) counts nothing yet.
            if report.completion is not None and (self._began or report.with_output):
                self._reported = report.completion
                self._text.reset()
                if report.with_output:  # the count covers this chunk's text too
                    output = ""
        if output:
            self._began = True
            self._text.add(output)

    @property
    def prompt(self) -> int:
        if self._prompt is None:  # the provider said nothing yet: our count, once
            self._prompt = self._count_prompt()
        return self._prompt

    @property
    def completion(self) -> int:
        count = self._reported + self._text.total()
        return min(count, self._max) if self._max is not None else count

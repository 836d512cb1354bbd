"""The one place that reads usage out of upstream responses (streamed or not).

The relay passes upstream bytes through. Most reads of a stream are blocks of ordinary token
chunks of choice 0, each with its running usage: such a block is handled whole, with a few
C-level byte operations and no per-event Python (the running count is read from the block's
last usage; the usage objects are cut out with one split when the client must not see them;
the model name is replaced with one ``bytes.replace``). JSON strings escape their quotes, so
``"usage":{`` or ``"model":"x"`` inside generated text never match. Any other block (the
final usage chunk, ``[DONE]``, errors, ``n > 1``, a block without usage) goes event by event:
per event we look at the tail of the JSON (vLLM serialises compactly with ``usage`` last), and
only an event whose usage is not in that shape is parsed and re-serialised.

We always ask vLLM for ``include_usage`` and ``continuous_usage_stats``: every chunk then
carries the running count, so a stream cut anywhere is billed for what was delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import upstream_event_error
from gateway.tokenizers import Tokenizer

log = logging.getLogger("tokengate.relay")

_USAGE = b',"usage":'
_DATA = b"data: "
_DONE = b"[DONE]"
_EVENT = b"data: {"
_CHOICE0 = b'"choices":[{"index":0,'
_HAS_USAGE = b',"usage":{"'
_SEAM = b"}\n\ndata: {"  # between two events of a block
_LAST = b"}\n\n"  # a block's end
_PROMPT = b'"prompt_tokens":'
_COMPLETION = b'"completion_tokens":'
_CACHED = b'"cached_tokens":'


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def plus(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.cached_tokens + other.cached_tokens)

    @classmethod
    def from_json(cls, usage: dict[str, Any]) -> Usage:
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
        )


class ModelRenamer:
    """Sets the response's ``model`` to the public name, whatever the upstream called it.

    A vLLM server with several served names answers with the first one, so we replace the
    value of the first ``"model":"..."`` (always before ``choices``) instead of a known name.
    """

    __slots__ = ("new",)

    def __init__(self, public: str) -> None:
        self.new = b'"model":' + orjson.dumps(public)

    def __call__(self, payload: bytes) -> bytes:
        start = payload.find(b'"model":"')
        if start < 0:
            return payload
        end = payload.find(b'"', start + 9)
        while end > 0 and payload[end - 1] == 0x5C:  # an escaped quote inside the name
            end = payload.find(b'"', end + 1)
        if end < 0:
            return payload
        return payload[:start] + self.new + payload[end + 1 :]


class GenerationTally:
    """How much an upstream generated so far: its running usage per choice when it sends one,
    else the gateway's own count of the generated text (``count_generated``).

    The stream meter and the whole-answer assembler both keep one, so that a cut at the
    reservation, a checkpoint and a settlement read the same figures however they were sent.
    """

    def __init__(self) -> None:
        self.choices: dict[int, Usage] = {}  # the running usage per choice, when reported
        self.final: Usage | None = None  # the closing usage, when reported
        self.text_bytes = 0  # generated text so far, in bytes: a bound on its tokens
        self._counted = (0, 0)  # (text bytes, tokens) at the last count

    def count_generated(self) -> int:
        """The gateway's own count of the generated text (for upstreams without usage)."""
        raise NotImplementedError

    def completion_so_far(self) -> int:
        """Completion tokens the upstream reported so far, over all choices."""
        if len(self.choices) == 1:
            return next(iter(self.choices.values())).completion_tokens
        return sum(u.completion_tokens for u in self.choices.values())

    def exceeds(self, limit: int) -> bool:
        """Whether more than ``limit`` completion tokens were generated: the upstream's running
        count, else ours. Ours is recounted only once enough bytes arrived since the last count
        to pass ``limit`` (a token is at least a byte), so a long stream is not re-tokenized
        at every read."""
        if self.choices:
            return self.completion_so_far() > limit
        counted_bytes, counted = self._counted
        if counted + self.text_bytes - counted_bytes <= limit:
            return False
        self._counted = (self.text_bytes, self.count_generated())
        return self._counted[1] > limit

    def progress(self) -> tuple[int, int | None]:
        """(completion tokens generated so far, prompt tokens if the upstream reported
        them): what a checkpoint records for the reaper."""
        delivered = self.delivered()
        return delivered.completion_tokens, delivered.prompt_tokens or None

    def delivered(self, prompt: Callable[[], int] = lambda: 0) -> Usage:
        """What was generated: the upstream's running usage, else the gateway's own count
        (``prompt`` counts the prompt, called only then)."""
        if self.choices:
            per_choice = list(self.choices.values())
            return Usage(max(u.prompt_tokens for u in per_choice),
                         sum(u.completion_tokens for u in per_choice),
                         max(u.cached_tokens for u in per_choice))
        return Usage(prompt(), self.count_generated(), 0)


class StreamMeter(GenerationTally):
    """Splits an upstream SSE byte stream into events, counts usage, rewrites what must change.

    ``feed`` returns the bytes to forward to the client. ``running`` is the upstream's running
    usage as of the last forwarded event; ``final`` is the upstream's closing usage, if sent.
    """

    def __init__(
        self,
        rename: ModelRenamer,
        client_include_usage: bool,
        client_continuous_usage: bool,
        tokenizer: Tokenizer | None = None,
        *,
        whole_blocks: bool = True,
    ) -> None:
        super().__init__()
        self._rename = rename
        self._whole_blocks = whole_blocks
        self._upstream_model: bytes | None = None  # b'"model":"<as the upstream calls it>"'
        self._show_final = client_include_usage
        self._show_running = client_include_usage and client_continuous_usage
        self._tokenizer = tokenizer
        self._pending = b""
        self._texts: list[str] = []  # only used when the upstream sends no running usage
        self.running: Usage | None = None
        self.done = False
        self.error: bytes | None = None

    def feed(self, data: bytes) -> bytes:
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n\n")
        if end < 0:
            self._pending = buffer
            return b""
        self._pending = buffer[end + 2 :]
        if self._upstream_model is None:
            self._learn_model_name(buffer)
        if self._whole_blocks and self._upstream_model is not None:
            # The stream's end (final usage chunk, [DONE]) goes event by event, the rest whole.
            split = end + 2
            for marker in (b'"choices":[]', b"data: [DONE]"):
                at = buffer.find(marker, 0, split)
                if at >= 0:
                    start = buffer.rfind(b"\n\n", 0, at)  # the end of the event before it
                    split = start + 2 if start >= 0 else 0
            if split > 0:
                out = self._block(buffer[:split])
                if out is not None:
                    return out + self._events(buffer[split:end]) if split < end else out
        return self._events(buffer[:end])

    def _events(self, events: bytes) -> bytes:
        return b"".join([self._event(ev) for ev in events.split(b"\n\n")])

    def _block(self, block: bytes) -> bytes | None:
        """A block of ordinary choice-0 token chunks, whole; None when it is anything else."""
        # JSON never holds a raw newline, so when the block starts with an event, ends with
        # one, has two newlines per "}\n\ndata: {" seam plus the final two, every event is
        # one "data: {...}" line. Each key below occurs at most once per chunk object, so
        # equal counts then mean every event is choice 0's, with its usage (and, when it
        # must be renamed, under the model name we know).
        model: bytes = self._upstream_model  # type: ignore[assignment]
        if not block.startswith(_EVENT) or not block.endswith(_LAST):
            return None
        events = block.count(_SEAM) + 1
        if block.count(b"\n") != 2 * events or block.count(_CHOICE0) != events:
            return None
        new = self._rename.new
        if new != model:  # renamed in every event, or the block is not ours to pass whole
            named = block.split(model)
            if len(named) != events + 1:
                return None
            block = new.join(named)
        parts = block.split(_HAS_USAGE)
        if len(parts) != events + 1:
            return None
        out = block if self._show_running else _without_usage(parts)
        usage = last_usage(block)
        if usage is not None:  # always: every event of the block has one
            self.choices[0] = self.running = usage
        return out

    def _event(self, event: bytes) -> bytes:
        event = event.strip(b"\r\n")
        if not event.startswith(_DATA):
            return event + b"\n\n" if event else b""
        payload = event[6:]
        if payload == _DONE:
            self.done = True
            return b"data: [DONE]\n\n"
        if payload.startswith(b'{"error"'):
            self.error = payload
            return b"data: " + self._client_error(payload) + b"\n\n"
        payload = self._usage(payload)
        return b"data: " + self._rename(payload) + b"\n\n" if payload else b""

    def _client_error(self, payload: bytes) -> bytes:
        """The upstream's error event with nothing internal in it (gateway.errors); its own
        text goes to the log."""
        log.warning("upstream error event mid-answer: %r", payload[:500])
        served = self._upstream_model[9:-1].decode("utf-8", "replace") if self._upstream_model else None
        return upstream_event_error(payload, served, orjson.loads(self._rename.new[8:]))

    def _learn_model_name(self, events: bytes) -> None:
        """The upstream's ``"model":"..."`` (from the first event that has one), which whole
        blocks replace; names with escapes are left to the event-by-event path."""
        start = events.find(b'"model":"')
        end = events.find(b'"', start + 9)
        if start >= 0 and end > 0 and b"\\" not in events[start:end]:
            self._upstream_model = events[start : end + 1]

    def _usage(self, payload: bytes) -> bytes:
        """Record the event's usage; return it as the client should see it (b"" = drop)."""
        cut = payload.rfind(_USAGE)
        if cut < 0 or not payload.endswith(b"}}"):
            if b'"usage"' in payload:
                return self._usage_slow(payload)
            if self._tokenizer is not None:
                self._collect_text(payload)
            return payload
        raw = payload[cut + len(_USAGE) : -1]
        if raw == b"null":
            return payload[:cut] + b"}" if not self._show_final else payload
        try:
            usage = Usage.from_json(orjson.loads(raw))
        except orjson.JSONDecodeError:  # usage was not the last field after all
            return self._usage_slow(payload)
        if b'"choices":[]' in payload:
            self.final = usage
            return payload if self._show_final else b""
        self._record_running(payload, usage)
        return payload if self._show_running else payload[:cut] + b"}"

    def _usage_slow(self, payload: bytes) -> bytes:
        doc = orjson.loads(payload)
        raw = doc.pop("usage", None)
        if raw is None:  # "usage": null on every chunk, as OpenAI sends with include_usage
            if self._tokenizer is not None:
                self._collect_from(doc)
            return orjson.dumps(doc) if not self._show_final else payload
        usage = Usage.from_json(raw)
        if not doc.get("choices"):
            self.final = usage
            return payload if self._show_final else b""
        self._record_running(payload, usage)
        return payload if self._show_running else orjson.dumps(doc)

    def _record_running(self, payload: bytes, usage: Usage) -> None:
        """Keep the running usage per choice: with n > 1 vLLM counts each choice apart."""
        at = payload.find(b'"choices":[{"index":')
        index = 0
        if at >= 0:
            digits = payload[at + 20 : at + 26]
            end = 0
            while end < len(digits) and 0x30 <= digits[end] <= 0x39:
                end += 1
            index = int(digits[:end]) if end else 0
        self.choices[index] = usage
        self.running = usage

    def _collect_text(self, payload: bytes) -> None:
        self._collect_from(orjson.loads(payload))

    def _collect_from(self, doc: dict[str, Any]) -> None:
        """Keep what a chunk generated (text, reasoning, tool calls) for our own count."""
        for choice in doc.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if "delta" not in choice:
                self._keep(choice.get("text"))
                continue
            delta = choice.get("delta") or {}
            self._keep(delta.get("content"))
            self._keep(delta.get("reasoning_content", delta.get("reasoning")))
            for call in delta.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self._keep(function.get("name"))
                    self._keep(function.get("arguments"))
            function = delta.get("function_call")
            if isinstance(function, dict):
                self._keep(function.get("name"))
                self._keep(function.get("arguments"))

    def _keep(self, text: object) -> None:
        if isinstance(text, str) and text:
            self._texts.append(text)
            self.text_bytes += len(text.encode())

    def count_generated(self) -> int:
        if self._tokenizer is None or not self._texts:
            return 0
        return len(self._tokenizer.encode("".join(self._texts)))


def usage_of_response(body: bytes) -> Usage | None:
    """The usage block of a non-streamed response, if any."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    return Usage.from_json(usage) if isinstance(usage, dict) else None


def _without_usage(parts: list[bytes]) -> bytes:
    """A block split at each ``,"usage":{"``, joined again with every usage object cut out.

    A usage object holds numbers, nulls and objects of numbers: one level of nesting.
    """
    out = [parts[0]]
    for part in parts[1:]:
        end = part.find(b"}")
        opened = part.find(b"{", 0, end)
        while opened >= 0:  # a nested object closed at ``end``: the usage closes later
            after = part.find(b"}", end + 1)
            opened = part.find(b"{", end + 1, after)
            end = after
        out.append(part[end + 1 :])
    return b"".join(out)


def last_usage(events: bytes, start: int = 0, end: int | None = None) -> Usage | None:
    """The usage object of the last event of ``events[start:end]`` that carries one, read
    with byte searches (compact JSON, usage last: vLLM's chunks); None if none does."""
    at = events.rfind(_HAS_USAGE, start, len(events) if end is None else end)
    if at < 0:
        return None
    usage = events[at + len(_HAS_USAGE) - 1 : end]
    return Usage(int_after(usage, _PROMPT), int_after(usage, _COMPLETION), int_after(usage, _CACHED))


def int_after(text: bytes, name: bytes) -> int:
    """The integer after the first ``name`` in ``text`` (0 if absent)."""
    at = text.find(name)
    if at < 0:
        return 0
    at += len(name)
    end, size = at, len(text)
    while end < size and 0x30 <= text[end] <= 0x39:
        end += 1
    return int(text[at:end]) if end > at else 0

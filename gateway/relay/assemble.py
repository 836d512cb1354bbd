"""A whole (non-streamed) answer, assembled from the upstream's stream.

The gateway asks the upstream for a stream even when the client wants one JSON answer:
every chunk then carries the running usage, so a generation the gateway gives up on (the
client left, a timeout, a cut at the reservation, an upstream dying mid-way) is billed for
what the upstream had generated, and a long generation is not mistaken for a hung endpoint.
The client still gets the answer vLLM would have sent whole (``chat.completion`` or
``text_completion``), with the public model name.

Most events are ordinary content chunks of choice 0 (``"delta":{"content":"..."}`` or
``"text":"..."``, no finish reason yet). Their text is kept as the escaped JSON string body
it arrives as (the concatenation of escaped bodies is itself one), cut out with two byte
searches; every other event (the role chunk, the last chunk of a choice, tool calls,
reasoning, logprobs, ``n > 1``, the usage trailer, errors) is parsed with orjson.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gateway.relay.meter import GenerationTally, Usage, last_usage
from gateway.tokenizers import Tokenizer

_DATA = b"data: "
_DONE = b"[DONE]"
_CHAT_TEXT = b'"choices":[{"index":0,"delta":{"content":"'
_TEXT = b'"choices":[{"index":0,"text":"'
# What follows an ordinary chunk's text: no logprobs, no finish reason (so not its last).
# Its first quote ends the JSON string: in valid JSON the rest cannot occur inside one.
_CHAT_TAIL = b'"},"logprobs":null,"finish_reason":null'
_TEXT_TAIL = b'","logprobs":null,"finish_reason":null'
_FINISHED = b'"finish_reason":"'
_SEAM = b"\n\n"


@dataclass(slots=True)
class _Choice:
    """One choice as it accumulates; texts are escaped JSON string bodies."""

    index: int
    text: list[bytes] = field(default_factory=list)
    reasoning: list[bytes] = field(default_factory=list)
    tools: dict[int, dict[str, Any]] = field(default_factory=dict)
    function_call: dict[str, str] | None = None
    logprobs: dict[str, list[Any]] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    role: str = "assistant"


class AnswerAssembler(GenerationTally):
    """Feed it the upstream's SSE bytes; ``body()`` is the answer the client gets.

    It counts as :class:`gateway.relay.meter.StreamMeter` does (a GenerationTally; its
    escaped text bytes bound the tokens too); ``done`` is set by ``[DONE]`` and ``error`` by
    an error event.
    """

    def __init__(self, kind: Literal["chat", "completions"], public_model: str,
                 tokenizer: Tokenizer | None = None) -> None:
        super().__init__()
        self._chat = kind == "chat"
        self._model = public_model
        self._tokenizer = tokenizer
        self._key, self._tail = (_CHAT_TEXT, _CHAT_TAIL) if self._chat else (_TEXT, _TEXT_TAIL)
        self._pending = b""
        self._texts: dict[int, _Choice] = {}
        self._meta: dict[str, Any] = {}
        self.final_raw: dict[str, Any] | None = None
        self.done = False
        self.error: bytes | None = None

    # --- feeding ----------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(_SEAM) + 2
        if end < 2:
            self._pending = buffer
            return
        self._pending = buffer[end:]
        events = buffer if end == len(buffer) else buffer[:end]
        run = self._run_of_ordinary(events)
        if run is None:
            self._events(events)
            return
        start, stop, last, pieces = run
        if start:
            self._events(events[:start])
        self._choice(0).text.extend(pieces)
        self.text_bytes += sum(map(len, pieces))
        running = last_usage(events, last, stop)  # the run's last chunk's
        if running is not None:
            self.choices[0] = running
        if stop < end:
            self._events(events[stop:])

    def _run_of_ordinary(self, events: bytes) -> tuple[int, int, int, list[bytes]] | None:
        """The run of ordinary choice-0 chunks in ``events`` (whole events), with a few byte
        operations for all of them: where it starts, ends and its last chunk starts, and the
        text of each; None if there is none, or anything else is mixed into it (then every
        event is parsed).

        The run ends before the first chunk that finishes a choice. Every event starts with
        "data: "; the key (text of choice 0 next) and the tail (no finish reason) cannot occur
        inside a JSON string (their quotes would be escaped): as many of each as events
        means every event of the run is an ordinary chunk (a text holding "data: " makes the
        counts differ: that run is parsed, and right)."""
        key, tail = self._key, self._tail
        first = events.find(key)
        if first < 0:
            return None
        start = events.rfind(_SEAM, 0, first) + 2
        start = start if start > 1 else 0
        finished = events.find(_FINISHED, first)  # the run ends before that chunk's line
        cut = events.rfind(_SEAM, start, finished) + 2 if finished >= 0 else len(events)
        last = events.rfind(key, start, cut)
        if last < 0:
            return None
        stop = events.find(_SEAM, last) + 2
        parts = events[start:stop].split(key)
        count = len(parts) - 1
        if events.count(_DATA, start, stop) != count or events.count(tail, start, stop) != count:
            return None
        return start, stop, last, [part[: part.find(tail)] for part in parts[1:]]

    def _choice(self, index: int) -> _Choice:
        choice = self._texts.get(index)
        if choice is None:
            choice = self._texts[index] = _Choice(index)
        return choice

    def _events(self, events: bytes) -> None:
        for event in events.split(b"\n\n"):
            event = event.strip(b"\r\n")
            if event.startswith(_DATA):
                self._event(event[6:])

    def _event(self, payload: bytes) -> None:
        if payload == _DONE:
            self.done = True
            return
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return  # not JSON: nothing to count or assemble
        if not isinstance(doc, dict):
            return
        if "error" in doc and "choices" not in doc:
            self.error = payload
            return
        for name in ("id", "created", "system_fingerprint"):
            if name in doc and name not in self._meta:
                self._meta[name] = doc[name]
        usage = doc.get("usage")
        choices = doc.get("choices") or []
        if isinstance(usage, dict):
            if not choices:
                self.final = Usage.from_json(usage)
                self.final_raw = usage
            else:
                index = choices[0].get("index", 0) if isinstance(choices[0], dict) else 0
                self.choices[index if isinstance(index, int) else 0] = Usage.from_json(usage)
        for choice in choices:
            if isinstance(choice, dict):
                self._merge(choice)

    def _merge(self, raw: dict[str, Any]) -> None:
        index = raw.get("index", 0)
        choice = self._choice(index if isinstance(index, int) else 0)
        if self._chat:
            delta = raw.get("delta") or {}
            if isinstance(delta.get("role"), str):
                choice.role = delta["role"]
            self._append(choice.text, delta.get("content"))
            self._append(choice.reasoning, delta.get("reasoning_content", delta.get("reasoning")))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    self._merge_tool_call(choice, call)
            if isinstance(delta.get("function_call"), dict):
                old = choice.function_call or {"name": "", "arguments": ""}
                new = delta["function_call"]
                old["name"] += str(new.get("name") or "")
                old["arguments"] += str(new.get("arguments") or "")
                self.text_bytes += len(str(new.get("arguments") or ""))
                choice.function_call = old
        else:
            self._append(choice.text, raw.get("text"))
        logprobs = raw.get("logprobs")
        if isinstance(logprobs, dict):
            merged = choice.logprobs if choice.logprobs is not None else {}
            for name, values in logprobs.items():
                if isinstance(values, list):
                    merged.setdefault(name, []).extend(values)
            choice.logprobs = merged
        if raw.get("finish_reason") is not None:
            choice.finish_reason = raw["finish_reason"]
        if raw.get("stop_reason") is not None:
            choice.stop_reason = raw["stop_reason"]

    def _append(self, pieces: list[bytes], text: Any) -> None:
        if isinstance(text, str) and text:
            piece = orjson.dumps(text)[1:-1]
            pieces.append(piece)
            self.text_bytes += len(piece)

    def _merge_tool_call(self, choice: _Choice, call: dict[str, Any]) -> None:
        position = call.get("index", len(choice.tools))
        position = position if isinstance(position, int) else len(choice.tools)
        tool = choice.tools.setdefault(position, {"id": None, "type": "function",
                                                  "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            tool["id"] = call["id"]
        if call.get("type"):
            tool["type"] = call["type"]
        function = call.get("function") or {}
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(name, str):
            tool["function"]["name"] += name
            self.text_bytes += len(name)
        if isinstance(arguments, str):
            tool["function"]["arguments"] += arguments
            self.text_bytes += len(arguments.encode())

    # --- counting (the rest is GenerationTally's) ----------------------------------------

    def count_generated(self) -> int:
        """The gateway's own count of the generated text (content, reasoning, tool calls)."""
        if self._tokenizer is None or not self._texts:
            return 0
        encode = self._tokenizer.encode
        total = 0
        for choice in self._texts.values():
            for text in (_decoded(choice.text), _decoded(choice.reasoning)):
                total += len(encode(text)) if text else 0
            for tool in choice.tools.values():
                function = tool["function"]
                total += len(encode(function["name"] + function["arguments"]))
            if choice.function_call:
                total += len(encode(choice.function_call["name"] + choice.function_call["arguments"]))
        return total

    # --- the answer ---------------------------------------------------------------------------

    def body(self, usage: Usage, cut: bool = False) -> bytes:
        """The whole answer as vLLM would have sent it; ``cut``: unfinished choices end as
        ``length`` (the gateway stopped them at the reservation)."""
        choices = [self._choice_doc(self._texts[i], cut) for i in sorted(self._texts)]
        doc: dict[str, Any] = {
            "id": self._meta.get("id", ""),
            "object": "chat.completion" if self._chat else "text_completion",
            "created": self._meta.get("created", 0),
            "model": self._model,
            "choices": choices,
            "usage": self._usage(usage),
        }
        if "system_fingerprint" in self._meta:
            doc["system_fingerprint"] = self._meta["system_fingerprint"]
        return orjson.dumps(doc)

    def _choice_doc(self, choice: _Choice, cut: bool) -> dict[str, Any]:
        finish = choice.finish_reason or ("length" if cut else None)
        out: dict[str, Any] = {"index": choice.index}
        if self._chat:
            message: dict[str, Any] = {"role": choice.role}
            text = _decoded(choice.text)
            message["content"] = text if text or not (choice.tools or choice.function_call) else None
            if choice.reasoning:
                message["reasoning_content"] = _decoded(choice.reasoning)
            if choice.tools:
                message["tool_calls"] = [choice.tools[i] for i in sorted(choice.tools)]
            if choice.function_call:
                message["function_call"] = choice.function_call
            out["message"] = message
        else:
            out["text"] = _decoded(choice.text)
        out["logprobs"] = choice.logprobs
        out["finish_reason"] = finish
        out["stop_reason"] = choice.stop_reason
        return out

    def _usage(self, usage: Usage) -> dict[str, Any]:
        if self.final_raw is not None and self.final is not None and self.final == usage:
            return self.final_raw
        out: dict[str, Any] = {
            "prompt_tokens": usage.prompt_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "completion_tokens": usage.completion_tokens,
        }
        if usage.cached_tokens:
            out["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
        return out


def _decoded(pieces: list[bytes]) -> str:
    """Escaped JSON string bodies, joined and decoded once."""
    if not pieces:
        return ""
    text = orjson.loads(b'"' + b"".join(pieces) + b'"')
    return str(text)


def answer_as_stream(body: bytes, public_model: str, include_usage: bool) -> bytes | None:
    """A whole answer (from an upstream that does not stream) as the SSE events a streaming
    client expects: one chunk per choice with all its text, the usage trailer when asked
    for, ``[DONE]``. None if ``body`` is not an answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("choices"), list):
        return None
    chat = doc.get("object") != "text_completion"
    head = {"id": doc.get("id", ""), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": doc.get("created", 0), "model": public_model}
    events = []
    for choice in doc["choices"]:
        if not isinstance(choice, dict):
            continue
        part: dict[str, Any] = {"index": choice.get("index", 0)}
        if chat:
            message = choice.get("message") or {}
            part["delta"] = {k: v for k, v in message.items() if v is not None}
        else:
            part["text"] = choice.get("text", "")
        part["logprobs"] = choice.get("logprobs")
        part["finish_reason"] = choice.get("finish_reason")
        events.append({**head, "choices": [part]})
    if include_usage and isinstance(doc.get("usage"), dict):
        events.append({**head, "choices": [], "usage": doc["usage"]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def answer_tokens(body: bytes, tokenizer: Tokenizer) -> int:
    """The gateway's count of what a whole answer generated (for one that reports no usage)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 0
    texts: list[str] = []
    for choice in (doc.get("choices") if isinstance(doc, dict) else None) or ():
        if isinstance(choice, dict):
            _texts_of(choice, texts)
    return len(tokenizer.encode("".join(texts))) if texts else 0


def _texts_of(choice: dict[str, Any], texts: list[str]) -> None:
    message = choice.get("message")
    parts: list[Any] = [choice.get("text")]
    if isinstance(message, dict):
        parts += [message.get("content"), message.get("reasoning_content"), message.get("reasoning")]
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts += [function.get("name"), function.get("arguments")]
    texts.extend(p for p in parts if isinstance(p, str))

"""The whole answer assembled from an upstream stream, and the gateway's own counts when the
upstream reports no usage (text, reasoning and tool-call arguments alike)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from gateway.relay.assemble import AnswerAssembler, answer_as_stream, answer_tokens
from gateway.relay.meter import ModelRenamer, StreamMeter, Usage
from gateway.tokenizers import load_tokenizer
from loadtest.vllm_sim.textgen import Seq, SimModel
from loadtest.vllm_sim.wire import StreamFormat

CL100K = load_tokenizer("tiktoken:cl100k_base")


def sse(*docs: dict[str, Any] | str) -> bytes:
    return b"".join(b"data: " + (d.encode() if isinstance(d, str) else orjson.dumps(d)) + b"\n\n"
                    for d in docs)


def chunk(delta: dict[str, Any], index: int = 0, finish: str | None = None,
          usage: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7,
                           "model": "org/M", "choices": [{"index": index, "delta": delta,
                                                           "logprobs": None, "finish_reason": finish,
                                                           **extra}]}
    if usage is not None:
        doc["usage"] = usage
    return doc


def vllm_stream(text_seq: Seq, chat: bool = True, continuous: bool = True) -> bytes:
    """What the simulator (vLLM's wire format) streams for one choice."""
    model = SimModel.for_tokenizer("tiktoken:cl100k_base")
    fmt = StreamFormat(chat, "chatcmpl-x", 11, "org/M", model.vocab_json)
    prompt = 9 if continuous else None
    parts = [fmt.role_chunk(0, prompt)] if chat else []
    parts += [fmt.token_chunk(text_seq, i, prompt) for i in range(text_seq.ntokens)]
    parts += [fmt.usage_chunk(9, text_seq.ntokens), b"data: [DONE]\n\n"]
    return b"".join(parts)


def test_vllm_chat_stream_assembles_in_any_split() -> None:
    seq = SimModel.for_tokenizer("tiktoken:cl100k_base").generate(b"p", 0, 0, 30)
    data = vllm_stream(seq)
    expected = SimModel.for_tokenizer("tiktoken:cl100k_base").text(seq)
    for size in (1, 7, 100, len(data)):
        answer = AnswerAssembler("chat", "public", CL100K)
        for at in range(0, len(data), size):
            answer.feed(data[at : at + size])
        assert answer.done and answer.final == Usage(9, seq.ntokens, 0)
        doc = orjson.loads(answer.body(answer.final))
        assert doc["model"] == "public" and doc["object"] == "chat.completion"
        assert doc["id"] == "chatcmpl-x" and doc["created"] == 11
        assert doc["choices"][0]["message"] == {"role": "assistant", "content": expected}
        assert doc["choices"][0]["finish_reason"] == seq.finish
        assert doc["usage"]["completion_tokens"] == seq.ntokens


def test_vllm_completions_stream_assembles() -> None:
    seq = SimModel.for_tokenizer("tiktoken:cl100k_base").generate(b"q", 0, 0, 12)
    answer = AnswerAssembler("completions", "public")
    answer.feed(vllm_stream(seq, chat=False))
    doc = orjson.loads(answer.body(answer.final or Usage()))
    assert doc["object"] == "text_completion"
    assert doc["choices"][0]["text"] == SimModel.for_tokenizer("tiktoken:cl100k_base").text(seq)


@given(st.text(min_size=1, max_size=40))
def test_any_text_survives_the_fast_path(text: str) -> None:
    """Quotes, backslashes and unicode in content come out as they went in."""
    pieces = [text, text[::-1], '"}', "\\"]
    head = chunk({"role": "assistant", "content": ""})
    body = [chunk({"content": p}, usage={"prompt_tokens": 3, "completion_tokens": i + 1})
            for i, p in enumerate(pieces)]
    answer = AnswerAssembler("chat", "m")
    answer.feed(sse(head, *body, chunk({}, finish="stop"), "[DONE]"))
    doc = orjson.loads(answer.body(answer.delivered()))
    assert doc["choices"][0]["message"]["content"] == "".join(pieces)
    assert answer.completion_so_far() == 4


def test_tool_calls_reasoning_and_logprobs_merge() -> None:
    stream = sse(
        chunk({"role": "assistant", "content": ""}),
        chunk({"reasoning_content": "Think "}),
        chunk({"reasoning_content": "hard."}),
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Wuhan"}'}}]}),
        chunk({}, finish="tool_calls"),
        "[DONE]",
    )
    answer = AnswerAssembler("chat", "m", CL100K)
    answer.feed(stream)
    message = orjson.loads(answer.body(answer.delivered(lambda: 5)))["choices"][0]["message"]
    assert message["content"] is None
    assert message["reasoning_content"] == "Think hard."
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Wuhan"}'}}]
    expected = len(CL100K.encode("Think hard.")) + len(CL100K.encode('get_weather{"city": "Wuhan"}'))
    assert answer.delivered(lambda: 5) == Usage(5, expected, 0)  # no usage sent: counted by us


def test_chat_logprobs_concatenate() -> None:
    lp = [{"token": "a", "logprob": -0.1, "bytes": [97], "top_logprobs": []}]
    answer = AnswerAssembler("chat", "m")
    answer.feed(sse(chunk({"content": "a"}, logprobs={"content": lp}),
                    chunk({"content": "a"}, finish="stop", logprobs={"content": lp}), "[DONE]"))
    choice = orjson.loads(answer.body(Usage()))["choices"][0]
    assert choice["logprobs"] == {"content": lp + lp}


def test_a_stream_without_usage_is_cut_by_our_count() -> None:
    """Tool-call arguments count like text: the cut at the reservation fires for them."""
    args = ['{"a": ', '"' + "word " * 20 + '"', "}"]
    events = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in args]
    for feed in (StreamMeter(ModelRenamer("m"), False, False, CL100K), AnswerAssembler("chat", "m", CL100K)):
        feed.feed(sse(events[0]))
        assert not feed.exceeds(10)
        feed.feed(sse(events[1]))
        assert feed.exceeds(10)
        assert feed.delivered().completion_tokens == len(CL100K.encode(args[0] + args[1]))


def test_error_event_is_kept() -> None:
    answer = AnswerAssembler("chat", "m")
    answer.feed(sse(chunk({"content": "x"}), '{"error": {"message": "boom", "code": 500}}', "[DONE]"))
    assert answer.error is not None and b"boom" in answer.error and answer.done


def test_answer_tokens_counts_a_whole_answer_without_usage() -> None:
    body = orjson.dumps({"choices": [{"message": {"content": "hello world", "tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}}]}}, {"text": "more"}]})
    assert answer_tokens(body, CL100K) == len(CL100K.encode("hello worldf{}more"))
    assert answer_tokens(b"not json", CL100K) == 0


def test_a_whole_answer_becomes_the_stream_a_client_asked_for() -> None:
    body = orjson.dumps({"id": "c1", "object": "chat.completion", "created": 3, "model": "org/M",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                                                              "tool_calls": None},
                                      "logprobs": None, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}})
    events = answer_as_stream(body, "public", include_usage=True)
    assert events is not None and events.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(e[6:]) for e in events.split(b"\n\n") if e.startswith(b"data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "hi"}
    assert chunks[0]["model"] == "public" and chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[1] == {"id": "c1", "object": "chat.completion.chunk", "created": 3,
                         "model": "public", "choices": [], "usage": orjson.loads(body)["usage"]}
    assert answer_as_stream(body, "public", include_usage=False).count(b"data: ") == 2  # type: ignore[union-attr]
    assert answer_as_stream(b'{"error": 1}', "m", True) is None


def test_openai_style_null_usage_chunks_are_counted_by_us() -> None:
    """OpenAI sends "usage": null on every chunk until the trailer: a stream cut before the
    trailer is counted from its text."""
    chunks = [chunk({"content": w}, usage=None) for w in (" one", " two", " three")]
    for doc in chunks:
        doc["usage"] = None
    meter = StreamMeter(ModelRenamer("m"), False, False, CL100K)
    out = meter.feed(sse(*chunks))
    assert b'"usage"' not in out  # hidden from a client that did not ask
    assert meter.delivered(lambda: 7) == Usage(7, len(CL100K.encode(" one two three")), 0)
    assert meter.exceeds(2) and not meter.exceeds(3)

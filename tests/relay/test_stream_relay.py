"""relay_stream in-process: scripted upstream bytes in, the client's bytes and the Outcome out."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.openai_request import OpenAIRequest, parse_request
from gateway.relay.meter import Usage
from gateway.relay.outcome import Outcome
from gateway.relay.stream import relay_stream
from gateway.tokenizers import load_tokenizer
from tests.relay.scripted import (
    ADMISSION_HEADERS,
    DONE,
    END,
    MODEL,
    PUBLIC,
    SSE_HEAD,
    Client,
    Held,
    Upstream,
    chat_chunk,
    chunked,
    error_event,
    json_reply,
    renamed,
    stream_reply,
    usage,
    usage_chunk,
)

PROMPT = 5  # what the upstream reports for the prompt
COUNTED_PROMPT = 42  # what the gateway counts for it when the upstream reports nothing
ANSWER = (
    chat_chunk("", role="assistant", used=(PROMPT, 0)),
    chat_chunk("Hello", used=(PROMPT, 1)),
    chat_chunk(" world", finish="stop", used=(PROMPT, 2)),
    usage_chunk(PROMPT, 2),
    DONE,
)


def chat(**options: Any) -> OpenAIRequest:
    body = {"model": PUBLIC, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    if options:
        body["stream_options"] = options
    return parse_request("chat", orjson.dumps(body))


async def relay(upstream: Upstream, client: Client, request: OpenAIRequest | None = None, *,
                reserved: int = 100, held: Held | None = None, idle_timeout: float = 5.0) -> Outcome:
    """Open the scripted answer and relay it as its own task, as a server would run it."""
    response = await upstream.open(idle_timeout=idle_timeout)
    return await asyncio.create_task(relay_stream(
        held or Held(), client.send, client.receive, "req-1", response, request or chat(), MODEL,
        reserved, ADMISSION_HEADERS, lambda: COUNTED_PROMPT))


async def test_usage_reaches_the_client_only_when_asked(upstream: Upstream) -> None:
    for options, trailer in (({}, False), ({"include_usage": True}, True)):
        upstream.reply(stream_reply(*ANSWER))
        client = Client()
        outcome = await relay(upstream, client, chat(**options))
        assert outcome == Outcome(Usage(PROMPT, 2))  # the upstream's count, status ok
        assert client.status == 200 and client.ended
        assert client.headers[b"content-type"].startswith(b"text/event-stream")
        assert client.headers[b"x-request-id"] == b"req-1"
        assert client.headers[b"x-ratelimit-limit-requests"] == b"60"
        expected = [chat_chunk("", role="assistant", model=PUBLIC), chat_chunk("Hello", model=PUBLIC),
                    chat_chunk(" world", finish="stop", model=PUBLIC)]
        if trailer:
            expected.append(usage_chunk(PROMPT, 2, model=PUBLIC))
        assert client.events == [*expected, DONE]
    assert upstream.connections == 1  # the connection went back to the pool both times


async def test_continuous_usage_passes_every_chunk_through(upstream: Upstream) -> None:
    upstream.reply(stream_reply(*ANSWER))
    client = Client()
    outcome = await relay(upstream, client, chat(include_usage=True, continuous_usage_stats=True))
    assert outcome == Outcome(Usage(PROMPT, 2))
    assert client.body == renamed(b"".join(ANSWER))


async def test_an_upstream_without_usage_is_counted_by_the_gateway(upstream: Upstream) -> None:
    upstream.reply(stream_reply(chat_chunk("", role="assistant"), chat_chunk("Hello"),
                                chat_chunk(" world", finish="stop"), DONE))
    client = Client()
    outcome = await relay(upstream, client, chat(include_usage=True))
    generated = len(load_tokenizer(MODEL.tokenizer).encode("Hello world"))
    assert outcome == Outcome(Usage(COUNTED_PROMPT, generated), counted_by="gateway")
    assert client.events[-1] == DONE and b"usage" not in client.body


async def test_a_cut_mid_stream_bills_what_was_generated_and_blames_the_upstream(
    upstream: Upstream
) -> None:
    upstream.reply(SSE_HEAD, chunked(*ANSWER[:2]), 0.05, chunked(ANSWER[2][:40]), None)
    client = Client()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 1), status="partial", counted_by="gateway",
                              upstream_fault=True)
    events = client.events
    assert events[:2] == [chat_chunk("", role="assistant", model=PUBLIC), chat_chunk("Hello", model=PUBLIC)]
    error = orjson.loads(events[2][6:])["error"]
    assert error["type"] == "upstream_error" and "connection lost" in error["message"]
    assert events[3:] == [DONE] and client.ended


async def test_a_client_gone_mid_stream_stops_the_upstream_at_once(upstream: Upstream) -> None:
    upstream.reply(SSE_HEAD + chunked(*ANSWER[:2]), 5.0, chunked(*ANSWER[2:]) + END)
    client = Client(leave_after=1)
    started = asyncio.get_running_loop().time()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 1), status="client_gone", counted_by="gateway")
    await asyncio.wait_for(upstream.left.wait(), 1.0)  # the upstream request was aborted
    assert asyncio.get_running_loop().time() - started < 2.0
    assert not client.ended  # nothing more was sent to a client that left


async def test_a_client_gone_after_the_end_is_a_complete_answer(upstream: Upstream) -> None:
    upstream.reply(stream_reply(*ANSWER))
    client = Client(leave_after=1)
    outcome = await relay(upstream, client)
    assert outcome.status in ("ok", "client_gone")  # the leaving may race the last read
    assert outcome.usage.completion_tokens == 2


async def test_an_error_event_mid_stream_is_relayed_and_billed(upstream: Upstream) -> None:
    upstream.reply(stream_reply(*ANSWER[:2], error_event("engine died", 500), DONE))
    client = Client()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 1), status="upstream_error", counted_by="gateway")
    # relayed as an error event in OpenAI's shape, without the upstream's own text (a failure's
    # message may show internals: it is for the operator's log, not the client)
    assert client.events[-1] == DONE and b"engine died" not in client.events[-2]
    assert orjson.loads(client.events[-2].removeprefix(b"data: ")) == {"error": {
        "message": "the model server failed to answer (502)", "type": "upstream_error", "code": None,
        "param": None}}


async def test_a_stream_past_the_reservation_is_cut_and_not_the_upstreams_fault(
    upstream: Upstream
) -> None:
    upstream.reply(SSE_HEAD, chunked(*ANSWER[:2]), 0.05, chunked(ANSWER[2]), 5.0, chunked(*ANSWER[3:]), END)
    client = Client()
    outcome = await relay(upstream, client, reserved=1)
    assert outcome == Outcome(Usage(PROMPT, 2), status="partial", counted_by="gateway")
    assert b"exceeded the reserved tokens" in client.events[-2] and client.events[-1] == DONE
    await asyncio.wait_for(upstream.left.wait(), 1.0)  # and the upstream told to stop


async def test_a_reservation_found_gone_stops_the_stream(upstream: Upstream) -> None:
    held = Held(lost=True)  # a checkpoint found it gone
    upstream.reply(SSE_HEAD, chunked(*ANSWER[:2]), 0.05, chunked(*ANSWER[2:]), END)
    client = Client()
    outcome = await relay(upstream, client, held=held)
    assert outcome.status == "partial" and not outcome.upstream_fault
    assert b"reservation expired" in client.events[-2]
    assert held.progress is not None and held.progress() == (1, PROMPT)  # what checkpoints record


async def test_a_silent_upstream_times_out_without_blame(upstream: Upstream) -> None:
    upstream.reply(SSE_HEAD + chunked(*ANSWER[:2]), 5.0)
    client = Client()
    outcome = await relay(upstream, client, idle_timeout=0.2)
    assert outcome == Outcome(Usage(PROMPT, 1), status="partial", counted_by="gateway")
    error = orjson.loads(client.events[-2][6:])["error"]
    assert error["type"] == "upstream_timeout" and error["code"] == "upstream_timeout"


async def test_a_whole_answer_behind_a_stream_request_is_sent_as_events(upstream: Upstream) -> None:
    answer = {"id": "chatcmpl-9", "object": "chat.completion", "created": 3, "model": "org/M",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello world",
                                                   "tool_calls": None},
                           "logprobs": None, "finish_reason": "stop"}],
              "usage": usage(PROMPT, 2)}
    upstream.reply(json_reply(answer))
    client = Client()
    outcome = await relay(upstream, client, chat(include_usage=True))
    assert outcome == Outcome(Usage(PROMPT, 2))
    [first, trailer, done] = client.events
    doc = orjson.loads(first[6:])
    assert doc["object"] == "chat.completion.chunk" and doc["model"] == PUBLIC
    assert doc["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "Hello world"},
                               "logprobs": None, "finish_reason": "stop"}]
    assert orjson.loads(trailer[6:])["usage"] == usage(PROMPT, 2) and done == DONE

    del answer["usage"]  # and without usage, the gateway counts its content
    upstream.reply(json_reply(answer))
    client = Client()
    outcome = await relay(upstream, client, chat(include_usage=True))
    generated = len(load_tokenizer(MODEL.tokenizer).encode("Hello world"))
    assert outcome == Outcome(Usage(COUNTED_PROMPT, generated), counted_by="gateway")
    assert len(client.events) == 2  # no trailer to show


async def test_neither_a_stream_nor_an_answer_is_the_upstreams_fault(upstream: Upstream) -> None:
    upstream.reply(json_reply(b'{"nonsense": true}'))
    client = Client()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(), status="upstream_error", counted_by="gateway", upstream_fault=True)
    assert b"neither a stream nor an answer" in client.events[0] and client.events[-1] == DONE

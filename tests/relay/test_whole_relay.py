"""relay_whole and relay_json in-process: a whole answer assembled from a scripted upstream
stream (or relayed as the upstream sent it), the client's body and the Outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.errors import UpstreamTimeout
from gateway.openai_request import Kind, OpenAIRequest, parse_request
from gateway.relay.answer import relay_json, relay_whole
from gateway.relay.meter import Usage
from gateway.relay.outcome import Outcome
from gateway.relay.respond import respond
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
    text_chunk,
    usage,
    usage_chunk,
)

PROMPT = 5
COUNTED_PROMPT = 42


def ask(kind: Kind = "chat", **fields: Any) -> OpenAIRequest:
    body: dict[str, Any] = {"model": PUBLIC, **fields}
    if kind == "chat":
        body.setdefault("messages", [{"role": "user", "content": "hi"}])
    elif kind == "completions":
        body.setdefault("prompt", "hi")
    else:
        body.setdefault("input", "hi")
    return parse_request(kind, orjson.dumps(body))


async def relay(upstream: Upstream, client: Client, request: OpenAIRequest | None = None, *,
                reserved: int = 100, deadline_s: float | None = None, held: Held | None = None
                ) -> Outcome:
    response = await upstream.open()
    return await asyncio.create_task(relay_whole(
        held or Held(), client.send, client.receive, "req-1", response, request or ask(), MODEL,
        reserved, ADMISSION_HEADERS, lambda: COUNTED_PROMPT, deadline_s))


def message(client: Client, index: int = 0) -> dict[str, Any]:
    doc = client.json()
    assert doc["model"] == PUBLIC and doc["object"] == "chat.completion"
    return dict(doc["choices"][index]["message"])


async def test_a_chat_answer_is_assembled_from_the_stream(upstream: Upstream) -> None:
    upstream.reply(stream_reply(chat_chunk("", role="assistant", used=(PROMPT, 0)),
                                chat_chunk("Hello", used=(PROMPT, 1)),
                                chat_chunk(" \"world\"", finish="stop", used=(PROMPT, 3)),
                                usage_chunk(PROMPT, 3), DONE))
    client = Client()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 3))
    assert client.status == 200 and client.ended
    assert client.headers[b"content-type"] == b"application/json"
    assert client.headers[b"content-length"] == str(len(client.body)).encode()
    assert client.headers[b"x-ratelimit-limit-requests"] == b"60"
    doc = client.json()
    assert (doc["id"], doc["created"]) == ("chatcmpl-1", 7)
    assert doc["choices"] == [{"index": 0, "message": {"role": "assistant", "content": 'Hello "world"'},
                               "logprobs": None, "finish_reason": "stop", "stop_reason": None}]
    assert doc["usage"] == usage(PROMPT, 3)
    assert upstream.connections == 1 and not upstream.left.is_set()  # pooled, not aborted


async def test_tool_calls_are_assembled(upstream: Upstream) -> None:
    call = {"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}
    upstream.reply(stream_reply(
        chat_chunk(role="assistant", used=(PROMPT, 0)),
        chat_chunk(tool_calls=[call], used=(PROMPT, 1)),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}], used=(PROMPT, 4)),
        chat_chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}], finish="tool_calls",
                   used=(PROMPT, 6)),
        usage_chunk(PROMPT, 6), DONE))
    client = Client()
    assert await relay(upstream, client) == Outcome(Usage(PROMPT, 6))
    assert message(client) == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    assert client.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_several_choices_are_assembled_apart(upstream: Upstream) -> None:
    upstream.reply(stream_reply(
        chat_chunk("", role="assistant", index=0, used=(PROMPT, 0)),
        chat_chunk("", role="assistant", index=1, used=(PROMPT, 0)),
        chat_chunk("A", index=0, used=(PROMPT, 1)),
        chat_chunk("B", index=1, used=(PROMPT, 1)),
        chat_chunk("a", index=0, finish="stop", used=(PROMPT, 2)),
        chat_chunk("b", index=1, finish="length", used=(PROMPT, 2)),
        usage_chunk(PROMPT, 4), DONE))
    client = Client()
    assert await relay(upstream, client, ask(n=2)) == Outcome(Usage(PROMPT, 4))
    choices = client.json()["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "Aa", "stop"), (1, "Bb", "length")]


async def test_a_completion_answer_is_assembled(upstream: Upstream) -> None:
    upstream.reply(stream_reply(text_chunk("Once", used=(PROMPT, 1)),
                                text_chunk(" upon", finish="length", used=(PROMPT, 2)),
                                usage_chunk(PROMPT, 2), DONE))
    client = Client()
    assert await relay(upstream, client, ask("completions", max_tokens=2)) == Outcome(Usage(PROMPT, 2))
    doc = client.json()
    assert doc["object"] == "text_completion" and doc["model"] == PUBLIC
    assert doc["choices"][0]["text"] == "Once upon" and doc["choices"][0]["finish_reason"] == "length"


async def test_an_upstream_without_usage_is_counted_by_the_gateway(upstream: Upstream) -> None:
    upstream.reply(stream_reply(chat_chunk("", role="assistant"), chat_chunk("Hello"),
                                chat_chunk(" world", finish="stop"), DONE))
    client = Client()
    outcome = await relay(upstream, client)
    generated = len(load_tokenizer(MODEL.tokenizer).encode("Hello world"))
    assert outcome == Outcome(Usage(COUNTED_PROMPT, generated), counted_by="gateway")
    assert client.json()["usage"]["completion_tokens"] == generated


async def test_a_whole_upstream_answer_is_relayed_as_it_came(upstream: Upstream) -> None:
    body = orjson.dumps({"id": "chatcmpl-9", "object": "chat.completion", "created": 3, "model": "org/M",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                      "finish_reason": "stop"}], "usage": usage(PROMPT, 1)})
    upstream.reply(json_reply(body))
    client = Client()
    assert await relay(upstream, client) == Outcome(Usage(PROMPT, 1))
    assert client.body == renamed(body)


async def test_the_response_timeout_stops_the_upstream_and_bills_what_it_made(
    upstream: Upstream
) -> None:
    upstream.reply(SSE_HEAD + chunked(chat_chunk("", role="assistant", used=(PROMPT, 0)),
                                      chat_chunk("Hel", used=(PROMPT, 1))), 5.0, END)
    client = Client()
    started = asyncio.get_running_loop().time()
    outcome = await relay(upstream, client, deadline_s=0.3)
    assert 0.3 <= asyncio.get_running_loop().time() - started < 2.0
    assert outcome == Outcome(Usage(PROMPT, 1), status="upstream_error", counted_by="gateway")
    assert not outcome.upstream_fault  # slow is not broken
    assert client.status == 504
    assert client.json()["error"]["type"] == "upstream_timeout"
    await asyncio.wait_for(upstream.left.wait(), 1.0)  # the generation was stopped upstream


async def test_a_cut_before_the_end_may_be_answered_elsewhere(upstream: Upstream) -> None:
    upstream.reply(SSE_HEAD, chunked(chat_chunk("", role="assistant", used=(PROMPT, 0)),
                                     chat_chunk("Hello", used=(PROMPT, 1))), 0.05, None)
    client = Client()
    outcome = await relay(upstream, client)
    assert client.messages == []  # nothing reached the client: another endpoint may answer
    assert outcome.unanswered is not None  # and this is what the client gets if none does
    assert outcome.unanswered.status == 502 and "connection lost" in outcome.unanswered.message
    outcome.unanswered = None
    assert outcome == Outcome(Usage(PROMPT, 1), status="upstream_error", counted_by="gateway",
                              upstream_fault=True)  # billed: the upstream did generate it


async def test_a_client_gone_mid_answer_bills_what_was_generated(upstream: Upstream) -> None:
    upstream.reply(SSE_HEAD + chunked(chat_chunk("Hello", used=(PROMPT, 1))), 5.0, END)
    client = Client()
    asyncio.get_running_loop().call_later(0.05, client.leave)
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 1), status="client_gone", counted_by="gateway")
    assert client.messages == []
    await asyncio.wait_for(upstream.left.wait(), 1.0)


async def test_an_answer_past_the_reservation_is_cut_short(upstream: Upstream) -> None:
    upstream.reply(SSE_HEAD, chunked(chat_chunk("Hello", used=(PROMPT, 1)),
                                     chat_chunk(" big", used=(PROMPT, 2))), 5.0, END)
    client = Client()
    outcome = await relay(upstream, client, reserved=1)
    assert outcome == Outcome(Usage(PROMPT, 2), status="partial", counted_by="gateway")
    doc = client.json()
    assert doc["choices"][0]["finish_reason"] == "length" and doc["usage"]["completion_tokens"] == 2


async def test_an_error_event_becomes_the_answers_status(upstream: Upstream) -> None:
    upstream.reply(stream_reply(chat_chunk("Hello", used=(PROMPT, 1)), error_event("too long", 400), DONE))
    client = Client()
    outcome = await relay(upstream, client)
    assert outcome == Outcome(Usage(PROMPT, 1), status="upstream_error", counted_by="gateway")
    assert client.status == 400
    assert client.json()["error"] == {"message": "too long", "type": "invalid_request_error",
                                      "code": None, "param": None}


async def test_a_refusal_is_relayed_as_an_openai_error(upstream: Upstream) -> None:
    """A status other than 200 goes to relay_json, whatever the client asked for."""
    refusal = {"error": {"message": "bad 'temperature'", "type": "BadRequestError",
                         "param": "temperature", "code": 400}}
    upstream.reply(json_reply(refusal, status=400))
    client = Client()
    response = await upstream.open()
    outcome = await respond(Held(), client.send, client.receive, "req-1", response, ask(stream=True),
                            MODEL, 100, ADMISSION_HEADERS, lambda: COUNTED_PROMPT, None)
    assert outcome == Outcome(Usage(), status="upstream_error", counted_by="gateway")
    assert client.status == 400 and client.headers[b"x-request-id"] == b"req-1"
    assert client.json() == {"error": {"message": "bad 'temperature'", "type": "invalid_request_error",
                                       "code": None, "param": "temperature"}}


async def test_an_embedding_is_billed_from_its_usage(upstream: Upstream) -> None:
    body = orjson.dumps({"object": "list", "model": "org/M", "data": [{"index": 0, "embedding": [0.5]}],
                         "usage": {"prompt_tokens": 3, "total_tokens": 3}})
    upstream.reply(json_reply(body))
    client = Client()
    response = await upstream.open(path="/v1/embeddings")
    outcome = await relay_json(client.send, "req-1", response, MODEL, ADMISSION_HEADERS,
                               lambda: COUNTED_PROMPT)
    assert outcome == Outcome(Usage(3, 0))
    assert client.body == renamed(body)


async def test_an_embedding_read_too_long_is_a_timeout(upstream: Upstream) -> None:
    upstream.reply(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
                   5.0)
    client = Client()
    response = await upstream.open(path="/v1/embeddings", idle_timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await relay_json(client.send, "req-1", response, MODEL, ADMISSION_HEADERS, lambda: 0)
    assert client.messages == []

"""Upstreams that report no usage, and one that ignores max_tokens: the gateway counts what was
generated itself (marked ``counted_by: gateway``), cuts at the reservation, and bills it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.prompt_rules import byte_bound
from gateway.quota.pricing import cost
from gateway.tokenizers import load_tokenizer
from tests.gateway.conftest import (
    CHAT_MODEL,
    SERVED_CHAT,
    Gateway,
    Sims,
    openai_client,
    start_gateway,
    start_sims,
    wait_for_event,
    write_config,
)

CL100K = load_tokenizer("tiktoken:cl100k_base")
MESSAGES = [{"role": "user", "content": "Count me a story about the Yangtze and the Han rivers."}]


@pytest.fixture(scope="module")
def mute_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of servers that send no usage and run past max_tokens."""
    sims: Sims = start_sims(2, SERVED_CHAT, "--no-usage", "--ignore-max-tokens", "--itl-ms", "5")
    tmp = tmp_path_factory.mktemp("mute")
    gw = start_gateway(write_config(tmp / "models.yaml", sims), redis_url, tmp / "gateway.log")
    yield gw
    gw.stop()
    sims.stop()


def test_whole_answer_without_usage_is_counted_from_its_content(mute_gateway: Gateway) -> None:
    client = openai_client(mute_gateway.v1, mute_gateway.new_key())
    reply = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=200)
    answer = reply.parse()
    text = answer.choices[0].message.content or ""
    event = wait_for_event(mute_gateway.redis_url, reply.headers["x-request-id"])
    assert (event.status, event.counted_by) == ("ok", "gateway")
    assert event.completion_tokens == len(CL100K.encode(text)) > 0
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)
    assert answer.usage is not None and answer.usage.completion_tokens == event.completion_tokens
    # The prompt is billed at the catalog tokenizer's count, not the byte bound reserved for it.
    content = MESSAGES[0]["content"]
    assert len(CL100K.encode(content)) < event.prompt_tokens < len(CL100K.encode(content)) + 64
    assert event.prompt_tokens < byte_bound(content) + 48


def test_stream_without_usage_is_counted_from_its_text(mute_gateway: Gateway) -> None:
    client = openai_client(mute_gateway.v1, mute_gateway.new_key())
    response = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=200, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    event = wait_for_event(mute_gateway.redis_url, response.headers["x-request-id"])
    assert (event.status, event.counted_by) == ("ok", "gateway")
    assert event.completion_tokens == len(CL100K.encode(text)) > 0


@pytest.mark.parametrize("stream", [True, False])
def test_an_upstream_past_max_tokens_is_cut_and_billed_for_what_it_sent(
        mute_gateway: Gateway, stream: bool) -> None:
    key = mute_gateway.new_key()
    response = httpx.post(mute_gateway.v1 + "/chat/completions", timeout=20,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 3,
                                "stream": stream})
    assert response.status_code == 200
    event = wait_for_event(mute_gateway.redis_url, response.headers["x-request-id"])
    assert (event.status, event.counted_by) == ("partial", "gateway")
    assert 3 < event.completion_tokens <= 6  # cut soon after the reservation's 3
    if stream:
        assert '"error"' in response.text and "exceeded the reserved tokens" in response.text
        text = "".join(
            chunk["choices"][0]["delta"].get("content") or ""
            for line in response.text.split("\n\n")
            if line.startswith("data: {") and '"choices"' in line
            for chunk in [httpx.Response(200, content=line[6:]).json()]
        )
    else:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length"
        text = choice["message"]["content"]
    assert event.completion_tokens == len(CL100K.encode(text))
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)


@pytest.fixture(scope="module")
def whole_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway in front of servers that never stream and report no usage."""
    sims: Sims = start_sims(2, SERVED_CHAT, "--ignore-stream", "--no-usage")
    tmp = tmp_path_factory.mktemp("whole")
    gw = start_gateway(write_config(tmp / "models.yaml", sims), redis_url, tmp / "gateway.log")
    yield gw
    gw.stop()
    sims.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_that_cannot_stream_is_relayed_and_counted(whole_gateway: Gateway,
                                                               stream: bool) -> None:
    client = openai_client(whole_gateway.v1, whole_gateway.new_key())
    if stream:
        response = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=MESSAGES, max_tokens=50, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    else:
        response = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=MESSAGES, max_tokens=50)
        reply = response.parse()
        assert reply.model == CHAT_MODEL
        text = reply.choices[0].message.content or ""
    event = wait_for_event(whole_gateway.redis_url, response.headers["x-request-id"])
    assert (event.status, event.counted_by) == ("ok", "gateway")
    assert event.completion_tokens == len(CL100K.encode(text)) > 0
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)

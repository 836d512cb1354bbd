"""Whole (non-streamed) answers are metered like streams: the gateway asks the upstream for a
stream and assembles the answer, so a long generation is answered (not cut by a timeout),
and whatever the gateway gives up on is aborted upstream and billed for what was generated.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.quota.pricing import cost
from gateway.usage import UsageEvent
from tests.gateway.conftest import (
    CHAT_MODEL,
    SERVED_CHAT,
    Gateway,
    Sims,
    openai_client,
    start_gateway,
    start_sims,
    usage_events,
    wait_for_event,
    write_config,
)

MESSAGES = [{"role": "user", "content": "Tell me a long story about rivers."}]
ITL_MS = 40  # per token: 60 tokens take ~2.4 s, past the 1 s first-byte and response limits


@pytest.fixture(scope="module")
def slow_sims() -> Iterator[Sims]:
    sims = start_sims(2, SERVED_CHAT, "--itl-ms", str(ITL_MS))
    yield sims
    sims.stop()


@pytest.fixture(scope="module")
def slow_gateway(slow_sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("slow")
    gw = start_gateway(write_config(tmp / "models.yaml", slow_sims), redis_url, tmp / "gateway.log",
                       TOKENGATE_FIRST_BYTE_TIMEOUT="1", TOKENGATE_IDLE_TIMEOUT="1")
    yield gw
    gw.stop()


def test_whole_answer_is_the_stream_assembled(gateway: Gateway) -> None:
    """The same prompt streamed and not: the same text, the public model name, usage."""
    key = gateway.new_key()
    client = openai_client(gateway.v1, key)
    whole = client.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=40)
    reply = whole.parse()
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                    max_tokens=40, stream=True)
        if chunk.choices)
    assert reply.choices[0].message.content == streamed
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.model == CHAT_MODEL and reply.object == "chat.completion"
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    event = wait_for_event(gateway.redis_url, whole.headers["x-request-id"])
    assert (event.status, event.counted_by, event.stream) == ("ok", "upstream", False)
    assert event.prompt_tokens == reply.usage.prompt_tokens
    assert event.completion_tokens == reply.usage.completion_tokens
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)


def test_whole_completions_and_several_choices(gateway: Gateway) -> None:
    client = openai_client(gateway.v1, gateway.new_key())
    reply = client.completions.create(model=CHAT_MODEL, prompt=["Once upon", "a time"], n=2,
                                      max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert all(c.text for c in reply.choices)
    assert reply.object == "text_completion" and reply.model == CHAT_MODEL
    assert reply.usage is not None and reply.usage.completion_tokens <= 4 * 12
    chat = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, n=3, max_tokens=8)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    assert chat.usage is not None and 3 <= chat.usage.completion_tokens <= 3 * 8


def _states(gateway: Gateway, sims: Sims) -> list[str]:
    """Routing's state of each simulator (other test gateways on this Redis report their own)."""
    rows = gateway.endpoints()
    return [rows[sims.url(i)]["state"] for i in (0, 1)]


def test_generation_longer_than_the_first_byte_timeout_is_answered(
        slow_gateway: Gateway, slow_sims: Sims) -> None:
    """~2.4 s of generation behind a 1 s first-byte timeout: answered and billed in full, and
    the endpoint stays in service (four in a row, then an ordinary request)."""
    key = slow_gateway.new_key()
    client = openai_client(slow_gateway.v1, key)
    for _ in range(4):
        reply = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": f"story {time.time()}"}],
            max_tokens=60)
        answer = reply.parse()
        event = wait_for_event(slow_gateway.redis_url, reply.headers["x-request-id"])
        assert answer.usage is not None
        assert (event.status, event.completion_tokens) == ("ok", answer.usage.completion_tokens)
    assert _states(slow_gateway, slow_sims) == ["up", "up"]
    assert client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=3).choices


def test_client_gone_is_aborted_upstream_and_billed_for_what_was_generated(
        slow_gateway: Gateway, slow_sims: Sims) -> None:
    account, key = slow_gateway.new_account()
    before = [slow_sims.stats(i).get("aborted", 0) for i in (0, 1)]
    client = openai_client(slow_gateway.v1, key, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=60)
    event = _only_event(slow_gateway, account)
    assert event.status == "client_gone"
    assert 5 <= event.completion_tokens < 60  # ~1 s of 40 ms tokens, not the whole answer
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)
    deadline = time.monotonic() + 5
    while sum(slow_sims.stats(i).get("aborted", 0) for i in (0, 1)) == sum(before):
        assert time.monotonic() < deadline, "the upstream request was not aborted"
        time.sleep(0.05)


def test_response_timeout_stops_and_bills_what_was_generated(
        slow_sims: Sims, redis_url: str, tmp_path: Path) -> None:
    gw = start_gateway(write_config(tmp_path / "models.yaml", slow_sims), redis_url,
                       tmp_path / "gateway.log", TOKENGATE_RESPONSE_TIMEOUT="1")
    try:
        account, key = gw.new_account()
        with pytest.raises(openai.InternalServerError) as caught:
            openai_client(gw.v1, key).chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES, max_tokens=60)
        assert caught.value.status_code == 504
        event = _only_event(gw, account)
        assert event.status == "upstream_error" and 5 <= event.completion_tokens < 60
        assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)
        assert _states(gw, slow_sims) == ["up", "up"]
    finally:
        gw.stop()


def test_answer_broken_mid_way_is_retried_and_both_attempts_billed(
        gateway: Gateway, sims: Sims) -> None:
    """An endpoint that drops a whole answer after 5 tokens: the client still gets its answer
    from the other endpoint, and the record carries what both generated."""
    key = gateway.new_key()
    sims.set_fault(0, mode="reset_after", after_tokens=5, count=1)
    client = openai_client(gateway.v1, key)
    broken = None
    for attempt in range(20):
        reply = client.chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=[{"role": "user", "content": f"retry {attempt}"}], max_tokens=30)
        answer = reply.parse()
        assert answer.choices[0].message.content
        event = wait_for_event(gateway.redis_url, reply.headers["x-request-id"])
        assert answer.usage is not None
        if event.counted_by == "gateway":
            broken = (event, answer.usage)
            break
        assert event.completion_tokens == answer.usage.completion_tokens
    assert broken is not None, "the faulty endpoint was never picked"
    event, usage = broken
    assert event.status == "ok" and event.endpoint == sims.url(1)
    assert event.completion_tokens == usage.completion_tokens + 5
    assert event.prompt_tokens == 2 * usage.prompt_tokens
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, 1000, 2000)


def _only_event(gateway: Gateway, account_id: str, timeout: float = 10.0) -> UsageEvent:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = usage_events(gateway.redis_url, account_id=account_id)
        if events:
            assert len(events) == 1, events
            return events[0]
        time.sleep(0.05)
    raise AssertionError(f"no usage event for account {account_id}")

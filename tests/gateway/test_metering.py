"""Metering through the real gateway: no request served for free, none billed for more
than it got. Two gateway processes share one Redis; simulators are the upstreams."""

from __future__ import annotations

import multiprocessing
import socket
import time

import httpx
import openai
import orjson
import pytest

from tests.gateway.conftest import (
    CHAT_MODEL,
    FLAT_MODEL,
    Gateway,
    Sims,
    openai_client,
    usage_events,
    wait_for_event,
)

MESSAGES = [{"role": "user", "content": "Count slowly to one hundred."}]


def client(base: str, key: str) -> openai.OpenAI:
    return openai_client(base, key)


def _stream_many(args: tuple[str, str, int]) -> tuple[int, int, list[str]]:
    """Run ``count`` concurrent streams from one process: (served, refused with 402, other)."""
    import asyncio

    base, key, count = args

    async def one(c: openai.AsyncOpenAI) -> str:
        try:
            stream = await c.chat.completions.create(
                model=FLAT_MODEL, messages=MESSAGES, max_tokens=8, stream=True)
            text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
            return "ok" if text else "empty"
        except openai.APIStatusError as exc:
            return str(exc.status_code)

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=60) as c:
            return list(await asyncio.gather(*(one(c) for _ in range(count))))

    results = asyncio.run(run())
    return results.count("ok"), results.count("402"), [r for r in results if r not in ("ok", "402")]


def test_race_serves_exactly_what_is_paid_for(gateway: Gateway, gateway2: Gateway) -> None:
    """An account funded for exactly N requests, 10xN concurrent streams from 4 processes
    through two gateways: exactly N served, the rest refused with 402, nothing overdrawn."""
    n = 6
    account, key = gateway.new_account(credits=8 * n)
    jobs = [(gw.v1, key, 15) for gw in (gateway, gateway2, gateway, gateway2)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_stream_many, jobs)
    served = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    others = [o for r in results for o in r[2]]
    assert (served, refused, others) == (n, 10 * n - n, [])
    balance = gateway.balance(account)
    assert balance["spent"] == 8 * n == balance["purchased"]
    assert balance["reserved"] == 0 and balance["available"] == 0
    events = usage_events(gateway.redis_url, account_id=account)
    assert len(events) == n
    assert sum(e.charge for e in events) == balance["spent"]
    assert all(e.status == "ok" and e.counted_by == "upstream" for e in events)


def test_usage_chunk_matches_upstream_and_the_bill(gateway: Gateway) -> None:
    _, key = gateway.new_account()
    stream = client(gateway.v1, key).chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=12, stream=True,
        stream_options={"include_usage": True})
    request_id = stream.headers["x-request-id"]
    chunks = list(stream.parse())
    usage = chunks[-1].usage
    assert usage is not None and sum(c.usage is not None for c in chunks) == 1
    event = wait_for_event(gateway.redis_url, request_id)
    assert (event.prompt_tokens, event.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
    assert event.counted_by == "upstream" and event.status == "ok" and event.stream
    assert event.charge == usage.prompt_tokens * 1 + usage.completion_tokens * 2
    assert event.model == CHAT_MODEL and event.cluster in ("east", "west")


def test_disconnect_is_billed_for_what_the_upstream_produced(gateway: Gateway, sims: Sims) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="drip", drip_ms=60)
    aborted_before = sum(sims.stats(i)["aborted"] for i in (0, 1))
    _, key = gateway.new_account()
    with httpx.stream("POST", gateway.v1 + "/chat/completions", timeout=20,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 200,
                            "stream": True}) as response:
        request_id = response.headers["x-request-id"]
        content_chunks = 0
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                content_chunks += 1
            if content_chunks == 5:
                break
    event = wait_for_event(gateway.redis_url, request_id)
    assert event.status == "client_gone" and event.counted_by == "gateway"
    assert 5 <= event.completion_tokens <= 8, event
    assert event.charge < 200 * 2
    deadline = time.monotonic() + 5
    while sum(sims.stats(i)["aborted"] for i in (0, 1)) == aborted_before:
        assert time.monotonic() < deadline, "the upstream request was not aborted"
        time.sleep(0.05)


def test_upstream_reset_is_billed_what_was_delivered(gateway: Gateway, sims: Sims) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="reset_after", after_tokens=7)
    _, key = gateway.new_account()
    response = httpx.post(gateway.v1 + "/chat/completions", timeout=20,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 50,
                                "stream": True})
    assert response.text.rstrip().endswith("data: [DONE]")
    event = wait_for_event(gateway.redis_url, response.headers["x-request-id"])
    assert event.status == "partial" and event.counted_by == "gateway"
    assert 6 <= event.completion_tokens <= 8
    assert event.prompt_tokens > 0


def test_error_before_first_byte_releases_the_reservation(gateway: Gateway, sims: Sims) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="error_before", status=503)
    account, key = gateway.new_account(credits=1000)
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=5)
    event = wait_for_event(gateway.redis_url, caught.value.response.headers["x-request-id"])
    assert (event.status, event.charge) == ("upstream_error", 0)
    assert gateway.balance(account) == {"purchased": 1000, "reserved": 0, "spent": 0, "expired": 0,
                                        "available": 1000}


def test_rpm_holds_across_two_gateways(gateway: Gateway, gateway2: Gateway) -> None:
    _, key = gateway.new_account(rpm=4)
    for gw in (gateway, gateway2, gateway, gateway2):
        client(gw.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway2.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                         max_tokens=2)
    headers = caught.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert int(headers["retry-after"]) >= 1
    assert headers["x-request-id"]


def test_tpm_holds_across_two_gateways(gateway: Gateway, gateway2: Gateway) -> None:
    _, key = gateway.new_account(tpm=400)
    with pytest.raises(openai.RateLimitError) as caught:
        for i in range(10):
            gw = (gateway, gateway2)[i % 2]
            client(gw.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                       max_tokens=100)
    assert i >= 1
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "400"
    assert "tokens" in caught.value.message


def test_concurrency_cap_across_two_gateways(gateway: Gateway, gateway2: Gateway, sims: Sims) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="drip", drip_ms=100)
    _, key = gateway.new_account(max_concurrency=2)
    body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 20, "stream": True}
    held = [hold_stream(gw, key, body) for gw in (gateway, gateway2)]
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                        max_tokens=2)
    assert "concurrent" in caught.value.message
    for sock in held:
        sock.close()
    sims.clear_faults()
    deadline = time.monotonic() + 5
    while True:
        try:
            client(gateway.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                            max_tokens=2)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def hold_stream(gateway: Gateway, key: str, body: dict[str, object]) -> socket.socket:
    """Open a stream and keep it open (headers read: it was admitted) until closed."""
    payload = orjson.dumps(body)
    host, port = gateway.base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                 + payload)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    return sock


def test_revoked_key_stops_at_once_on_every_gateway(gateway: Gateway, gateway2: Gateway) -> None:
    _, key = gateway.new_account()
    for gw in (gateway, gateway2):  # warm both auth caches
        client(gw.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=1)
    with gateway.admin() as admin:
        me = httpx.get(gateway.v1 + "/me", headers={"Authorization": f"Bearer {key}"}).json()
        assert admin.delete(f"/admin/keys/{me['key']['id']}").status_code == 204
    for gw in (gateway, gateway2):
        with pytest.raises(openai.AuthenticationError):
            client(gw.v1, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                       max_tokens=1)


def test_clamps_max_tokens_to_what_the_balance_pays(gateway: Gateway) -> None:
    account, key = gateway.new_account(credits=5)
    reply = client(gateway.v1, key).chat.completions.create(model=FLAT_MODEL, messages=MESSAGES,
                                                             max_tokens=50)
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"
    assert gateway.balance(account)["spent"] == 5
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway.v1, key).chat.completions.create(model=FLAT_MODEL, messages=MESSAGES)
    assert caught.value.status_code == 402


@pytest.mark.parametrize("stream", [False, True])
def test_several_choices_share_what_the_balance_pays(gateway: Gateway, stream: bool) -> None:
    """n choices get the same max_tokens each, together no more than the balance pays; a
    balance that cannot pay one token per choice is refused (402), never served cheaply."""
    account, key = gateway.new_account(credits=10)
    c = client(gateway.v1, key)
    if stream:
        chunks = list(c.chat.completions.create(model=FLAT_MODEL, messages=MESSAGES, max_tokens=50, n=3,
                                                stream=True, stream_options={"include_usage": True}))
        usage = chunks[-1].usage
    else:
        usage = c.chat.completions.create(model=FLAT_MODEL, messages=MESSAGES, max_tokens=50, n=3).usage
    assert usage is not None and usage.completion_tokens == 9  # 3 each: 10 credits, rounded down
    assert gateway.balance(account)["spent"] == 9
    with pytest.raises(openai.APIStatusError) as caught:  # 1 credit left, 2 choices
        c.chat.completions.create(model=FLAT_MODEL, messages=MESSAGES, max_tokens=1, n=2)
    assert caught.value.status_code == 402 and "per choice" in caught.value.message
    assert gateway.balance(account)["spent"] == 9


def test_streams_read_to_done_settle_ok_with_upstream_usage(gateway: Gateway) -> None:
    """The client closes as soon as it reads [DONE]; that is a complete stream, not a
    disconnect: settled ok with the upstream's own usage."""
    _, key = gateway.new_account()
    c = client(gateway.v1, key)
    ids = []
    for _ in range(20):
        raw = c.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=MESSAGES,
                                                          max_tokens=4, stream=True)
        list(raw.parse())
        ids.append(raw.headers["x-request-id"])
    events = [wait_for_event(gateway.redis_url, request_id) for request_id in ids]
    assert {(e.status, e.counted_by) for e in events} == {("ok", "upstream")}

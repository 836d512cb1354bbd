"""Upstream faults become clear errors: 502 before the first byte, an SSE error event
mid-stream, 504 when the upstream hangs past the first-byte timeout."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.gateway.conftest import CHAT_MODEL, Gateway, Sims, openai_client

MESSAGES = [{"role": "user", "content": "Write a long story."}]


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai_client(gateway.v1, key, timeout=20)


def test_error_before_first_byte_fails_over_then_502(gateway: Gateway, sims: Sims, api_key: str) -> None:
    sims.set_fault(0, mode="error_before", status=500)
    reply = client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                              max_tokens=5)
    assert reply.choices[0].message.content  # served by the other cluster
    sims.set_fault(1, mode="error_before", status=500)
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                         max_tokens=5)
    assert caught.value.status_code == 502
    assert "upstream" in caught.value.message and "500" in caught.value.message


def test_an_upstream_refusing_the_gateways_credentials_is_a_502(
    gateway: Gateway, sims: Sims, api_key: str
) -> None:
    """A 401 from vLLM means the gateway's key for it is wrong: the operator's fault. Another
    endpoint answers; with none left the client gets 502, never a 401 that blames its key."""
    sims.set_fault(0, mode="error_before", status=401, message="Unauthorized")
    reply = client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                              max_tokens=5)
    assert reply.choices[0].message.content  # served by the other cluster
    sims.set_fault(1, mode="error_before", status=401, message="Unauthorized")
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                         max_tokens=5)
    assert caught.value.status_code == 502
    assert "401" in caught.value.message and "Unauthorized" not in caught.value.message


def test_reset_mid_stream_ends_with_error_event(gateway: Gateway, sims: Sims, api_key: str) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="reset_after", after_tokens=5)
    response = httpx.post(gateway.v1 + "/chat/completions", timeout=20,
                          headers={"Authorization": f"Bearer {api_key}"},
                          json={"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 50,
                                "stream": True})
    events = [e for e in response.text.split("\n\n") if e]
    assert response.status_code == 200
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2]
    assert sum('"content"' in e for e in events) >= 5
    with pytest.raises(openai.APIError):
        for _ in client(gateway, api_key).chat.completions.create(
            model=CHAT_MODEL, messages=MESSAGES, max_tokens=50, stream=True
        ):
            pass


def test_hang_gives_504_after_first_byte_timeout(gateway: Gateway, sims: Sims, api_key: str) -> None:
    for i in (0, 1):
        sims.set_fault(i, mode="hang")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                         max_tokens=5)
    assert caught.value.status_code == 504
    assert 2.5 < time.monotonic() - started < 10

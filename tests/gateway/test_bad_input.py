"""Bad input never yields a 500 and never stops the gateway: each gets a clear 4xx."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import CHAT_MODEL, EMBED_MODEL, Gateway, openai_client

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "chat-model", "messages": "hello"}', 400, "messages"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": -3}',
         400, "max_tokens"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
         400, "max_tokens"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], '
         b'"max_tokens": 999999}', 400, "max_tokens"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
         400, "stream"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, None),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "n": 0}', 400, "n"),
    ],
)
def test_bad_bodies_get_clear_4xx(gateway: Gateway, api_key: str, body: bytes, status: int,
                                  param: str | None) -> None:
    response = httpx.post(gateway.base + CHAT, content=body, timeout=10,
                          headers={"Authorization": f"Bearer {api_key}",
                                   "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    assert error["param"] == param
    assert response.headers["x-request-id"]


def test_body_over_limit_is_413(gateway: Gateway, api_key: str) -> None:
    big = b'{"model": "chat-model", "messages": [{"role": "user", "content": "' + b"a" * 70_000 + b'"}]}'
    response = httpx.post(gateway.base + CHAT, content=big, timeout=10,
                          headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 413
    assert "limit" in response.json()["error"]["message"]


def test_unknown_route_and_method(gateway: Gateway, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    assert httpx.post(gateway.base + "/v1/nope", headers=headers).status_code == 404
    wrong = httpx.get(gateway.base + CHAT, headers=headers)
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["code"] == "method_not_allowed"
    assert httpx.put(gateway.base + "/v1/models", headers=headers).status_code == 405


def test_unknown_routes_add_no_metric_series(gateway: Gateway, api_key: str) -> None:
    """Anyone can send any path: it must not grow the metrics without bound."""
    for i in range(3):
        httpx.post(f"{gateway.base}/v1/random-{i}/x")
    text = httpx.get(gateway.base + "/metrics").text
    assert "random-" not in text and 'route="unknown"' in text


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": CHAT_MODEL, "prompt": []}, "prompt"),
        ("/v1/completions", {"model": CHAT_MODEL, "prompt": "x", "best_of": 3}, "best_of"),  # n is 1
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": "hello " * 9000}, "input"),  # window 8192
        ("/v1/embeddings", {"model": EMBED_MODEL, "input": ["short", "hello " * 9000]}, "input"),
    ],
)
def test_prompts_that_cannot_be_served(gateway: Gateway, api_key: str, path: str, body: dict[str, object],
                                       param: str) -> None:
    response = httpx.post(gateway.base + path, json=body, timeout=10,
                          headers={"Authorization": f"Bearer {api_key}"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_gateway_still_serves_after_bad_input(gateway: Gateway, api_key: str) -> None:
    for body in (b"\x00\x01", b"{", b'{"model": null}'):
        httpx.post(gateway.base + CHAT, content=body, headers={"Authorization": f"Bearer {api_key}"})
    ok = httpx.post(gateway.base + CHAT, timeout=10, headers={"Authorization": f"Bearer {api_key}"},
                    json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}],
                          "max_tokens": 3})
    assert ok.status_code == 200
    assert gateway.process.poll() is None


def test_unknowable_prompts_are_refused_in_openais_shape(gateway: Gateway, api_key: str) -> None:
    """A request's own chat template and an image for a model that prices no images: the
    reservation could not bound their prompt, so the official client gets a 400."""
    client = openai_client(gateway.v1, api_key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=3, extra_body={"chat_template": "{{ messages }}"})
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, "chat_template", "unsupported_parameter")
    assert error.response.json()["error"]["type"] == "invalid_request_error"
    assert error.response.headers["x-request-id"]

    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=CHAT_MODEL, max_tokens=3, messages=[
            {"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}])
    error = caught.value
    assert (error.status_code, error.param, error.code) == (400, "messages", "unsupported_content")
    assert "image_url" in error.message and CHAT_MODEL in error.message
    body = error.response.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}


def test_serve_warns_about_stand_in_tokenizers(gateway: Gateway) -> None:
    """Every model of the test catalog estimates with tiktoken: each is named at start."""
    log = gateway.log.read_text()
    for model in (CHAT_MODEL, EMBED_MODEL):
        assert f"model '{model}' estimates prompts with a stand-in tokenizer (tiktoken:cl100k_base)" in log
    assert "byte bound" in log

"""The official openai client, sync and async, through the gateway in front of simulators."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import CHAT_MODEL, EMBED_MODEL, FLAT_MODEL, Gateway, openai_client

MESSAGES = [{"role": "user", "content": "Tell me about the Yangtze river."}]


def client(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai_client(gateway.v1, key, timeout=20)


def test_list_models(gateway: Gateway, api_key: str) -> None:
    ids = {m.id for m in client(gateway, api_key).models.list().data}
    assert ids == {CHAT_MODEL, EMBED_MODEL, FLAT_MODEL}


def test_chat_non_streamed_maps_model_name_back(gateway: Gateway, api_key: str) -> None:
    reply = client(gateway, api_key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES,
                                                              max_tokens=20)
    assert reply.model == CHAT_MODEL
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.completion_tokens == 20
    assert reply.choices[0].finish_reason == "length"


def test_streamed_text_equals_non_streamed(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    whole = c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=40)
    chunks = list(c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=40,
                                            stream=True))
    assert all(chunk.model == CHAT_MODEL for chunk in chunks)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == whole.choices[0].message.content


def test_stream_usage_hidden_unless_asked(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    plain = list(c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=10,
                                           stream=True))
    assert all(chunk.usage is None for chunk in plain)
    asked = list(c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=10,
                                           stream=True, stream_options={"include_usage": True}))
    with_usage = [chunk for chunk in asked if chunk.usage is not None]
    assert len(with_usage) == 1 and with_usage[0] is asked[-1]
    assert with_usage[0].choices == []
    assert with_usage[0].usage is not None and with_usage[0].usage.completion_tokens == 10


def test_completions_streamed_and_not(gateway: Gateway, api_key: str) -> None:
    c = client(gateway, api_key)
    whole = c.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=12)
    assert whole.model == CHAT_MODEL and whole.usage is not None
    chunks = list(c.completions.create(model=CHAT_MODEL, prompt="Once upon a time", max_tokens=12,
                                       stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole.choices[0].text


def test_completions_stop_at_16_tokens_without_max_tokens(gateway: Gateway, api_key: str) -> None:
    """OpenAI's and vLLM's default for the legacy completions API; chat has none."""
    c = client(gateway, api_key)
    whole = c.completions.create(model=CHAT_MODEL, prompt="Tell me a long story about the sea.")
    assert whole.usage is not None and whole.usage.completion_tokens == 16
    assert whole.choices[0].finish_reason == "length"
    chat = c.chat.completions.create(model=CHAT_MODEL, messages=[
        {"role": "user", "content": "Tell me a long story about the sea."}])
    assert chat.usage is not None and chat.usage.completion_tokens > 16


def test_embeddings(gateway: Gateway, api_key: str) -> None:
    result = client(gateway, api_key).embeddings.create(model=EMBED_MODEL, input=["a", "b c"])
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    assert result.usage.prompt_tokens > 0


def test_large_embeddings_answer_is_relayed_whole(gateway: Gateway, api_key: str) -> None:
    """An answer past the relay's buffering high-water mark (256 KiB) arrives whole, at once."""
    inputs = [f"text {i}" for i in range(400)]  # about 1 KiB of JSON floats per vector
    result = client(gateway, api_key).with_options(timeout=10).embeddings.create(
        model=EMBED_MODEL, input=inputs, encoding_format="float")
    assert [item.index for item in result.data] == list(range(400))
    assert result.usage.prompt_tokens > 400


def test_request_id_is_the_gateways_and_the_clients_is_echoed(gateway: Gateway, api_key: str) -> None:
    """x-request-id is always the gateway's own (the id of the usage record): a client's id
    could be reused to ride on another request's reservation. The client's id comes back
    as x-client-request-id, as OpenAI does."""
    c = client(gateway, api_key)
    raw = c.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=5, extra_headers={"x-request-id": "abc-123"})
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-client-request-id"] == "abc-123"
    again = c.chat.completions.with_raw_response.create(
        model=CHAT_MODEL, messages=MESSAGES, max_tokens=5, extra_headers={"x-client-request-id": "abc-123"})
    assert again.headers["x-client-request-id"] == "abc-123"
    assert again.headers["x-request-id"] not in ("abc-123", raw.headers["x-request-id"])
    raw = c.models.with_raw_response.list()
    assert raw.headers["x-request-id"].startswith("req_") and "x-client-request-id" not in raw.headers
    me = httpx.get(gateway.v1 + "/me", headers={"Authorization": f"Bearer {api_key}", "x-request-id": "me-1"})
    assert me.headers["x-request-id"].startswith("req_") and me.headers["x-client-request-id"] == "me-1"
    assert httpx.get(gateway.base + "/healthz").headers["x-request-id"]


async def test_async_client_chat_and_stream(gateway: Gateway, api_key: str) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.v1, api_key=api_key, max_retries=0) as c:
        whole = await c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16)
        stream = await c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16,
                                                 stream=True)
        pieces = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        assert "".join(pieces) == whole.choices[0].message.content
        emb = await c.embeddings.create(model=EMBED_MODEL, input="hello")
        assert emb.data[0].embedding


@pytest.mark.parametrize(
    ("make_call", "exc"),
    [
        (lambda c: c.chat.completions.create(model="nope", messages=MESSAGES), openai.NotFoundError),
        (lambda c: c.chat.completions.create(model=CHAT_MODEL, messages=[]), openai.BadRequestError),
        (lambda c: c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=-1),
         openai.BadRequestError),
        (lambda c: c.embeddings.create(model=CHAT_MODEL, input="x"), openai.BadRequestError),
    ],
)
def test_error_classes(gateway: Gateway, api_key: str, make_call: object, exc: type) -> None:
    with pytest.raises(exc):
        make_call(client(gateway, api_key))  # type: ignore[operator]


def test_invalid_key_is_authentication_error(gateway: Gateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, "tg-not-a-key").models.list()


def test_model_not_allowed_is_permission_denied(gateway: Gateway) -> None:
    key = gateway.new_key(models=[EMBED_MODEL])
    with pytest.raises(openai.PermissionDeniedError):
        client(gateway, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)


def test_unfunded_account_gets_402(gateway: Gateway) -> None:
    key = gateway.new_key(credits=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client(gateway, key).chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
    assert caught.value.status_code == 402
    assert "balance" in caught.value.message

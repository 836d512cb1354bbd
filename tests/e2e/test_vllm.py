"""The official openai client through the gateway in front of two real vLLM servers.

Every billed figure is checked against vLLM's own: the usage it returns for the same
request sent to it directly, and its ``vllm:*_tokens_total`` counters. What is billed is
read from the usage events in the Redis streams, which is what the billing ledger consumes.
"""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tokenizers import Tokenizer as HFTokenizer

from gateway.prompt_rules import byte_bound
from gateway.tokenizers import load_tokenizer
from tests.e2e.conftest import (
    CONTEXT,
    HF_MODEL,
    PRICES,
    SERVED,
    TIKTOKEN_MODEL,
    Gateway,
    Ledger,
    UsageStreams,
    VLLMServer,
    gateway_id,
    remember,
)
from tests.e2e.helpers import (
    IGNORE_EOS,
    assert_billed,
    charge,
    chunks,
    headers,
    post_sse,
    rid,
    server_of,
    sse_events,
    stable_counters,
    wait_idle,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MESSAGES = [{"role": "user", "content": "Tell me about the Yangtze river at Wuhan."}]
LONG = CONTEXT - 100  # a stream that lasts many seconds
PROMPT = "Once upon a time, in the city of Wuhan, there lived a little gateway that"


def test_models_listed(gateway: Gateway, key: str) -> None:
    ids = {m.id for m in gateway.openai(key).models.list().data}
    assert ids == {HF_MODEL, TIKTOKEN_MODEL}


# --- usage equals vLLM's own numbers ------------------------------------------------------


def test_chat_non_streamed(gateway: Gateway, vllm_servers: list[VLLMServer], usage: UsageStreams,
                           key: str) -> None:
    request_id = rid("chat")
    reply = gateway.openai(key).chat.completions.create(
        model=HF_MODEL, messages=MESSAGES, max_tokens=24, extra_body=IGNORE_EOS,
        extra_headers=headers(request_id))
    direct = vllm_servers[0].client().chat.completions.create(
        model=SERVED, messages=MESSAGES, max_tokens=24, extra_body=IGNORE_EOS)
    assert reply.model == HF_MODEL and direct.model == SERVED
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and direct.usage is not None
    assert reply.usage.prompt_tokens == direct.usage.prompt_tokens
    assert reply.usage.completion_tokens == direct.usage.completion_tokens == 24
    assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=direct.usage.prompt_tokens,
                  completion_tokens=24, stream=False, servers=vllm_servers)


def test_chat_streamed_with_usage(gateway: Gateway, vllm_servers: list[VLLMServer],
                                  usage: UsageStreams, key: str) -> None:
    request_id = rid("chat-stream")
    stream = gateway.openai(key).chat.completions.create(
        model=HF_MODEL, messages=MESSAGES, max_tokens=24, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
        extra_headers=headers(request_id))
    got = list(stream)
    direct = list(vllm_servers[1].client().chat.completions.create(
        model=SERVED, messages=MESSAGES, max_tokens=24, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS))
    assert all(chunk.model == HF_MODEL for chunk in got)
    # The client asked for the final usage only: vLLM's continuous usage (which the gateway
    # forces upstream) is hidden, and the last chunk is the usage chunk, as vLLM sends it.
    with_usage = [chunk for chunk in got if chunk.usage is not None]
    assert with_usage == [got[-1]] and got[-1].choices == []
    assert direct[-1].usage is not None and got[-1].usage is not None
    assert got[-1].usage.prompt_tokens == direct[-1].usage.prompt_tokens
    assert got[-1].usage.completion_tokens == direct[-1].usage.completion_tokens == 24
    # Same text (greedy), not always the same chunks: a chunk may carry several tokens (vLLM
    # merges the outputs its API server has not sent yet, more so on a busy machine), so
    # neither the gateway nor a test may count chunks as tokens.
    text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
    assert text == "".join(c.choices[0].delta.content or "" for c in direct if c.choices)
    assert len(got) <= 1 + 24 + 1  # the role chunk, at most one per token, the usage chunk
    assert [c.choices[0].finish_reason for c in got if c.choices][-1] == "length"
    assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=direct[-1].usage.prompt_tokens,
                  completion_tokens=24, stream=True, servers=vllm_servers)


def test_chat_streamed_with_continuous_usage(gateway: Gateway, vllm_servers: list[VLLMServer],
                                             usage: UsageStreams, key: str) -> None:
    """A client that asks for continuous usage gets vLLM's running count on every chunk."""
    request_id = rid("chat-continuous")
    got = list(gateway.openai(key).chat.completions.create(
        model=HF_MODEL, messages=MESSAGES, max_tokens=16, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body=IGNORE_EOS, extra_headers=headers(request_id)))
    assert all(chunk.usage is not None for chunk in got)
    running = [chunk.usage.completion_tokens for chunk in got if chunk.usage is not None]
    assert running == sorted(running) and running[0] == 0 and running[-1] == 16
    final = got[-1].usage
    assert final is not None and got[-1].choices == []
    assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=final.prompt_tokens,
                  completion_tokens=16, stream=True, servers=vllm_servers)


def test_stream_without_usage_is_billed_and_hides_it(gateway: Gateway, vllm_servers: list[VLLMServer],
                                                     usage: UsageStreams, key: str) -> None:
    """No stream_options: not one usage field reaches the client; billing still exact."""
    for path, body in (
        ("/chat/completions", {"messages": MESSAGES}),
        ("/completions", {"prompt": PROMPT}),
    ):
        request_id = rid("hidden")
        payloads = post_sse(gateway, key, path, {"model": HF_MODEL, "max_tokens": 20, "stream": True,
                                                 "ignore_eos": True, **body}, request_id)
        got = chunks(payloads)
        # Parsed, not grepped: "usage" is a word of the tiny model's vocabulary, and it says it.
        assert not [c for c in got if "usage" in c], payloads
        assert all(c["model"] == HF_MODEL and c["choices"] for c in got)
        direct = vllm_servers[0].client().completions.create(
            model=SERVED, prompt=PROMPT, max_tokens=20, extra_body=IGNORE_EOS
        ) if path == "/completions" else vllm_servers[0].client().chat.completions.create(
            model=SERVED, messages=MESSAGES, max_tokens=20, extra_body=IGNORE_EOS)
        assert direct.usage is not None
        assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=direct.usage.prompt_tokens,
                      completion_tokens=20, stream=True, servers=vllm_servers)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_completions(gateway: Gateway, vllm_servers: list[VLLMServer], usage: UsageStreams, key: str,
                     stream: bool) -> None:
    request_id = rid("cmpl")
    client = gateway.openai(key)
    direct = vllm_servers[1].client().completions.create(
        model=SERVED, prompt=PROMPT, max_tokens=12, extra_body=IGNORE_EOS)
    assert direct.usage is not None
    if stream:
        got = list(client.completions.create(
            model=TIKTOKEN_MODEL, prompt=PROMPT, max_tokens=12, stream=True,
            stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
            extra_headers=headers(request_id)))
        assert all(c.model == TIKTOKEN_MODEL for c in got)
        reported = got[-1].usage
        assert got[-1].choices == [] and all(c.usage is None for c in got[:-1])
    else:
        whole = client.completions.create(model=TIKTOKEN_MODEL, prompt=PROMPT, max_tokens=12,
                                          extra_body=IGNORE_EOS, extra_headers=headers(request_id))
        assert whole.model == TIKTOKEN_MODEL and whole.choices[0].finish_reason == "length"
        reported = whole.usage
    assert reported is not None
    assert (reported.prompt_tokens, reported.completion_tokens) == (direct.usage.prompt_tokens, 12)
    assert_billed(usage.one(request_id), model=TIKTOKEN_MODEL, prompt_tokens=direct.usage.prompt_tokens,
                  completion_tokens=12, stream=stream, servers=vllm_servers)


def test_several_choices_and_prompts(gateway: Gateway, vllm_servers: list[VLLMServer],
                                     usage: UsageStreams, key: str) -> None:
    """n=2 streamed, and two prompts in one completions request: vLLM's totals are billed."""
    request_id = rid("n2")
    got = list(gateway.openai(key).chat.completions.create(
        model=HF_MODEL, messages=MESSAGES, max_tokens=10, n=2, stream=True,
        stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
        extra_headers=headers(request_id)))
    final = got[-1].usage
    assert final is not None and final.completion_tokens == 20
    assert {c.choices[0].index for c in got if c.choices} == {0, 1}
    assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=final.prompt_tokens,
                  completion_tokens=20, stream=True, servers=vllm_servers)

    request_id = rid("two-prompts")
    whole = gateway.openai(key).completions.create(
        model=HF_MODEL, prompt=[PROMPT, "Hello there"], max_tokens=7, extra_body=IGNORE_EOS,
        extra_headers=headers(request_id))
    assert whole.usage is not None and whole.usage.completion_tokens == 14
    assert_billed(usage.one(request_id), model=HF_MODEL, prompt_tokens=whole.usage.prompt_tokens,
                  completion_tokens=14, stream=False, servers=vllm_servers)


def test_cached_prompt_tokens(gateway: Gateway, vllm_servers: list[VLLMServer], usage: UsageStreams,
                              key: str) -> None:
    """vLLM's prefix-cache hits (prompt_tokens_details.cached_tokens) reach the usage event."""
    prompt = f"{uuid.uuid4().hex} " + " ".join([PROMPT] * 12)
    seen = []
    for _ in range(4):  # two servers: at least two of four requests repeat on one server
        request_id = rid("cached")
        reply = gateway.openai(key).completions.create(
            model=HF_MODEL, prompt=prompt, max_tokens=2, extra_body=IGNORE_EOS,
            extra_headers=headers(request_id))
        assert reply.usage is not None
        details = reply.usage.prompt_tokens_details
        cached = (details.cached_tokens or 0) if details else 0
        event = usage.one(request_id)
        assert event.cached_tokens == cached
        assert event.prompt_tokens == reply.usage.prompt_tokens
        seen.append(cached)
    assert sum(1 for c in seen if c > 0) >= 2, seen


# --- the estimating tokenizer: hf:<model dir> and tiktoken --------------------------------


@pytest.mark.parametrize("model", [HF_MODEL, TIKTOKEN_MODEL])
def test_estimate_uses_the_configured_tokenizer(gateway: Gateway, vllm_servers: list[VLLMServer],
                                                usage: UsageStreams, tiny_model: Path,
                                                model: str) -> None:
    """The reservation, and so the max_tokens a small balance affords, follows the estimate.

    With ``B`` credits and no room for the asked max_tokens, admission grants
    ``(B - estimate * input) // output`` tokens, and ``ignore_eos`` makes vLLM generate exactly
    that many: the completion count reveals which tokenizer estimated the prompt.
    """
    prompt = "长江 flows past 武汉 and 宜昌 — 12345 naïve cafés! " * 6
    hf = HFTokenizer.from_file(str(tiny_model / "tokenizer.json"))
    counts = {  # the model's own tokenizer counts; a stand-in (tiktoken) reserves the byte bound
        HF_MODEL: len(hf.encode(prompt, add_special_tokens=False).ids),
        TIKTOKEN_MODEL: byte_bound(prompt),
    }
    assert len(load_tokenizer("tiktoken:cl100k_base").encode(prompt)) < byte_bound(prompt)
    assert counts[HF_MODEL] != counts[TIKTOKEN_MODEL]
    estimate = counts[model] + 32  # a completions prompt: content + PER_REQUEST_OVERHEAD
    price_in, price_out = PRICES[model]
    balance = 600
    expected = (balance - estimate * price_in) // price_out
    assert 0 < expected < 500

    key, _account = gateway.buy_key(credits=balance)
    request_id = rid("estimate")
    reply = gateway.openai(key).completions.create(
        model=model, prompt=prompt, max_tokens=500, extra_body=IGNORE_EOS,
        extra_headers=headers(request_id))
    assert reply.usage is not None
    assert reply.usage.completion_tokens == expected
    # vLLM counts the prompt with the same tokenizer.json (plus the BOS it adds).
    assert reply.usage.prompt_tokens == len(hf.encode(prompt).ids) == counts[HF_MODEL] + 1
    event = usage.one(request_id)
    assert_billed(event, model=model, prompt_tokens=reply.usage.prompt_tokens,
                  completion_tokens=expected, stream=False, servers=vllm_servers)
    balance_now: dict[str, int] = gateway.me(key)["balance"]  # type: ignore[assignment]
    assert balance_now["reserved"] == 0 and balance_now["spent"] == event.charge <= balance


# --- a client that disconnects mid-stream -------------------------------------------------


def test_disconnect_mid_stream_is_billed_for_what_vllm_generated(
    gateway: Gateway, vllm_servers: list[VLLMServer], usage: UsageStreams, ledger: Ledger
) -> None:
    key, _account = gateway.buy_key()
    wait_idle(vllm_servers)
    before = {s.url: stable_counters(s) for s in vllm_servers}
    request_id = rid("disconnect")
    body = {"model": HF_MODEL, "messages": MESSAGES, "max_tokens": LONG, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    seen: list[dict[str, Any]] = []
    with httpx.Client(timeout=60) as http, http.stream(
        "POST", gateway.v1 + "/chat/completions", json=body,
        headers={"Authorization": f"Bearer {key}", **headers(request_id)},
    ) as response:
        remember(response)
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen.append(json.loads(line[6:]))
                if len(seen) == 10:
                    break  # leaving both blocks closes the connection: the client is gone
    received = seen[-1]["usage"]["completion_tokens"]
    assert received >= 9

    event = usage.one(request_id)
    assert (event.status, event.counted_by) == ("client_gone", "gateway"), event
    server = server_of(event, vllm_servers)
    wait_idle(vllm_servers, timeout=180)
    after = stable_counters(server)
    generated = after["vllm:generation_tokens_total"] - before[server.url]["vllm:generation_tokens_total"]
    prompt = after["vllm:prompt_tokens_total"] - before[server.url]["vllm:prompt_tokens_total"]
    # vLLM stopped generating when the gateway hung up on it, short of max_tokens. (Its engine
    # runs ahead of its API server, by hundreds of tokens on a busy machine: the stream is
    # long enough, about 40 s, that it cannot finish first.)
    assert generated < LONG, (event, generated)
    # The bill is vLLM's own running count as of the last chunk the gateway relayed: at least
    # what the client read, at most what vLLM generated. The difference is what vLLM produced
    # between the gateway's last read and its abort (never seen, never billed).
    assert received <= event.completion_tokens <= generated, (received, event, generated)
    assert event.prompt_tokens == prompt == seen[-1]["usage"]["prompt_tokens"]
    assert event.charge == charge(HF_MODEL, event.prompt_tokens, event.completion_tokens)
    print(f"disconnect: client read {received}, billed {event.completion_tokens}, "
          f"vLLM generated {generated} tokens")
    balance: dict[str, int] = gateway.me(key)["balance"]  # type: ignore[assignment]
    assert balance["reserved"] == 0 and balance["spent"] == event.charge
    record = ledger.records([request_id])[request_id]
    assert (record["status"], record["completion_tokens"], record["charge"]) == (
        "client_gone", event.completion_tokens, event.charge)
    assert ledger.usage_debits([request_id]) == event.charge


# --- errors from vLLM ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_vllm_refusal_is_relayed_and_free(gateway: Gateway, vllm_servers: list[VLLMServer],
                                          usage: UsageStreams, stream: bool) -> None:
    key, _account = gateway.buy_key(credits=5000)
    request_id = rid("refused")
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai(key).chat.completions.create(
            model=HF_MODEL, messages=MESSAGES, max_tokens=5, temperature=-1, stream=stream,
            extra_headers=headers(request_id))
    error = caught.value
    assert error.status_code == 400
    assert error.response.headers["x-client-request-id"] == request_id
    assert error.response.headers["x-request-id"] == gateway_id(request_id)
    body = error.response.json()
    # vLLM says {"error": {"message", "type": "BadRequestError", "param", "code": 400}}; the
    # client gets OpenAI's type for the status and a string-or-null code, vLLM's message.
    assert set(body) == {"error"} and "temperature" in body["error"]["message"]
    assert body["error"]["param"] == "temperature"
    assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", None)
    event = usage.one(request_id)
    assert (event.status, event.charge, event.completion_tokens) == ("upstream_error", 0, 0)
    balance: dict[str, int] = gateway.me(key)["balance"]  # type: ignore[assignment]
    assert balance["reserved"] == 0 and balance["spent"] == 0


def test_prompt_longer_than_vllm_context(gateway: Gateway, usage: UsageStreams, key: str) -> None:
    """The gateway's estimate fits, vLLM's count does not: vLLM's 400, billed nothing."""
    request_id = rid("too-long")
    prompt = " ".join(["hello"] * (CONTEXT + 50))
    with pytest.raises(openai.BadRequestError) as caught:
        gateway.openai(key).completions.create(model=TIKTOKEN_MODEL, prompt=prompt,
                                               extra_headers=headers(request_id))
    assert "context length" in caught.value.response.json()["error"]["message"]
    event = usage.one(request_id)
    assert (event.status, event.charge) == ("upstream_error", 0)


# --- billed tokens equal vLLM's counters ---------------------------------------------------


def _mixed_request(gateway: Gateway, key: str, index: int) -> tuple[str, int]:
    """One of a mix of request shapes; returns its request id and its ``n``."""
    request_id = rid(f"mix{index}")
    client = gateway.openai(key)
    kind = index % 6
    extra = IGNORE_EOS if index % 4 else {}  # a quarter stop at vLLM's EOS (or max_tokens)
    opts = {"extra_body": extra, "extra_headers": headers(request_id)}
    max_tokens = 8 + (index * 7) % 57
    model = HF_MODEL if index % 2 else TIKTOKEN_MODEL
    if kind == 0:
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens, **opts)
    elif kind == 1:
        list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens,
                                            stream=True, **opts))
    elif kind == 2:
        list(client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=max_tokens,
                                            stream=True, stream_options={"include_usage": True},
                                            n=2, **opts))
    elif kind == 3:
        client.completions.create(model=model, prompt=[PROMPT, f"{index} bottles"],
                                  max_tokens=max_tokens, **opts)
    elif kind == 4:
        list(client.completions.create(model=model, prompt=PROMPT + str(index), max_tokens=max_tokens,
                                       stream=True, **opts))
    else:  # no max_tokens at all: the gateway grants what the balance allows (a small one
        # here: the context would allow 8,000 tokens, a minute of the tiny model's time)
        small, _account = gateway.buy_key(credits=400)
        gateway.openai(small).chat.completions.create(model=model, messages=MESSAGES, **opts)
    return request_id, 2 if kind == 2 else 1


def test_billed_tokens_equal_vllm_counters(gateway: Gateway, vllm_servers: list[VLLMServer],
                                           usage: UsageStreams, ledger: Ledger) -> None:
    """Per server, the usage events' tokens and the ledger's usage records equal the deltas
    of vLLM's own counters; the ledger's usage legs charge what the events charged."""
    key, _account = gateway.buy_key()
    wait_idle(vllm_servers)
    before = {s.url: stable_counters(s) for s in vllm_servers}
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:  # what 2 shared cores sustain
        sent = dict(pool.map(lambda i: _mixed_request(gateway, key, i), range(36)))
    events = usage.wait(sent)
    wait_idle(vllm_servers)
    after = {s.url: stable_counters(s) for s in vllm_servers}
    billed: dict[str, dict[str, int]] = {
        s.url: {"prompt": 0, "completion": 0, "cached": 0, "requests": 0} for s in vllm_servers
    }
    for request_id, event in events.items():
        assert (event.status, event.counted_by) == ("ok", "upstream"), event
        assert event.charge == charge(event.model, event.prompt_tokens, event.completion_tokens)
        sums = billed[server_of(event, vllm_servers).url]
        # vLLM's prompt counter counts the prompt once per choice; usage (and the bill) once.
        sums["prompt"] += event.prompt_tokens * sent[request_id]
        sums["completion"] += event.completion_tokens
        sums["cached"] += event.cached_tokens
        sums["requests"] += 1
    for server in vllm_servers:
        delta = {name: after[server.url][name] - before[server.url][name] for name in after[server.url]}
        sums = billed[server.url]
        assert sums["requests"] > 0, f"no request went to {server.cluster}"
        assert sums["completion"] == delta["vllm:generation_tokens_total"], (server.cluster, sums, delta)
        assert sums["prompt"] == delta["vllm:prompt_tokens_total"], (server.cluster, sums, delta)
        assert sums["cached"] == delta["vllm:prompt_tokens_cached_total"], (server.cluster, sums, delta)
    records = ledger.records(sent)
    in_ledger: dict[str, dict[str, int]] = {s.url: {"prompt": 0, "completion": 0} for s in vllm_servers}
    for request_id, record in records.items():
        event = events[request_id]
        assert (record["prompt_tokens"], record["completion_tokens"], record["charge"], record["status"]) == (
            event.prompt_tokens, event.completion_tokens, event.charge, event.status), (record, event)
        sums = in_ledger[server_of(event, vllm_servers).url]
        sums["prompt"] += record["prompt_tokens"] * sent[request_id]
        sums["completion"] += record["completion_tokens"]
    for server in vllm_servers:
        delta = {name: after[server.url][name] - before[server.url][name] for name in after[server.url]}
        assert in_ledger[server.url]["completion"] == delta["vllm:generation_tokens_total"], server.cluster
        assert in_ledger[server.url]["prompt"] == delta["vllm:prompt_tokens_total"], server.cluster
    assert ledger.usage_debits(sent) == sum(event.charge for event in events.values())
    total = sum(s["completion"] for s in billed.values())
    print(f"mixed batch: 36 requests, {total} completion tokens in {time.monotonic() - started:.1f}s; "
          f"per cluster: { {s.cluster: billed[s.url] for s in vllm_servers} }")


def test_complete_stream_is_settled_ok(gateway: Gateway, vllm_servers: list[VLLMServer],
                                       usage: UsageStreams, key: str) -> None:
    """A stream the client read to [DONE] is settled ``ok`` with vLLM's own final usage."""
    client = gateway.openai(key)
    ids = []
    for _ in range(30):
        request_id = rid("complete")
        ids.append(request_id)
        got = list(client.chat.completions.create(
            model=HF_MODEL, messages=MESSAGES, max_tokens=4, stream=True, extra_body=IGNORE_EOS,
            extra_headers=headers(request_id)))
        assert got[-1].choices[0].finish_reason == "length"
    statuses = [(e.status, e.counted_by) for e in usage.wait(ids).values()]
    assert statuses == [("ok", "upstream")] * len(ids), statuses


def test_raw_sse_is_vllms_own(gateway: Gateway, vllm_servers: list[VLLMServer], key: str) -> None:
    """The client sees vLLM's SSE framing and fields; only the model name is rewritten."""
    body = {"prompt": PROMPT, "max_tokens": 6, "stream": True, "ignore_eos": True, "temperature": 0,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    through = chunks(post_sse(gateway, key, "/completions", {"model": HF_MODEL, **body}, rid("raw")))
    with httpx.stream("POST", vllm_servers[0].url + "/v1/completions", json={"model": SERVED, **body},
                      timeout=60) as response:
        direct = chunks(sse_events(response.read()))
    # vLLM merges tokens into one chunk when its API server falls behind its engine, so the
    # two streams may differ in chunk count; everything else is the same.
    for stream in (through, direct):
        *content, final = stream
        assert content and all(c["choices"] for c in content) and final["choices"] == []
        running = [c["usage"]["completion_tokens"] for c in content]
        assert running == sorted(set(running)) and running[-1] == 6, running
    assert all(c["model"] == HF_MODEL for c in through) and all(c["model"] == SERVED for c in direct)
    # same fields in the same order (usage placement included), for token and usage chunks
    assert {tuple(c) for c in through[:-1]} == {tuple(c) for c in direct[:-1]}
    assert list(through[-1]) == list(direct[-1]) and through[-1]["usage"] == direct[-1]["usage"]
    assert {tuple(c["choices"][0]) for c in through[:-1]} == {tuple(c["choices"][0]) for c in direct[:-1]}
    assert "".join(c["choices"][0]["text"] for c in through[:-1]) == \
        "".join(c["choices"][0]["text"] for c in direct[:-1])

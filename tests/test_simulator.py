"""The vLLM simulator, driven over real sockets by the openai client and httpx.

Each test starts its own simulator on a free port in a background thread (its
own event loop), so sync clients work and fault settings never leak between
tests.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway.tokenizers import load_tokenizer
from loadtest.vllm_sim import FaultSpec, SimConfig, start_sim
from loadtest.vllm_sim.cli import RunningSim
from loadtest.vllm_sim.textgen import render_chat

MODEL = "sim-test"
TOK = load_tokenizer("tiktoken:cl100k_base")
MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there!"}],
    },
]


class SimThread:
    """A simulator on 127.0.0.1:<free port>, served from its own thread and loop."""

    def __init__(self, config: SimConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim: RunningSim = self._call(start_sim(config))
        self.url = self.sim.url

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self._call(self.sim.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def make_sim() -> Iterator[Callable[..., SimThread]]:
    sims: list[SimThread] = []

    def make(**kwargs: Any) -> SimThread:
        sims.append(SimThread(SimConfig(**{"model": MODEL, **kwargs})))
        return sims[-1]

    yield make
    for sim in sims:
        sim.close()


@pytest.fixture
def sim(make_sim: Callable[..., SimThread]) -> SimThread:
    return make_sim()


@pytest.fixture
def http(sim: SimThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, timeout=10) as client:
        yield client


@pytest.fixture
def oai(sim: SimThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as client:
        yield client


def sse_events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, checking vLLM's exact framing."""
    assert raw.endswith(b"data: [DONE]\n\n")
    frames = raw.split(b"\n\n")
    assert frames[-1] == b""
    assert all(f.startswith(b"data: ") for f in frames[:-1])
    return [f[6:] for f in frames[:-2]]


def chat_prompt_tokens(messages: list[Any]) -> int:
    return len(TOK.encode(render_chat(messages)))


def completion_tokens(text: str, finish: str | None) -> int:
    """Words are single tokens; a natural stop adds vLLM's EOS token (text "")."""
    return len(TOK.encode(text)) + (1 if finish == "stop" else 0)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            assert line.endswith(tuple("0123456789")) and "model_name=" in line
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_health_and_models(http: httpx.Client, oai: openai.OpenAI) -> None:
    r = http.get("/health")
    assert r.status_code == 200 and r.content == b""
    body = http.get("/v1/models").json()
    card = body["data"][0]
    assert body["object"] == "list" and len(body["data"]) == 1
    assert card["id"] == MODEL and card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == MODEL and card["parent"] is None and card["max_model_len"] == 4096
    assert card["permission"][0]["object"] == "model_permission"
    assert [m.id for m in oai.models.list()] == [MODEL]


def test_chat_stream_equals_nonstream(oai: openai.OpenAI) -> None:
    full = oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    choice = full.choices[0]
    text = choice.message.content or ""
    assert full.id.startswith("chatcmpl-") and choice.message.role == "assistant"
    assert choice.finish_reason == "stop" and 15 <= len(TOK.encode(text)) <= 63
    assert text.isascii() and text == text.rstrip()
    assert full.usage is not None
    assert full.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    assert full.usage.completion_tokens == completion_tokens(text, "stop")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(c.usage is None for c in chunks)
    # role chunk + one chunk per completion token (the last is EOS: empty content)
    assert len(chunks) == 1 + full.usage.completion_tokens


async def test_completions_async_stream_equals_nonstream(sim: SimThread) -> None:
    async with openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as oai:
        prompt = "Once upon a time"
        full = await oai.completions.create(model=MODEL, prompt=prompt, max_tokens=200)
        text = full.choices[0].text
        assert full.usage is not None and full.usage.prompt_tokens == len(TOK.encode(prompt))
        assert full.usage.completion_tokens == completion_tokens(text, "stop")
        stream = await oai.completions.create(
            model=MODEL, prompt=prompt, max_tokens=200, stream=True
        )
        pieces = [c.choices[0].text async for c in stream]
        assert "".join(pieces) == text and pieces[-1] == ""
        default = await oai.completions.create(model=MODEL, prompt=prompt)  # max_tokens=16
        assert default.choices[0].finish_reason == "length"
        assert default.usage is not None and default.usage.completion_tokens == 16
        assert text.startswith(default.choices[0].text)


def test_include_usage_one_final_chunk(http: httpx.Client) -> None:
    req = {
        "model": MODEL,
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    r = http.post("/v1/chat/completions", json=req)
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = sse_events(r.content)
    with_usage = [e for e in events if b'"usage"' in e]
    assert with_usage == [events[-1]]
    last = orjson.loads(events[-1])
    assert last["choices"] == [] and list(last) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
    ]
    assert events[-1].endswith(b',"usage":' + orjson.dumps(last["usage"]) + b"}")
    text = "".join(orjson.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert last["usage"] == {
        "prompt_tokens": chat_prompt_tokens(MESSAGES),
        "total_tokens": last["usage"]["prompt_tokens"] + completion_tokens(text, "stop"),
        "completion_tokens": completion_tokens(text, "stop"),
    }
    assert len({orjson.loads(e)["id"] for e in events}) == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_continuous_usage_in_every_chunk(http: httpx.Client, path: str) -> None:
    req: dict[str, Any] = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 30,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    req.update({"messages": MESSAGES} if "chat" in path else {"prompt": "Say something"})
    events = sse_events(http.post(path, json=req).content)
    chunks = [orjson.loads(e) for e in events]
    assert all("usage" in c for c in chunks)
    generated = [
        c for c in chunks if c["choices"] and "role" not in c["choices"][0].get("delta", {})
    ]
    assert [c["usage"]["completion_tokens"] for c in generated] == list(
        range(1, len(generated) + 1)
    )
    prompt = chunks[0]["usage"]["prompt_tokens"]
    assert all(
        c["usage"]["total_tokens"] == prompt + c["usage"]["completion_tokens"] for c in chunks
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(
        generated
    )
    for raw, chunk in zip(events, chunks, strict=True):
        if "chat" in path and chunk["choices"] and "role" in chunk["choices"][0]["delta"]:
            # vLLM 0.32 serializes these after usage in the role chunk
            assert raw.endswith(b',"prompt_token_ids":null,"prompt_text":null}')
        else:
            assert list(chunk)[-1] == "usage"


def test_max_tokens_length_and_max_completion_tokens(oai: openai.OpenAI) -> None:
    r = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert len(TOK.encode(r.choices[0].message.content or "")) == 5
    r2 = oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_completion_tokens=7, max_tokens=100
    )
    assert r2.usage is not None and r2.usage.completion_tokens == 7
    stream = oai.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True)
    chunks = list(stream)
    assert len(chunks) == 6 and chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices[0].delta.content  # the last word rides with finish_reason


def test_n2_chat_and_batch_completions(oai: openai.OpenAI) -> None:
    full = oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=2)
    texts = [c.message.content for c in full.choices]
    assert [c.index for c in full.choices] == [0, 1] and texts[0] != texts[1]
    assert full.usage is not None and full.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    assert full.usage.completion_tokens == sum(
        completion_tokens(c.message.content or "", c.finish_reason) for c in full.choices
    )
    joined = ["", ""]
    for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True):
        joined[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    assert joined == texts

    batch = oai.completions.create(model=MODEL, prompt=["one", "two words"], n=2, max_tokens=3)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    assert batch.usage is not None
    assert batch.usage.prompt_tokens == 1 + 2 and batch.usage.completion_tokens == 12
    ids = oai.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2)
    assert ids.usage is not None and ids.usage.prompt_tokens == 3


def test_error_shapes(http: httpx.Client, oai: openai.OpenAI) -> None:
    r = http.post("/v1/chat/completions", json={"model": "nope", "messages": MESSAGES})
    assert r.status_code == 404
    assert r.content == orjson.dumps(
        {
            "error": {
                "message": f"The model `nope` does not exist. Valid aliases: {MODEL}.",
                "type": "NotFoundError",
                "param": "model",
                "code": 404,
            }
        }
    )
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="nope", prompt="x")
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 5000})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert r.json()["error"]["type"] == "BadRequestError"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096"):
        oai.completions.create(model=MODEL, prompt="hi " * 5000)
    # prompt + max_tokens beyond the context is clamped, as vLLM 0.32 does
    prompt = "hi " * 4090
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 100})
    assert r.status_code == 200
    usage = r.json()["usage"]
    assert usage["total_tokens"] <= 4096 and r.json()["choices"][0]["finish_reason"] == "length"


def test_embeddings(oai: openai.OpenAI, http: httpx.Client) -> None:
    res = oai.embeddings.create(model=MODEL, input=["hello world", "bye"])  # base64 on the wire
    assert [d.index for d in res.data] == [0, 1] and len(res.data[0].embedding) == 64
    assert res.usage.prompt_tokens == len(TOK.encode("hello world")) + len(TOK.encode("bye"))
    raw = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "hello world", "encoding_format": "float"}
    ).json()
    assert raw["id"].startswith("embd-") and raw["object"] == "list"
    assert raw["data"][0]["object"] == "embedding"
    assert raw["data"][0]["embedding"] == pytest.approx(res.data[0].embedding)
    b64 = http.post(
        "/v1/embeddings", json={"model": MODEL, "input": "hello world", "encoding_format": "base64"}
    ).json()
    decoded = struct.unpack("<64f", base64.b64decode(b64["data"][0]["embedding"]))
    assert list(decoded) == raw["data"][0]["embedding"]
    assert sum(v * v for v in decoded) == pytest.approx(1.0, rel=1e-5)


def test_tokenize(http: httpx.Client) -> None:
    r = http.post("/tokenize", json={"model": MODEL, "prompt": "hello world"}).json()
    assert r == {
        "count": 2,
        "max_model_len": 4096,
        "tokens": TOK.encode("hello world"),
        "token_strs": None,
    }
    chat = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] == chat_prompt_tokens(MESSAGES)
    back = http.post("/detokenize", json={"tokens": r["tokens"]}).json()
    assert back == {"prompt": "hello world"}


def test_metrics_move_by_usage(http: httpx.Client, oai: openai.OpenAI) -> None:
    before = http.get("/metrics").text
    usages = [
        oai.chat.completions.create(model=MODEL, messages=MESSAGES, n=2).usage,
        oai.completions.create(model=MODEL, prompt=["a b", "c"], max_tokens=4).usage,
    ]
    stream = oai.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    usages.append([c for c in stream][-1].usage)
    after = http.get("/metrics").text
    for name, field in (
        ("vllm:prompt_tokens_total", "prompt_tokens"),
        ("vllm:generation_tokens_total", "completion_tokens"),
    ):
        delta = metric(after, name) - metric(before, name)
        assert delta == sum(getattr(u, field) for u in usages if u is not None)
    assert metric(after, "vllm:num_requests_running") == 0
    assert metric(after, "vllm:kv_cache_usage_perc") == 0
    stats = http.get("/sim/stats").json()
    assert stats["started"] == stats["completed"] == 3
    assert http.post("/sim/reset").json()["completed"] == 0


def test_fault_error_before(http: httpx.Client, oai: openai.OpenAI) -> None:
    spec = {"mode": "error_before", "status": 500, "count": 1}
    assert http.post("/sim/faults", json=spec).json()["mode"] == "error_before"
    assert http.get("/sim/faults").json()["count"] == 1
    with pytest.raises(openai.InternalServerError):
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert http.get("/sim/faults").json()["mode"] == "none"  # count used up
    assert oai.chat.completions.create(model=MODEL, messages=MESSAGES).choices
    http.post("/sim/faults", json={"mode": "error_before", "status": 503})
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "ServiceUnavailableError"
    assert http.post("/sim/faults", json={"mode": "bogus"}).status_code == 400
    stats = http.get("/sim/stats").json()
    assert stats["errored"] == 2 and stats["faults_injected"] == 2


def test_fault_reset_after(http: httpx.Client, oai: openai.OpenAI) -> None:
    http.post("/sim/faults", json={"mode": "reset_after", "after_tokens": 3, "count": 2})
    contents: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, openai.APIConnectionError)):
        for chunk in oai.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                contents.append(chunk.choices[0].delta.content)
    assert len(contents) == 3
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model=MODEL, messages=MESSAGES)
    stats = http.get("/sim/stats").json()
    assert stats["reset"] == 2 and stats["generation_tokens"] == 6 and stats["running"] == 0


def test_fault_hang_times_out_and_counts_abort(http: httpx.Client, sim: SimThread) -> None:
    http.post("/sim/faults", json={"mode": "hang", "count": 1})
    with (
        openai.OpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0, timeout=0.3) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    wait_for(lambda: http.get("/sim/stats").json()["aborted"] == 1)


def test_fault_drip_slows_stream(http: httpx.Client) -> None:
    req = {"model": MODEL, "prompt": "drip", "max_tokens": 6, "stream": True}
    t0 = time.monotonic()
    http.post("/v1/completions", json=req)
    fast = time.monotonic() - t0
    http.post("/sim/faults", json={"mode": "drip", "drip_ms": 40})
    t0 = time.monotonic()
    with http.stream("POST", "/v1/completions", json=req) as r:
        stamps = [time.monotonic() - t0 for line in r.iter_lines() if line.startswith("data: {")]
    assert len(stamps) == 6 and stamps[-1] >= 0.19 and stamps[-1] > fast + 0.1
    assert stamps[-1] - stamps[0] >= 0.19  # the chunks themselves arrive spread out


def test_disconnect_mid_stream_counts_partial(make_sim: Callable[..., SimThread]) -> None:
    sim = make_sim(itl_ms=20)
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        before = http.get("/metrics").text
        req = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 60}
        with http.stream("POST", "/v1/chat/completions", json=req) as r:
            seen = 0
            for line in r.iter_lines():
                seen += line.startswith("data: ")
                if seen == 4:  # role chunk + 3 tokens
                    break
        wait_for(lambda: http.get("/sim/stats").json()["aborted"] == 1)
        stats = http.get("/sim/stats").json()
        assert 3 <= stats["generation_tokens"] <= 5 and stats["completed"] == 0
        after = http.get("/metrics").text
        generated = metric(after, "vllm:generation_tokens_total")
        assert (
            generated - metric(before, "vllm:generation_tokens_total") == stats["generation_tokens"]
        )
        assert metric(after, "vllm:num_requests_running") == 0


def test_capacity_queueing_visible_in_metrics(make_sim: Callable[..., SimThread]) -> None:
    sim = make_sim(capacity=1, ttft_ms=300, itl_ms=1)

    async def burst() -> list[Any]:
        async with (
            openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="x", max_retries=0) as client,
            httpx.AsyncClient(base_url=sim.url) as http,
        ):
            calls = [
                asyncio.create_task(
                    client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3)
                )
                for i in range(3)
            ]
            seen = (0.0, 0.0)
            for _ in range(200):
                text = (await http.get("/metrics")).text
                seen = (
                    metric(text, "vllm:num_requests_running"),
                    metric(text, "vllm:num_requests_waiting"),
                )
                if seen == (1.0, 2.0):
                    assert metric(text, "vllm:kv_cache_usage_perc") > 0
                    break
                await asyncio.sleep(0.01)
            assert seen == (1.0, 2.0)
            return list(await asyncio.gather(*calls))

    results = asyncio.run(burst())
    assert all(r.choices[0].finish_reason == "length" for r in results)


def test_timing_knobs(make_sim: Callable[..., SimThread]) -> None:
    sim = make_sim(ttft_ms=100, itl_ms=10)
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        t0 = time.monotonic()
        with http.stream(
            "POST",
            "/v1/completions",
            json={"model": MODEL, "prompt": "t", "max_tokens": 11, "stream": True},
        ) as r:
            stamps = [time.monotonic() - t0 for ln in r.iter_lines() if ln.startswith("data: {")]
        assert stamps[0] >= 0.09 and stamps[-1] - stamps[0] >= 0.09


def test_fault_spec_cli_parsing() -> None:
    assert FaultSpec.parse_cli("drip,drip_ms=5").drip_ms == 5.0
    spec = FaultSpec.parse_cli('{"mode": "error_before", "status": 503, "count": 2}')
    assert (spec.mode, spec.status, spec.count) == ("error_before", 503, 2)
    assert FaultSpec.parse_cli("reset_after,after_tokens=4").after_tokens == 4
    with pytest.raises(ValueError):
        FaultSpec.parse_cli("explode")


def test_cli_starts_several_simulators() -> None:
    cmd = [
        sys.executable,
        "-m",
        "loadtest.vllm_sim",
        "--fault",
        "error_before,count=1",
        "--port",
        "0",
        "--model",
        "cli-a,cli-b",
        "--port",
        "0",
        "--model",
        "cli-c",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith("vllm-sim cli-a,cli-b listening on http://127.0.0.1:")
        assert lines[1].startswith("vllm-sim cli-c listening on http://127.0.0.1:")
        urls = [line.rsplit(" ", 1)[1] for line in lines]
        with httpx.Client(timeout=5) as http:
            assert http.get(urls[0] + "/health").status_code == 200
            assert http.get(urls[0] + "/sim/faults").json()["mode"] == "error_before"
            ids = [m["id"] for m in http.get(urls[1] + "/v1/models").json()["data"]]
            assert ids == ["cli-c"]
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_several_served_names(make_sim: Callable[..., SimThread]) -> None:
    """Like vLLM's --served-model-name a b: both accepted, responses name the first."""
    sim = make_sim(model="first-name, second-name")
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        cards = http.get("/v1/models").json()["data"]
        assert [c["id"] for c in cards] == ["first-name", "second-name"]
        r = http.post("/v1/completions", json={"model": "second-name", "prompt": "x"})
        assert r.status_code == 200 and r.json()["model"] == "first-name"
        emb = http.post("/v1/embeddings", json={"model": "second-name", "input": "x"}).json()
        assert emb["model"] == "first-name"
        r = http.post("/v1/completions", json={"model": "other", "prompt": "x"})
        assert r.json()["error"]["message"] == (
            "The model `other` does not exist. Valid aliases: first-name, second-name."
        )
        assert 'model_name="first-name"' in http.get("/metrics").text


def test_continuous_usage_is_per_choice_with_n2(http: httpx.Client) -> None:
    """vLLM 0.32 reports choice i's own running count in its chunks, not the sum."""
    req = {
        "model": MODEL,
        "messages": MESSAGES,
        "n": 2,
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    chunks = [
        orjson.loads(e) for e in sse_events(http.post("/v1/chat/completions", json=req).content)
    ]
    per_choice: dict[int, list[int]] = {0: [], 1: []}
    for c in chunks[2:-1]:  # after the two role chunks, before the usage trailer
        per_choice[c["choices"][0]["index"]].append(c["usage"]["completion_tokens"])
    assert per_choice == {0: [1, 2, 3, 4], 1: [1, 2, 3, 4]}
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def test_request_errors_inside_and_before_the_stream(http: httpx.Client) -> None:
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "", "stream": True})
    assert r.status_code == 200
    assert sse_events(r.content) == [
        b'{"error": {"message": "The decoder prompt cannot be '
        b'empty", "type": "BadRequestError", "param": null, '
        b'"code": 400}}'
    ]
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ""})
    assert r.status_code == 400
    r = http.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream_options": {"include_usage": True}},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"
    r = http.post("/v1/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == 400


def test_nonstream_disconnect_counts_partial(make_sim: Callable[..., SimThread]) -> None:
    sim = make_sim(ttft_ms=50, itl_ms=20)
    with httpx.Client(base_url=sim.url, timeout=10) as http:
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                "/v1/chat/completions",
                timeout=0.2,
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 60},
            )
        wait_for(lambda: http.get("/sim/stats").json()["aborted"] == 1)
        stats = http.get("/sim/stats").json()
        # ~150 ms of decoding at 20 ms per token after a 50 ms prefill
        assert 4 <= stats["generation_tokens"] <= 12 and stats["running"] == 0

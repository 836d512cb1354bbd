"""The usage meter on recorded vLLM 0.32 chunk bytes (shapes as the simulator and vLLM send)."""

from __future__ import annotations

import orjson

from gateway.relay.meter import ModelRenamer, StreamMeter, usage_of_response

ROLE = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"org/M",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,'
        b'"finish_reason":null}],"usage":{"prompt_tokens":7,"total_tokens":7,"completion_tokens":0},'
        b'"prompt_token_ids":null,"prompt_text":null}\n\n')


def token(i: int, text: str, index: int = 0) -> bytes:
    return (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"org/M",'
            b'"choices":[{"index":' + str(index).encode() + b',"delta":{"content":' + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":null}],"usage":{"prompt_tokens":7,"total_tokens":'
            + str(7 + i).encode() + b',"completion_tokens":' + str(i).encode() + b"}}\n\n")


FINAL = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"org/M",'
         b'"choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}\n\n')
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + token(1, " a") + token(2, " b") + token(3, " c") + FINAL + DONE


def events(data: bytes) -> list[dict[str, object]]:
    out = []
    for ev in data.split(b"\n\n"):
        if ev and ev != b"data: [DONE]":
            out.append(orjson.loads(ev[6:]))
    return out


def test_hides_usage_from_clients_that_did_not_ask() -> None:
    meter = StreamMeter(ModelRenamer("m"), False, False)
    out = meter.feed(STREAM)
    docs = events(out)
    assert all("usage" not in d for d in docs)
    assert all(d["model"] == "m" for d in docs)
    assert out.endswith(DONE)
    assert meter.final is not None and meter.final.completion_tokens == 3
    assert meter.done


def test_include_usage_shows_exactly_the_final_usage_chunk() -> None:
    meter = StreamMeter(ModelRenamer("m"), True, False)
    docs = events(meter.feed(STREAM))
    with_usage = [d for d in docs if d.get("usage")]
    assert len(with_usage) == 1 and with_usage[0] is docs[-1] and docs[-1]["choices"] == []


def test_continuous_usage_passes_through_when_asked() -> None:
    meter = StreamMeter(ModelRenamer("m"), True, True)
    docs = events(meter.feed(STREAM))
    assert all(d.get("usage") for d in docs)


def test_split_anywhere_gives_same_output() -> None:
    whole = StreamMeter(ModelRenamer("m"), False, False).feed(STREAM)
    for step in (1, 7, 50):
        meter = StreamMeter(ModelRenamer("m"), False, False)
        out = b"".join(meter.feed(STREAM[i : i + step]) for i in range(0, len(STREAM), step))
        assert out == whole


def test_cut_stream_is_counted_from_running_usage() -> None:
    meter = StreamMeter(ModelRenamer("m"), False, False)
    meter.feed(ROLE + token(1, " a") + token(2, " b")[:40])
    delivered = meter.delivered(prompt_estimate=99)
    assert (delivered.prompt_tokens, delivered.completion_tokens) == (7, 1)
    assert meter.final is None and not meter.done


def test_running_usage_summed_over_choices() -> None:
    meter = StreamMeter(ModelRenamer("m"), False, False)
    meter.feed(token(1, " a", 0) + token(1, " x", 1) + token(2, " b", 0))
    assert meter.completion_so_far() == 3


def test_renamer_replaces_whatever_the_upstream_called_it() -> None:
    rename = ModelRenamer("public")
    assert rename(b'{"id":"x","model":"org/first-alias","choices":[]}') == (
        b'{"id":"x","model":"public","choices":[]}')
    assert rename(b'{"error":{"param":"model"}}') == b'{"error":{"param":"model"}}'


def test_usage_of_non_streamed_response() -> None:
    body = b'{"model":"x","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,' \
           b'"prompt_tokens_details":{"cached_tokens":2}}}'
    usage = usage_of_response(body)
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (3, 4, 2)
    assert usage_of_response(b"not json") is None

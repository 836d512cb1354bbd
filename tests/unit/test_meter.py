"""The usage meter on recorded vLLM 0.32 chunk bytes (shapes as the simulator and vLLM send)."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import upstream_error_body
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
    delivered = meter.delivered(lambda: 99)
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


# --- whole blocks: the fast path must say exactly what event-by-event says ----------------

TRICKY_TEXT = st.sampled_from([
    " a", "", "usage", ',"usage":{"prompt_tokens":1}', '"model":"org/M"', "data: {", "\n\n", "}}",
    '"choices":[{"index":0,', '"completion_tokens":99', "长江", "\\", '"', "\r\n",
])


def _usage(prompt: int, completion: int, details: str) -> bytes:
    body = f'"prompt_tokens":{prompt},"total_tokens":{prompt + completion},"completion_tokens":{completion}'
    if details == "null":
        body += ',"prompt_tokens_details":null'
    elif details == "cached":
        body += ',"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":null'
    return ("{" + body + "}").encode()


def _chunk(model: bytes, index: int, text: str, usage: bytes | None, tail: bytes = b"") -> bytes:
    usage_part = b',"usage":' + usage if usage is not None else b""
    return (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"' + model
            + b'","choices":[{"index":' + str(index).encode() + b',"delta":{"content":' + orjson.dumps(text)
            + b'},"logprobs":null,"finish_reason":null}]' + usage_part + tail + b"}\n\n")


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    model = draw(st.sampled_from([b"org/M", b"bench-model", b"m"]))
    n = draw(st.sampled_from([1, 1, 2]))
    details = draw(st.sampled_from(["none", "null", "cached"]))
    with_usage = draw(st.booleans())
    prompt = draw(st.integers(1, 50))
    parts = [_chunk(model, 0, "", _usage(prompt, 0, details) if with_usage else None,
                    b',"prompt_token_ids":null,"prompt_text":null')]
    counts = [0] * n
    for _ in range(draw(st.integers(0, 12))):
        index = draw(st.integers(0, n - 1))
        counts[index] += draw(st.integers(1, 3))
        usage = _usage(prompt, counts[index], details) if draw(st.integers(0, 9)) else b"null"
        parts.append(_chunk(model, index, draw(TRICKY_TEXT), usage))
    if draw(st.booleans()):
        parts.append(b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"'
                     + model + b'","choices":[],"usage":' + _usage(prompt, sum(counts), details)
                     + b',"system_fingerprint":"vllm-0.32.0"}\n\n')
        if draw(st.booleans()):
            parts.append(DONE)
    return b"".join(parts)


@settings(max_examples=400, deadline=None)
@given(stream=streams(), include=st.booleans(), continuous=st.booleans(),
       cuts=st.lists(st.integers(1, 4000), max_size=6))
def test_whole_blocks_equal_event_by_event(stream: bytes, include: bool, continuous: bool,
                                           cuts: list[int]) -> None:
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    fast = StreamMeter(ModelRenamer("public/name"), include, continuous)
    slow = StreamMeter(ModelRenamer("public/name"), include, continuous, whole_blocks=False)
    for piece in pieces:
        assert fast.feed(piece) == slow.feed(piece)
        assert fast.running == slow.running and fast.choices == slow.choices
        assert fast.completion_so_far() == slow.completion_so_far()
    assert (fast.final, fast.done, fast.error) == (slow.final, slow.done, slow.error)
    assert fast.delivered(lambda: 5) == slow.delivered(lambda: 5)


@settings(max_examples=200, deadline=None)
@given(stream=streams(), include=st.booleans(), cuts=st.lists(st.integers(1, 4000), max_size=6))
def test_whole_blocks_equal_event_by_event_under_the_upstreams_own_name(
        stream: bytes, include: bool, cuts: list[int]) -> None:
    """The public name is the upstream's: nothing to rename, the blocks still pass whole."""
    upstream_name = stream.split(b'"model":"', 1)[1].split(b'"', 1)[0].decode()
    bounds = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    fast = StreamMeter(ModelRenamer(upstream_name), include, False)
    slow = StreamMeter(ModelRenamer(upstream_name), include, False, whole_blocks=False)
    for a, b in itertools.pairwise(bounds):
        assert fast.feed(stream[a:b]) == slow.feed(stream[a:b])
        assert fast.running == slow.running and fast.choices == slow.choices
    assert (fast.final, fast.done, fast.error) == (slow.final, slow.done, slow.error)


@pytest.mark.parametrize("public", ["m", "org/M"])
def test_whole_blocks_take_the_fast_path(public: str) -> None:
    """After the first event, a block of plain token chunks is handled whole (renamed or not)."""
    meter = StreamMeter(ModelRenamer(public), False, False)
    meter.feed(ROLE)
    calls = []
    original = meter._event
    meter._event = lambda ev: calls.append(ev) or original(ev)  # type: ignore[method-assign]
    out = meter.feed(token(1, " a") + token(2, ' "usage" '))
    assert not calls and b"usage\\\"" in out and b'"usage":{' not in out
    assert out.count(b'"model":' + orjson.dumps(public)) == 2
    assert meter.running is not None and meter.running.completion_tokens == 2


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, b'{"error":{"message":"temperature must be >= 0","type":"BadRequestError",'
              b'"param":"temperature","code":400}}',
         {"message": "temperature must be >= 0", "type": "invalid_request_error", "code": None,
          "param": "temperature"}),
        (404, b'{"error":{"message":"no such model","type":"NotFoundError","code":"model_not_found"}}',
         {"message": "no such model", "type": "not_found_error", "code": "model_not_found", "param": None}),
        (400, b"Bad Request", {"message": "Bad Request", "type": "invalid_request_error", "code": None,
                               "param": None}),
        (422, b'{"detail":[{"loc":["body"],"msg":"bad"}]}',
         {"message": '{"detail":[{"loc":["body"],"msg":"bad"}]}', "type": "invalid_request_error",
          "code": None, "param": None}),
    ],
)
def test_upstream_errors_take_openais_shape(status: int, body: bytes, expected: dict[str, object]) -> None:
    assert orjson.loads(upstream_error_body(status, body)) == {"error": expected}

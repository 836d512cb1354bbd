"""Kill one vLLM server: its streams in flight end billed for what they delivered, and the
gateway fails over to the other cluster. Runs last (it leaves one server for the session).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from tests.e2e.conftest import (
    HF_MODEL,
    TIKTOKEN_MODEL,
    Gateway,
    UsageStreams,
    VLLMServer,
    remember,
)
from tests.e2e.helpers import IGNORE_EOS, assert_billed, charge, headers, rid, server_of

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MESSAGES = [{"role": "user", "content": "Tell me about the Yangtze river at Wuhan."}]
STREAMS = 6  # long streams in flight when the server dies (the router spreads them)
# Tokens each: the tiny model makes about a thousand a second per server, and vLLM's engine
# runs ahead of what its API server has sent, so a stream must last seconds to be surely in
# flight when the server dies (the streams spread over both servers, three each).
LONG = 6000


@dataclass
class Reader:
    """A client reading one long stream to its end, in a thread."""

    gateway: Gateway
    key: str
    request_id: str = field(default_factory=lambda: rid("in-flight"))
    first: threading.Event = field(default_factory=threading.Event)
    read: int = 0  # vLLM's running completion count in the last chunk read
    ending: str = ""  # the last data payload ([DONE] ends errors too, as vLLM does)
    error: str = ""  # an error event's payload
    failure: BaseException | None = None

    def run(self) -> None:
        body = {"model": HF_MODEL, "messages": MESSAGES, "max_tokens": LONG, "stream": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                **IGNORE_EOS}
        last = ""
        try:
            with httpx.stream("POST", self.gateway.v1 + "/chat/completions", json=body, timeout=120,
                              headers={"Authorization": f"Bearer {self.key}", **headers(self.request_id)},
                              ) as response:
                remember(response)
                if response.status_code != 200:
                    raise AssertionError(f"{response.status_code}: {response.read()!r}")
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    self.first.set()
                    payload = line[6:]
                    if payload.startswith('{"id"'):
                        last = payload
                    elif payload.startswith('{"error"'):
                        self.error = payload
                    self.ending = payload
            if last:
                self.read = json.loads(last)["usage"]["completion_tokens"]
        except BaseException as exc:
            self.failure = exc
        finally:
            self.first.set()


def _connect_failures(gateway: Gateway, url: str) -> float:
    """The gateway's count of failed connections to an endpoint (its /metrics)."""
    total = 0.0
    for line in gateway.metrics_text().splitlines():
        if line.startswith("#") or f'"{url}"' not in line or 'kind="connect"' not in line:
            continue
        if re.match(r"^\w+_total\{", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _endpoint_state(gateway: Gateway, url: str) -> str:
    """What /admin/endpoints (control plane) says of an endpoint: up, warming, half_open,
    ejected, down; "" before a data-plane worker has reported it. The control plane merges
    the reports the workers publish every second, so a change shows within a second or two."""
    return next((str(row["state"]) for row in gateway.endpoints() if row["url"] == url), "")


def _learned_of_death(gateway: Gateway, url: str, timeout: float = 5.0) -> str:
    """Polls until the router has failed a connect to ``url`` or /admin/endpoints reports it
    down or ejected (bounded: the reports lag by up to a second); its last state."""
    deadline = time.monotonic() + timeout
    while True:
        state = _endpoint_state(gateway, url)
        if _connect_failures(gateway, url) > 0 or state in ("down", "ejected") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_kill_one_vllm_server(gateway: Gateway, vllm_servers: list[VLLMServer],
                              usage: UsageStreams) -> None:
    key, _account = gateway.buy_key()
    # 1. Long streams in flight on both servers; kill the one running the most of them.
    readers = [Reader(gateway, key) for _ in range(STREAMS)]
    threads = [threading.Thread(target=r.run) for r in readers]
    for thread in threads:
        thread.start()
    for reader in readers:
        assert reader.first.wait(60)
    running = {s.cluster: s.running() for s in vllm_servers}
    victim = max(vllm_servers, key=lambda s: running[s.cluster])
    assert running[victim.cluster] > 0, running
    victim.kill()
    for thread in threads:
        thread.join(120)
    assert not victim.alive()
    survivor = next(s for s in vllm_servers if s is not victim)

    failures = [(r.request_id, r.failure) for r in readers if r.failure is not None]
    assert not failures, failures
    events = usage.wait(r.request_id for r in readers)
    cut = 0
    for reader in readers:
        event = events[reader.request_id]
        assert event.charge == charge(HF_MODEL, event.prompt_tokens, event.completion_tokens)
        assert reader.ending == "[DONE]"
        if server_of(event, vllm_servers) is survivor or not reader.error:
            assert reader.read == LONG and not reader.error, reader
            assert_billed(event, model=HF_MODEL, prompt_tokens=event.prompt_tokens,
                          completion_tokens=LONG, stream=True, servers=vllm_servers)
            continue
        # Cut by the crash: the gateway's error event ends the stream, and the bill is
        # vLLM's running count as of the last chunk relayed: at least what the client read.
        cut += 1
        error = json.loads(reader.error)["error"]
        assert error["message"] and error["type"]
        assert (event.status, event.counted_by) == ("partial", "gateway"), event
        assert reader.read <= event.completion_tokens < LONG, (reader.read, event)
    assert cut > 0, f"every stream on {victim.cluster} had finished before the kill"
    print(f"kill: {running} streams running per cluster; {cut} cut on {victim.cluster}")

    # 2. New requests all succeed on the survivor. The cut streams got the dead server
    #    ejected for a while; once the router tries it again, a refused connect fails over
    #    to the survivor before the first byte. Send until that happened (bounded in time).
    ids: dict[str, bool] = {}  # request id -> streamed
    started = time.monotonic()
    _after_kill(gateway.openai(key), gateway, victim, ids)
    # The router learns of the death either way: by failing over from a refused connect, or
    # because its /health probes took the endpoint out before any request went there.
    state = _learned_of_death(gateway, victim.url)
    assert _connect_failures(gateway, victim.url) > 0 or state in ("down", "ejected"), (
        f"the dead server is '{state}' to the router after {len(ids)} requests")
    for request_id, event in usage.wait(ids).items():
        assert server_of(event, vllm_servers) is survivor
        assert_billed(event, model=event.model, prompt_tokens=event.prompt_tokens, completion_tokens=8,
                      stream=ids[request_id], servers=vllm_servers)
    print(f"failover: {len(ids)} requests after the kill, all served by {survivor.cluster} "
          f"in {time.monotonic() - started:.1f}s")


def _after_kill(client: openai.OpenAI, gateway: Gateway, victim: VLLMServer, ids: dict[str, bool]) -> None:
    """Mixed requests until the gateway has tried (and failed over from) the dead server."""
    deadline = time.monotonic() + 30
    failed_over_at = None
    for index in range(400):
        request_id = rid(f"after-kill{index}")
        ids[request_id] = bool(index % 2)
        if index % 2:
            chunks = list(client.chat.completions.create(
                model=TIKTOKEN_MODEL, messages=MESSAGES, max_tokens=8, stream=True,
                stream_options={"include_usage": True}, extra_body=IGNORE_EOS,
                extra_headers=headers(request_id)))
            assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
        else:
            reply = client.completions.create(model=HF_MODEL, prompt="Once upon a time", max_tokens=8,
                                              extra_body=IGNORE_EOS, extra_headers=headers(request_id))
            assert reply.usage is not None and reply.usage.completion_tokens == 8
        if failed_over_at is None and _connect_failures(gateway, victim.url) > 0:
            failed_over_at = index
        if failed_over_at is None and index >= 8 and _endpoint_state(gateway, victim.url) == "down":
            return  # the probes took it out: no request goes there to fail over from
        if (failed_over_at is not None and index >= failed_over_at + 4) or time.monotonic() > deadline:
            return

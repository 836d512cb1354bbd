"""Faults around metering: a gateway dying mid-stream, Redis going away."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest
import redis

from gateway import keyspace
from tests.gateway.conftest import (
    CHAT_MODEL,
    Gateway,
    Sims,
    openai_client,
    start_gateway,
    wait_for_event,
)
from tests.redis_servers import RedisServer, redis_server

MESSAGES = [{"role": "user", "content": "Tell a long story."}]


def test_dead_gateways_stream_expires_and_is_billed_its_checkpoint(
    gateway: Gateway, sims: Sims, tmp_path: Path
) -> None:
    """SIGKILL a gateway mid-stream: its lease passes, another gateway's reaper settles the
    request as 'expired', charging what the dead gateway last checkpointed."""
    doomed = start_gateway(gateway.config, gateway.redis_url, tmp_path / "doomed.log",
                           TOKENGATE_LEASE_SECONDS="1.5")
    try:
        for i in (0, 1):
            sims.set_fault(i, mode="drip", drip_ms=150)  # >= 16 tokens: > 2.4 s
        account, key = gateway.new_account()
        request_id, delivered = _stream_then_kill(doomed, key)
        assert delivered >= 5
        event = wait_for_event(gateway.redis_url, request_id, timeout=15)
        assert (event.status, event.counted_by) == ("expired", "gateway")
        assert 0 < event.completion_tokens <= delivered
        assert event.charge > 0
        balance = gateway.balance(account)
        assert balance["reserved"] == 0 and balance["spent"] == event.charge
    finally:
        doomed.stop()


def _stream_then_kill(doomed: Gateway, key: str) -> tuple[str, int]:
    """Start a long stream on ``doomed``, SIGKILL it past two checkpoints: (request id,
    content chunks the client received)."""
    payload = orjson.dumps({"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 200,
                            "stream": True})
    port = int(doomed.base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        received = b""
        deadline = time.monotonic() + 1.2  # past at least two checkpoints (every 0.5 s)
        while time.monotonic() < deadline:
            received += sock.recv(65536)
        os.kill(doomed.process.pid, signal.SIGKILL)
    delivered = received.count(b'"content":"') - received.count(b'"content":""')
    request_id = re.search(rb"x-request-id: (\S+)\r\n", received, re.IGNORECASE)
    assert request_id is not None, received[:500]
    return request_id.group(1).decode(), delivered


def test_the_reaper_outlives_a_redis_outage(gateway: Gateway, sims: Sims, private_redis: RedisServer,
                                           tmp_path: Path) -> None:
    """Redis gone while the reaper runs must not end the reaper: once Redis is back, a dead
    gateway's request is still settled as 'expired' by the gateway that stayed up."""
    survivor = start_gateway(gateway.config, private_redis.url, tmp_path / "survivor.log",
                             TOKENGATE_REAPER_INTERVAL="0.2")
    doomed: Gateway | None = None
    try:
        private_redis.stop()
        time.sleep(1.0)  # several reaper passes fail meanwhile
        private_redis.restart()
        _account, key = survivor.new_account()
        doomed = start_gateway(gateway.config, private_redis.url, tmp_path / "doomed.log",
                               TOKENGATE_LEASE_SECONDS="1.5")
        for i in (0, 1):
            sims.set_fault(i, mode="drip", drip_ms=150)
        request_id, _ = _stream_then_kill(doomed, key)
        event = wait_for_event(private_redis.url, request_id, timeout=15)
        assert (event.status, event.counted_by) == ("expired", "gateway")
        assert survivor.process.poll() is None
    finally:
        survivor.stop()
        if doomed is not None:
            doomed.stop()


@pytest.fixture()
def lonely_gateway(sims: Sims, gateway: Gateway, private_redis: RedisServer,
                   tmp_path: Path) -> Gateway:
    gw = start_gateway(gateway.config, private_redis.url, tmp_path / "gw.log")
    yield gw  # type: ignore[misc]
    gw.stop()


def test_redis_down_fails_closed(lonely_gateway: Gateway, private_redis: RedisServer) -> None:
    key = lonely_gateway.new_key()
    c = openai_client(lonely_gateway.v1, key, timeout=15)
    c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    private_redis.stop()
    with pytest.raises(openai.InternalServerError) as caught:
        c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"]
    assert "quota" in caught.value.message
    assert httpx.get(lonely_gateway.base + "/readyz", timeout=10).status_code == 503
    private_redis.restart()  # back, but empty: nothing may be served for free
    with pytest.raises(openai.APIStatusError) as refused:
        c.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
    assert refused.value.status_code == 503  # not 401: the key is fine, Redis lost its data
    unknown = httpx.post(lonely_gateway.v1 + "/chat/completions", timeout=10,
                         headers={"Authorization": "Bearer tg-a-key-this-gateway-never-cached"},
                         json={"model": CHAT_MODEL, "messages": MESSAGES})
    assert unknown.status_code == 503 and "reconcile" in unknown.json()["error"]["message"]
    assert lonely_gateway.process.poll() is None


def test_settlement_waits_for_redis_and_loses_nothing(gateway: Gateway, sims: Sims,
                                                      tmp_path: Path) -> None:
    """Redis dies mid-stream: the client still gets its whole answer; the settlement waits
    and lands once Redis is back (AOF kept the reservation), counted by the upstream."""
    with redis_server("--appendonly", "yes", "--appendfsync", "always") as durable:
        gw = start_gateway(gateway.config, durable.url, tmp_path / "gw.log")
        try:
            account, key = gw.new_account(credits=10_000)
            for i in (0, 1):
                sims.set_fault(i, mode="drip", drip_ms=100)
            result: dict[str, str] = {}

            def stream() -> None:
                c = openai_client(gw.v1, key, timeout=30)
                raw = c.chat.completions.with_raw_response.create(
                    model=CHAT_MODEL, messages=MESSAGES, max_tokens=20, stream=True)
                result["id"] = raw.headers["x-request-id"]
                chunks = list(raw.parse())
                result["text"] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)

            thread = threading.Thread(target=stream)
            thread.start()
            time.sleep(0.6)
            durable.stop()
            thread.join(30)
            assert len(result.get("text", "")) > 20  # the whole answer reached the client
            durable.restart()
            event = wait_for_event(durable.url, result["id"], timeout=15)
            assert (event.status, event.counted_by) == ("ok", "upstream")
            assert event.completion_tokens >= 16
            balance = gw.balance(account)
            assert balance["reserved"] == 0 and balance["spent"] == event.charge > 0
        finally:
            gw.stop()


def test_a_slow_whole_response_keeps_its_reservation(gateway: Gateway, sims: Sims, tmp_path: Path) -> None:
    """A non-streamed answer comes in one piece after the whole generation, which may take
    longer than a stream's first-byte timeout and than the reservation's lease. The gateway
    waits for it (TOKENGATE_RESPONSE_TIMEOUT) and renews the lease meanwhile, so the request
    is billed in full by the upstream's count, never expired by the reaper (for nothing)."""
    slow = start_gateway(gateway.config, gateway.redis_url, tmp_path / "slow.log",
                         TOKENGATE_LEASE_SECONDS="1.5", TOKENGATE_REAPER_INTERVAL="0.3",
                         TOKENGATE_FIRST_BYTE_TIMEOUT="1", TOKENGATE_RESPONSE_TIMEOUT="20")
    try:
        for i in (0, 1):
            sims.set_fault(i, mode="drip", drip_ms=150)  # >= 16 tokens: > 2.4 s
        _account, key = gateway.new_account()
        raw = openai_client(slow.v1, key, timeout=30).chat.completions.with_raw_response.create(
            model=CHAT_MODEL, messages=MESSAGES, max_tokens=24)
        reply = raw.parse()
        assert reply.usage is not None and reply.usage.completion_tokens >= 16
        event = wait_for_event(gateway.redis_url, raw.headers["x-request-id"], timeout=15)
        assert (event.status, event.counted_by) == ("ok", "upstream"), event
        assert event.completion_tokens == reply.usage.completion_tokens
    finally:
        slow.stop()


def test_a_stream_whose_reservation_is_gone_is_cut(gateway: Gateway, sims: Sims, tmp_path: Path) -> None:
    """Once the lease keeper finds the reservation gone (expired and settled by some reaper),
    the relay stops: nothing more is served on a reservation that no longer exists."""
    cutter = start_gateway(gateway.config, gateway.redis_url, tmp_path / "cut.log",
                           TOKENGATE_LEASE_SECONDS="1.5")
    client = redis.Redis.from_url(gateway.redis_url)
    try:
        for i in (0, 1):
            sims.set_fault(i, mode="drip", drip_ms=150)  # 40 tokens: 6 s
        account, key = gateway.new_account()
        body = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 40, "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", cutter.v1 + "/chat/completions", json=body, timeout=20,
                          headers={"Authorization": f"Bearer {key}"}) as response:
            request_id = response.headers["x-request-id"]
            lines = []
            for line in response.iter_lines():
                lines.append(line)
                if len(lines) == 4:  # streaming: now the reservation vanishes
                    assert client.hdel(keyspace.reservations_key(account), request_id) == 1
        assert "stream cut: its reservation expired" in "\n".join(lines)
        assert lines[-1] == "data: [DONE]" or lines[-2] == "data: [DONE]"
        assert time.monotonic() - started < 4.5  # cut within a renewal (0.5 s), not at the end
    finally:
        client.close()
        cutter.stop()

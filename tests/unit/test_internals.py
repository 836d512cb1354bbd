"""Units behind issue #18's findings: what clients may read of upstream errors, URLs without
credentials, the auth caches and the failure limiter, the weak admin key."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from control.admin_key import weakness
from gateway.auth import Authenticator, KeyRef, hash_key
from gateway.auth_limits import FailureLimiter, client_address
from gateway.errors import (
    AuthenticationFailed,
    RateLimited,
    event_status,
    upstream_error_body,
    upstream_fault,
)
from gateway.keyspace import PROVISIONED_KEY, key_hash_key
from gateway.redact import redact_url
from gateway.relay.meter import ModelRenamer, StreamMeter

TRACEBACK = 'Traceback (most recent call last):\n  File "/srv/vllm/x.py", line 3, in f\nValueError: boom'


class FakeRedis:
    """The two reads authentication makes (GET of a key's hash, EXISTS of the marker)."""

    def __init__(self) -> None:
        self.keys: dict[str, str] = {PROVISIONED_KEY: "1"}
        self.reads = 0

    def add(self, secret: str, key_id: str) -> None:
        self.keys[key_hash_key(hash_key(secret))] = f"{key_id} acct_{key_id}"

    async def execute_keyed(self, key: Any, *args: Any) -> Any:
        self.reads += 1
        if args[0] == "GET":
            value = self.keys.get(args[1])
            return value.encode() if value is not None else None
        if args[0] == "EXISTS":
            return int(args[1] in self.keys)
        raise AssertionError(args)


def scope(host: str = "192.0.2.7") -> dict[str, Any]:
    return {"type": "http", "client": (host, 5000), "headers": []}


# --- upstream errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        TRACEBACK,
        "cannot open /models/llama-3-70b/config.json",
        "connect to http://10.0.0.5:8000 failed",
        "worker at 10.0.0.5 died",
        "<object at 0x7f3a2b1c>",
        "x" * 1001,
    ],
)
def test_a_refusal_showing_internals_gets_a_message_of_ours(message: str) -> None:
    body = orjson.dumps(
        {"error": {"message": message, "type": "BadRequestError", "code": 400, "param": "messages"}}
    )
    error = orjson.loads(upstream_error_body(400, body))["error"]
    assert error == {
        "message": "the model server refused the request (400)",
        "type": "invalid_request_error",
        "code": None,
        "param": "messages",
    }


def test_a_refusal_names_the_public_model_not_the_served_one() -> None:
    body = orjson.dumps({"error": {"message": "model org/Secret-7B: bad temperature", "code": 400}})
    error = orjson.loads(upstream_error_body(400, body, "org/Secret-7B", "chat"))["error"]
    assert error["message"] == "model chat: bad temperature"


def test_a_plain_text_traceback_is_not_relayed() -> None:
    error = orjson.loads(upstream_error_body(400, TRACEBACK.encode()))["error"]
    assert "Traceback" not in error["message"] and "/srv" not in error["message"]


def test_a_failure_never_relays_its_text() -> None:
    body = orjson.dumps({"error": {"message": "CUDA out of memory", "code": "oom", "param": "x"}})
    error = orjson.loads(upstream_error_body(502, body))["error"]
    assert error == {
        "message": "the model server failed to answer (502)",
        "type": "upstream_error",
        "code": None,
        "param": None,
    }


def test_an_error_event_mid_stream_is_mapped_too() -> None:
    meter = StreamMeter(ModelRenamer("chat"), False, False)
    event = orjson.dumps({"error": {"message": TRACEBACK, "type": "InternalServerError", "code": 500}})
    chunk = orjson.dumps(
        {"id": "1", "model": "org/Secret-7B", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    )
    out = meter.feed(b"data: " + chunk + b"\n\ndata: " + event + b"\n\ndata: [DONE]\n\n")
    assert b"Traceback" not in out and b"org/Secret-7B" not in out and b"/srv" not in out
    assert b"the model server failed to answer (502)" in out
    assert meter.error is not None and meter.done


@pytest.mark.parametrize(("code", "status"), [(400, 400), (413, 413), (422, 422), (429, 429), (401, 502),
                                              (403, 502), (404, 502), (407, 502), (500, 502), ("x", 502)])
def test_an_error_events_status_blames_the_client_only_for_its_request(code: object, status: int) -> None:
    """A mid-answer 401 or 404 is the deployment's (its credentials, its model map): a client
    reading it would think its own key or model name wrong."""
    assert event_status(orjson.dumps({"error": {"message": "no", "code": code}})) == status


def test_refusals_of_the_gateway_itself_are_upstream_faults() -> None:
    assert [s for s in range(400, 600) if not upstream_fault(s)] == [
        s for s in range(400, 500) if s not in (401, 403, 404, 405, 407)
    ]


# --- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pa:ss@host:8000/x", "http://host:8000/x"),
        ("https://u%40x:p@w@h", "https://h"),
        ("http://host:8000", "http://host:8000"),
        ("http://host/a@b", "http://host/a@b"),
    ],
)
def test_urls_lose_their_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# --- the auth caches and the failure limiter ------------------------------------------------


async def test_bad_keys_never_evict_a_good_one() -> None:
    redis = FakeRedis()
    redis.add("tg-good", "good")
    auth = Authenticator(redis, ttl_seconds=60, failures_per_minute=0, cache_limit=2)  # type: ignore[arg-type]
    assert await auth.authenticate("tg-good") == KeyRef("good", "acct_good")
    for i in range(1000):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"tg-bad-{i}")
    reads = redis.reads
    assert await auth.authenticate("tg-good") == KeyRef("good", "acct_good")
    assert redis.reads == reads  # still cached: the bad keys went elsewhere


async def test_known_keys_are_evicted_one_at_a_time_least_recently_looked_up_first() -> None:
    redis = FakeRedis()
    for name in "abc":
        redis.add(f"tg-{name}", name)
    auth = Authenticator(redis, ttl_seconds=60, failures_per_minute=0, cache_limit=2)  # type: ignore[arg-type]
    await auth.authenticate("tg-a")
    await auth.authenticate("tg-b")
    await auth.authenticate("tg-c")  # a goes, b stays (the old cache flushed all)
    reads = redis.reads
    await auth.authenticate("tg-b")
    await auth.authenticate("tg-c")
    assert redis.reads == reads
    await auth.authenticate("tg-a")
    assert redis.reads == reads + 1


async def test_failures_are_limited_per_address_and_known_keys_go_on() -> None:
    redis = FakeRedis()
    redis.add("tg-good", "good")
    redis.add("tg-new", "new")
    auth = Authenticator(redis, ttl_seconds=60, failures_per_minute=3)  # type: ignore[arg-type]
    await auth.authenticate("tg-good", scope())
    for i in range(3):
        with pytest.raises(AuthenticationFailed):
            await auth.authenticate(f"tg-bad-{i}", scope())
    reads = redis.reads
    with pytest.raises(RateLimited) as caught:
        await auth.authenticate("tg-bad-x", scope())
    assert redis.reads == reads  # refused before any lookup
    assert caught.value.status == 429 and int(caught.value.headers["Retry-After"]) >= 1
    with pytest.raises(RateLimited):
        await auth.authenticate("tg-new", scope())
    assert await auth.authenticate("tg-good", scope()) == KeyRef("good", "acct_good")
    assert await auth.authenticate("tg-new", scope("192.0.2.8")) == KeyRef(
        "new", "acct_new"
    )  # another address
    assert await auth.authenticate("tg-new") == KeyRef("new", "acct_new")  # no request: no limit


def test_the_bucket_refills_and_ipv6_is_limited_per_64() -> None:
    limiter = FailureLimiter(60)
    for _ in range(60):
        limiter.failed("a", 100.0)
    assert limiter.retry_after("a", 100.0) == 1
    assert limiter.retry_after("a", 101.0) == 0
    assert client_address(scope("2001:db8:1:2:3:4:5:6")) == client_address(scope("2001:db8:1:2:ffff::1"))
    assert client_address(scope("::ffff:192.0.2.7")) == "192.0.2.7"
    assert client_address({"type": "http"}) == "unknown"


def test_the_limiter_keeps_a_bounded_number_of_addresses() -> None:
    limiter = FailureLimiter(1, max_addresses=3)
    for i in range(10):
        limiter.failed(str(i), 0.0)
    assert limiter.retry_after("0", 0.0) == 0 and limiter.retry_after("9", 0.0) > 0


# --- the admin key --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["short-key", "a" * 40, "passwordpasswordpassword", "abcabcabcabcabcabcabcabcabcabc"]
)
def test_weak_admin_keys(key: str) -> None:
    assert weakness(key) is not None


@pytest.mark.parametrize("key", ["Kx8_vQ2-mZ7rT1pL9sW4nY6bH3cJ5dF0", "2dc2d0266b94a53a41fab2cb5f57bd89"])
def test_strong_admin_keys(key: str) -> None:
    assert weakness(key) is None
    assert weakness(None) is None

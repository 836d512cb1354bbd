"""Nothing internal reaches a client (issue #18, findings 5-8), checked on running planes.

An upstream's error text (a traceback, a model path), the cluster's name and the endpoint's
address stay with the operator (log, metrics, admin), and an endpoint URL's ``user:password@``
is nowhere; ``/v1/models`` lists what the key may use and stops at once for a revoked key on
every worker; failed authentications are limited per client address; a weak admin key is
warned about. The gateway here runs two workers over clusters with telling names, one
endpoint's URL carrying credentials.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import (
    ADMIN_KEY,
    CHAT_MODEL,
    EMBED_MODEL,
    SERVED_CHAT,
    Gateway,
    Sims,
    credit,
    start_gateway,
)
from tests.support.catalogs import model, write_catalog
from tests.support.processes import start_gateway as start_both_planes

CLUSTERS = ("wuhan-secret-cluster", "yichang-secret-cluster")
PASSWORD = "hunter2-upstream-password"
FAILURES_PER_MINUTE = 5
SECRET_PATH = "/opt/models/secret-llama-70b"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/usr/lib/python3/site-packages/vllm/engine.py", line 412, in generate\n'
    f"    raise ValueError('cannot load {SECRET_PATH}')\n"
    f"ValueError: cannot load {SECRET_PATH} on 10.1.2.3"
)
LEAKS = ("Traceback", SECRET_PATH, "10.1.2.3", "vllm/engine.py", SERVED_CHAT, *CLUSTERS, PASSWORD)


@pytest.fixture(scope="module")
def internal(sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("internals")
    with_credentials = sims.url(0).replace("http://", f"http://operator:{PASSWORD}@")
    config = write_catalog(
        tmp / "models.yaml",
        {CLUSTERS[0]: [with_credentials], CLUSTERS[1]: [sims.url(1)]},
        [
            model(CHAT_MODEL, list(CLUSTERS), served_name=SERVED_CHAT, tokenizer="tiktoken:cl100k_base"),
            model(EMBED_MODEL, [CLUSTERS[0]], kind="embedding", context_window=8192, price=(0.5, 0)),
        ],
    )
    # two workers: what one worker learns (a revocation) must not wait on the other's cache
    gw = start_both_planes(
        config,
        redis_url,
        tmp / "gateway.log",
        workers=2,
        TOKENGATE_FIRST_BYTE_TIMEOUT="3",
        TOKENGATE_IDLE_TIMEOUT="3",
        TOKENGATE_MAX_BODY_BYTES="65536",
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def limited(internal: Gateway, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One worker that lets FAILURES_PER_MINUTE failed authentications through per address."""
    tmp = tmp_path_factory.mktemp("limited")
    gw = start_gateway(
        internal.config,
        redis_url,
        tmp / "gateway.log",
        TOKENGATE_AUTH_FAILURES_PER_MINUTE=str(FAILURES_PER_MINUTE),
    )
    yield gw
    gw.stop()


def new_key(gateway: Gateway, **limits: object) -> dict[str, Any]:
    """A funded account's new key: the admin's answer (``id``, ``key``)."""
    import asyncio

    with gateway.admin() as admin:
        account = admin.post("/admin/accounts", json={"name": "internals"}).raise_for_status().json()
        key: dict[str, Any] = (
            admin.post(f"/admin/accounts/{account['id']}/keys", json={"name": "k", **limits})
            .raise_for_status()
            .json()
        )
    asyncio.run(credit(gateway.redis_url, account["id"], 1_000_000))
    return key


def chat(gateway: Gateway, key: str, stream: bool = False) -> httpx.Response:
    return httpx.post(
        gateway.v1 + "/chat/completions",
        timeout=20,
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 5,
            "stream": stream,
        },
    )


def assert_nothing_internal(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, f"{leak!r} reached the client: {text}"


# --- upstream errors ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_upstream_refusal_with_a_traceback_shows_none_of_it(
    internal: Gateway, sims: Sims, stream: bool
) -> None:
    key = new_key(internal)["key"]
    for i in (0, 1):
        sims.set_fault(i, mode="error_before", status=400, message=TRACEBACK)
    response = chat(internal, key, stream)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == "the model server refused the request (400)"
    assert_nothing_internal(response.text)


def test_an_upstream_refusal_without_internals_keeps_its_message(internal: Gateway, sims: Sims) -> None:
    """vLLM's own words help the caller (a bad temperature); the served name becomes the public one."""
    key = new_key(internal)["key"]
    for i in (0, 1):
        sims.set_fault(
            i,
            mode="error_before",
            status=400,
            message=f"temperature must be non-negative for model {SERVED_CHAT}",
        )
    response = chat(internal, key)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"temperature must be non-negative for model {CHAT_MODEL}"


def test_an_upstream_failure_names_neither_its_text_nor_its_cluster(internal: Gateway, sims: Sims) -> None:
    key = new_key(internal)["key"]
    for i in (0, 1):
        sims.set_fault(i, mode="error_before", status=500, message=TRACEBACK)
    response = chat(internal, key)
    assert response.status_code == 502
    assert response.json()["error"]["message"] == "the upstream answered 500"
    assert_nothing_internal(response.text)
    assert "127.0.0.1:" not in response.text  # nor the endpoint's address
    # ... which the operator reads in the log, without the endpoint's credentials
    deadline = time.monotonic() + 5
    while "Traceback" not in internal.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = internal.log.read_text()
    assert "Traceback" in log and "secret-llama-70b" in log and CLUSTERS[0] in log and CLUSTERS[1] in log
    assert PASSWORD not in log


def test_an_unreachable_upstream_is_not_named(internal: Gateway, sims: Sims) -> None:
    key = new_key(internal)["key"]
    for i in (0, 1):
        sims.set_fault(i, mode="error_before", status=503, message=TRACEBACK)
    response = chat(internal, key, stream=True)
    assert response.status_code == 502
    assert_nothing_internal(response.text)


# --- what operators see ---------------------------------------------------------------------


def test_metrics_and_admin_show_endpoints_without_credentials(internal: Gateway, sims: Sims) -> None:
    key = new_key(internal)["key"]
    sims.set_fault(0, mode="error_before", status=500, count=1)  # an upstream error series too
    chat(internal, key)
    metrics = httpx.get(internal.base + "/metrics", timeout=5).text
    assert PASSWORD not in metrics and "operator@" not in metrics
    bare = sims.url(0)
    assert f'endpoint="{bare}"' in metrics  # the endpoint is still named, without its userinfo
    rows = internal.endpoints()
    assert bare in rows and not any(PASSWORD in url for url in rows)
    with internal.admin() as admin:
        assert PASSWORD not in admin.get("/admin/endpoints").text


def test_a_weak_admin_key_is_warned_about_at_start(internal: Gateway) -> None:
    assert len(ADMIN_KEY) < 24  # the tests' key is weak on purpose: the control plane says so
    control_log = internal.log.with_name(internal.log.stem + "-control" + internal.log.suffix)
    text = control_log.read_text()
    assert "TOKENGATE_ADMIN_KEY is weak" in text
    assert ADMIN_KEY not in text  # the warning never shows the key itself


# --- /v1/models -----------------------------------------------------------------------------


def models_of(gateway: Gateway, key: str) -> httpx.Response:
    # A new connection each time: with two workers, either may answer.
    return httpx.get(gateway.v1 + "/models", timeout=10, headers={"Authorization": f"Bearer {key}"})


def test_models_lists_only_what_the_key_may_use(internal: Gateway) -> None:
    narrow = new_key(internal, models=[EMBED_MODEL])["key"]
    wide = new_key(internal)["key"]
    assert {m["id"] for m in models_of(internal, narrow).json()["data"]} == {EMBED_MODEL}
    assert {m["id"] for m in models_of(internal, wide).json()["data"]} == {CHAT_MODEL, EMBED_MODEL}


def test_a_revoked_key_lists_nothing_at_once_on_every_worker(internal: Gateway) -> None:
    key = new_key(internal)
    for _ in range(8):  # both workers have it cached
        assert models_of(internal, key["key"]).status_code == 200
    with internal.admin() as admin:
        assert admin.delete(f"/admin/keys/{key['id']}").status_code == 204
    for _ in range(8):
        assert models_of(internal, key["key"]).status_code == 401


# --- failed authentications -----------------------------------------------------------------


def test_failed_authentications_are_limited_per_address(limited: Gateway) -> None:
    known = new_key(limited)["key"]
    assert models_of(limited, known).status_code == 200  # known to the worker
    statuses = []
    for i in range(FAILURES_PER_MINUTE + 3):
        response = chat(limited, f"tg-bad-key-{i}-{time.monotonic_ns()}")
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert 1 <= int(response.headers["retry-after"]) <= 60
            assert response.json()["error"]["code"] == "too_many_invalid_keys"
            assert response.headers["x-request-id"]
    assert statuses == [401] * FAILURES_PER_MINUTE + [429] * 3
    # the same key again is refused too (no Redis lookup), a key the worker knows goes on
    assert chat(limited, "tg-bad-key-0").status_code == 429
    assert models_of(limited, known).status_code == 200
    assert chat(limited, known).status_code == 200
    # a key the worker has not seen waits like a bad one: it cannot be told apart before the lookup
    assert models_of(limited, new_key(limited)["key"]).status_code == 429


def me(url: str, key: str, **headers: str) -> httpx.Response:
    return httpx.get(url + "/v1/me", timeout=10, headers={"Authorization": f"Bearer {key}", **headers})


def test_failed_keys_on_self_service_are_limited_per_address_on_both_urls(limited: Gateway) -> None:
    """/v1/me is authenticated by the control plane, reached through the data plane or
    straight: both ways fill one bucket per client address, and past it the answer is the
    data plane's 429. The data plane names the client (X-Forwarded-For from its socket), a
    client cannot name itself through it, and the control plane believes the header from
    trusted proxies only (loopback here, as every test client is)."""
    known = new_key(limited)["key"]
    assert me(limited.base, known).status_code == 200  # known to the control plane
    bad = [f"tg-bad-me-{i}-{time.monotonic_ns()}" for i in range(FAILURES_PER_MINUTE + 3)]
    urls = [limited.base, limited.control] * len(bad)
    statuses = [me(url, key).status_code for url, key in zip(urls, bad[:FAILURES_PER_MINUTE], strict=False)]
    assert statuses == [401] * FAILURES_PER_MINUTE
    refused = [me(url, key) for url, key in zip((limited.base, limited.control), bad[-2:], strict=True)]
    for response in refused:
        assert response.status_code == 429, response.text
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-request-id"]
    # the same answer as the data plane's own (its bucket is filled here, or by the test above)
    for key in bad:
        data_plane = chat(limited, key)
        if data_plane.status_code == 429:
            break
    assert data_plane.status_code == 429
    assert refused[0].json() == refused[1].json() == data_plane.json()
    assert data_plane.json()["error"]["code"] == "too_many_invalid_keys"
    # an address of one's choosing is not passed on by the data plane...
    assert me(limited.base, bad[-3], **{"X-Forwarded-For": "203.0.113.9"}).status_code == 429
    # ...but it is the address the control plane counts when a trusted proxy sends it
    assert me(limited.control, bad[-3], **{"X-Forwarded-For": "203.0.113.9"}).status_code == 401
    # a key the control plane knows goes on, both ways
    assert me(limited.base, known).status_code == 200
    assert me(limited.control, known).status_code == 200


def test_the_session_gateway_is_not_limited_by_the_default(gateway: Gateway, api_key: str) -> None:
    """The default (60 a minute) leaves room for honest mistakes."""
    for i in range(10):
        assert chat(gateway, f"tg-typo-{i}").status_code == 401
    assert chat(gateway, api_key).status_code == 200


# --- crafted cursors ------------------------------------------------------------------------


def _b64(raw: str) -> str:
    import base64

    return base64.urlsafe_b64encode(raw.encode()).decode()


# Not a cursor of ours at all: always 400.
MALFORMED_CURSORS = [
    "!!!!",
    "é",
    "%00",
    _b64("not json"),
    _b64('["x", "y"]'),
    _b64('[null, "a"]'),
    _b64('[1.5, "a"]'),
    _b64('[-1, "a"]'),
    _b64('[100000000000000000000000000000, "a"]'),
    _b64('[1, ""]'),
    _b64("[1, 2, 3]"),
    _b64('{"offset": -1}'),
    _b64('{"offset": 1000000000000000000000}'),
    _b64('{"offset": "1"}'),
]
# Shaped like a cursor but naming no real position (a huge id, an odd one): 400 or an empty
# page, never a 500.
ODD_CURSORS = [
    _b64('[9223372036854775807, "a"]'),
    _b64('[1, "\\u00b2"]'),
    _b64('[1, "99999999999999999999999999"]'),
    _b64('{"offset": 9223372036854775807}'),
]


def test_crafted_cursors_are_refused_with_400_never_500(gateway: Gateway) -> None:
    account_id, key = gateway.new_account(credits=0)
    admin_routes = [
        (f"/admin/accounts/{account_id}/usage", {}),
        (f"/admin/accounts/{account_id}/usage", {"group_by": "day"}),
        ("/admin/accounts", {}),
        ("/admin/orders", {}),
        ("/admin/codes", {}),
        ("/admin/audit", {}),
    ]
    me_routes: list[tuple[str, dict[str, str]]] = [
        ("/v1/me/usage", {}),
        ("/v1/me/usage", {"group_by": "model"}),
    ]
    failures = []
    with gateway.admin() as admin, gateway.client(key) as me:
        for client, routes in ((admin, admin_routes), (me, me_routes)):
            for route, params in routes:
                for cursor in MALFORMED_CURSORS:
                    failures += _refused(client, route, {**params, "cursor": cursor}, (400,))
                for cursor in ODD_CURSORS:
                    failures += _refused(client, route, {**params, "cursor": cursor}, (200, 400))
    assert not failures, "\n".join(map(str, failures))


def _refused(
    client: httpx.Client, route: str, params: dict[str, str], expected: tuple[int, ...]
) -> list[str]:
    try:
        response = client.get(route, params=params)
    except httpx.HTTPError as exc:  # a connection the server dropped: no answer at all
        return [f"{route} {params}: {exc!r}"]
    if response.status_code in expected:
        return []
    return [f"{route} {params}: {response.status_code} {response.text[:200]}"]


# --- tokenizing before the balance check ------------------------------------------------------


def big_chat(gateway: Gateway, key: str, size: int) -> httpx.Response:
    text = "The Yangtze flows east. " * (size // 24)
    return httpx.post(
        gateway.v1 + "/chat/completions",
        timeout=20,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 5},
    )


def test_a_big_prompt_of_a_key_that_cannot_pay_is_refused_before_it_is_tokenized(gateway: Gateway) -> None:
    _, broke = gateway.new_account(credits=0)
    small = big_chat(gateway, broke, 2_000)  # admission counts its tokens, and says so
    assert small.status_code == 402 and "prompt tokens" in small.json()["error"]["message"]
    big = big_chat(gateway, broke, 40_000)  # refused on the balance alone: no count was made
    assert big.status_code == 402, big.text
    assert big.json()["error"] == {
        "message": "balance exhausted: no credits available",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
        "param": None,
    }
    narrow = gateway.new_key(models=[EMBED_MODEL])
    assert big_chat(gateway, narrow, 40_000).status_code == 403
    # a key that can pay is not refused early: its prompt is counted (and found too long here)
    funded = gateway.new_key()
    answer = big_chat(gateway, funded, 40_000)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "context_length_exceeded"

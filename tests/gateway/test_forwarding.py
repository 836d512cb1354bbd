"""What reaches the upstream, checked from outside: real processes, and simulators that
record every body they receive (``--record-requests``, ``GET /sim/requests``).

Fields that steer the server (queue priority, KV transfer, the cache salt, templates) are
refused before any upstream call; media URLs reach the upstream only as ``data:`` URLs or
from allowed hosts with public addresses; every chat and completions request carries the
gateway's per-account ``cache_salt``, and prefix affinity keeps one account's prefix on one
endpoint while other accounts' identical prefixes are not steered together.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.gateway.conftest import Gateway, start_gateway
from tests.support.catalogs import model, write_catalog
from tests.support.processes import Sims, start_sims

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
VISION = "vision-model"
SERVED = "org/Vision-7B"
EMBED = "embed-model"
SYSTEM = "You are the archive's careful assistant; answer from the records only. " * 12  # ~850 chars


@pytest.fixture(scope="module")
def rec_sims() -> Iterator[Sims]:
    sims = start_sims(2, f"{SERVED},{EMBED}", "--record-requests", "1000")
    yield sims
    sims.stop()


@pytest.fixture(scope="module")
def fw_redis() -> str:
    """A database of this module's own: other sessions flush the gateway tests' one."""
    url = "redis://127.0.0.1:6379/12"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def gw(rec_sims: Sims, fw_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One cluster of two endpoints; a model that accepts images; media from `localhost`
    (which resolves to loopback, so it must still be refused) and `*.media.example`."""
    tmp = tmp_path_factory.mktemp("forwarding")
    path = write_catalog(
        tmp / "models.yaml",
        {"east": [rec_sims.url(0), rec_sims.url(1)]},
        [
            model(
                VISION, ["east"], served_name=SERVED, tokenizer="tiktoken:cl100k_base", media={"image": 1500}
            ),
            model(EMBED, ["east"], kind="embedding", context_window=8192, price=(0.5, 0)),
        ],
    )
    doc = yaml.safe_load(path.read_text())
    doc["media_urls"] = {"allowed_hosts": ["localhost", "*.media.example"]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    gateway = start_gateway(path, fw_redis, tmp / "gateway.log")
    yield gateway
    gateway.stop()


def recorded(sims: Sims) -> list[tuple[int, dict[str, Any]]]:
    """(simulator index, record) of every request the simulators received, oldest first."""
    out = []
    for index in range(len(sims.ports)):
        data = httpx.get(sims.url(index) + "/sim/requests", timeout=5).raise_for_status().json()["data"]
        out += [(index, record) for record in data]
    return out


def upstream_body(sims: Sims, request_id: str) -> tuple[int, dict[str, Any]]:
    """Where the request with the gateway's ``request_id`` went, and the body it got there."""
    found = [(i, r["body"]) for i, r in recorded(sims) if r["request_id"] == request_id]
    assert len(found) == 1, found
    return found[0]


def post(gw: Gateway, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(gw.base + path, json=body, timeout=20, headers={"Authorization": f"Bearer {key}"})


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": VISION, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3, **extra}


def refused_before_upstream(
    gw: Gateway, sims: Sims, key: str, path: str, body: dict[str, Any], param: str, code: str
) -> dict[str, Any]:
    before = len(recorded(sims))
    response = post(gw, key, path, body)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error
    assert len(recorded(sims)) == before  # nothing reached any upstream
    return error


STEERING = [
    ("priority", -100),
    ("kv_transfer_params", {"remote_host": "10.0.0.9", "remote_port": 5557}),
    ("ec_transfer_params", {"remote_host": "10.0.0.9"}),
    ("cache_salt", "shared-with-the-victim"),
    ("request_id", "someone-elses-id"),
    ("session_id", "s"),
    ("vllm_xargs", {"x": 1}),
    ("logits_processors", ["os.system"]),
]


@pytest.mark.parametrize(("field", "value"), STEERING)
def test_steering_fields_are_refused_before_any_upstream_call(
    gw: Gateway, rec_sims: Sims, field: str, value: object
) -> None:
    key = gw.new_key()
    error = refused_before_upstream(
        gw, rec_sims, key, CHAT, chat_body(**{field: value}), field, "unsupported_parameter"
    )
    assert f"'{field}' is not accepted" in error["message"]
    completion = {"model": VISION, "prompt": "hello", "max_tokens": 3, field: value}
    refused_before_upstream(gw, rec_sims, key, COMPLETIONS, completion, field, "unsupported_parameter")


def test_embeddings_refuse_steering_fields_too(gw: Gateway, rec_sims: Sims) -> None:
    key = gw.new_key()
    for field, value in (("priority", -1), ("cache_salt", "x"), ("request_id", "r")):
        refused_before_upstream(
            gw,
            rec_sims,
            key,
            EMBEDDINGS,
            {"model": EMBED, "input": "hi", field: value},
            field,
            "unsupported_parameter",
        )


def test_client_templates_are_refused(gw: Gateway, rec_sims: Sims) -> None:
    key = gw.new_key()
    for field, value in (
        ("chat_template", "{% for i in range(10**9) %}{% endfor %}"),
        ("chat_template_kwargs", {"enable_thinking": True}),
        ("mm_processor_kwargs", {"max_pixels": 10**9}),
    ):
        refused_before_upstream(
            gw, rec_sims, key, CHAT, chat_body(**{field: value}), field, "unsupported_parameter"
        )


def test_unknown_fields_are_refused_with_their_name(gw: Gateway, rec_sims: Sims) -> None:
    error = refused_before_upstream(
        gw, rec_sims, gw.new_key(), CHAT, chat_body(frobnicate=True), "frobnicate", "unsupported_parameter"
    )
    assert error["message"] == "Unrecognized request argument supplied: frobnicate"


def test_best_of_beyond_n_is_refused(gw: Gateway, rec_sims: Sims) -> None:
    refused_before_upstream(
        gw,
        rec_sims,
        gw.new_key(),
        COMPLETIONS,
        {"model": VISION, "prompt": "x", "max_tokens": 3, "best_of": 4, "n": 2},
        "best_of",
        "unsupported_value",
    )


def test_sampling_extras_pass_and_openai_only_fields_are_dropped(gw: Gateway, rec_sims: Sims) -> None:
    extras = {
        "top_k": 5,
        "min_p": 0.1,
        "repetition_penalty": 1.1,
        "stop_token_ids": [7],
        "ignore_eos": True,
        "min_tokens": 1,
        "seed": 3,
        "user": "u-1",
    }
    response = post(
        gw, gw.new_key(), CHAT, chat_body(store=True, metadata={"a": "b"}, service_tier="priority", **extras)
    )
    assert response.status_code == 200, response.text
    _, body = upstream_body(rec_sims, response.headers["x-request-id"])
    assert {name: body[name] for name in extras} == extras
    assert not {"store", "metadata", "service_tier"} & body.keys()


def test_each_account_gets_its_own_salt_and_the_client_cannot_choose_it(gw: Gateway, rec_sims: Sims) -> None:
    keys = [gw.new_key(), gw.new_key()]
    salts: dict[str, list[str]] = {key: [] for key in keys}
    for key in keys:
        completion = {"model": VISION, "prompt": "hi", "max_tokens": 2}
        for path, body in ((CHAT, chat_body()), (COMPLETIONS, completion), (CHAT, chat_body(stream=True))):
            response = post(gw, key, path, body)
            assert response.status_code == 200, response.text
            _, sent = upstream_body(rec_sims, response.headers["x-request-id"])
            salts[key].append(sent["cache_salt"])
    first, second = (salts[key] for key in keys)
    assert len(set(first)) == 1 and len(set(second)) == 1  # stable for an account, chat and completions
    assert first[0] != second[0]
    assert len(first[0]) == 43  # 256 bits, base64url
    response = post(gw, gw.new_key(), EMBEDDINGS, {"model": EMBED, "input": "hi"})
    assert response.status_code == 200, response.text
    _, sent = upstream_body(rec_sims, response.headers["x-request-id"])
    assert "cache_salt" not in sent  # pooling requests have no prefix cache to salt


HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://127.0.0.1:6379/",
    "file:///etc/passwd",
    "http://localhost:6379/x.png",  # allowed by name, resolves to loopback
    "http://[::1]/x.png",
    "http://10.0.0.7/x.png",
    "http://images.elsewhere.example/x.png",  # not on the allowlist
    "http://a.media.example@127.0.0.1/x.png",  # credentials: the host is 127.0.0.1
    "ftp://a.media.example/x.png",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
@pytest.mark.parametrize("part_type", ["image_url", "video_url"])
def test_media_urls_inside_the_network_are_refused(
    gw: Gateway, rec_sims: Sims, url: str, part_type: str
) -> None:
    part = {"type": part_type, part_type: {"url": url}}
    body = {
        "model": VISION,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, part]}],
    }
    error = refused_before_upstream(
        gw, rec_sims, gw.new_key(), CHAT, body, "messages", "unsupported_media_url"
    )
    assert "is not accepted" in error["message"]


def test_data_urls_still_work(gw: Gateway, rec_sims: Sims) -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    body = {
        "model": VISION,
        "max_tokens": 3,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}],
    }
    response = post(gw, gw.new_key(), CHAT, body)
    assert response.status_code == 200, response.text
    _, sent = upstream_body(rec_sims, response.headers["x-request-id"])
    assert sent["messages"][0]["content"][1] == image


def conversation(key: str, gw: Gateway, turn: int) -> str:
    body = {
        "model": VISION,
        "max_tokens": 2,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {turn}"}],
    }
    response = post(gw, key, CHAT, body)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def test_affinity_within_an_account_not_across_accounts(gw: Gateway, rec_sims: Sims) -> None:
    key = gw.new_key()
    homes = {upstream_body(rec_sims, conversation(key, gw, turn))[0] for turn in range(6)}
    assert len(homes) == 1  # one account's shared prefix keeps meeting its cache

    # Sixteen accounts with the same prefix: were the key the prefix alone, all would land on
    # one endpoint; keyed per account they spread (all on one of two: p = 2**-15).
    others = {upstream_body(rec_sims, conversation(gw.new_key(), gw, 0))[0] for _ in range(16)}
    assert others == {0, 1}


def test_catalog_refuses_a_bad_media_host(tmp_path: Path) -> None:
    from gateway.catalog import CatalogError, parse_catalog

    text = (
        "clusters: [{name: c, endpoints: [{url: 'http://127.0.0.1:1'}]}]\n"
        "models: [{name: m, context_window: 100, price: {input: 1, output: 1}, deployments: [c]}]\n"
        "media_urls:\n  allowed_hosts: ['http://images.example/']\n"
    )
    with pytest.raises(CatalogError, match=r"models.yaml:4: media_urls.allowed_hosts"):
        parse_catalog(text)

"""A key with one credit cannot make a worker tokenize megabytes (issue #18), on running planes.

A body over 16 KiB is judged on a floor of its prompt's tokens, known without tokenizing
(gateway.token_floor), before it is counted: a floor its credits cannot pay is refused with
admission's 402, a floor past the window with admission's 400. Each such refusal counts in
``tokengate_refused_before_counting_total{code}`` on the worker (one here), which is how
the tests see that the tokenizer never ran: the refusal came before counting, by that code.
The body bound is the default, 4 MiB; the models count with tiktoken (exact and stand-in)
and with a Hugging Face BPE (exact), the slowest of them on megabytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.conftest import Gateway, Sims, start_gateway
from tests.support.catalogs import model, write_catalog
from tests.unit.test_openai_request import qwen_like

MODELS = {"exact": "big-exact", "stand-in": "big-stand-in", "hf": "big-hf"}
EMBED = "big-embed"
MIB = 1024 * 1024
BODY_BOUND = 4 * MIB  # the default TOKENGATE_MAX_BODY_BYTES


@pytest.fixture(scope="module")
def big(sims: Sims, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("big-prompts")
    qwen_like().save(str(tmp / "tokenizer.json"))
    config = write_catalog(tmp / "models.yaml", {"east": [sims.url(0)]}, [
        model(MODELS["exact"], ["east"], tokenizer="tiktoken:cl100k_base", tokenizer_exact=True),
        model(MODELS["stand-in"], ["east"], tokenizer="tiktoken:cl100k_base"),
        model(MODELS["hf"], ["east"], tokenizer=f"hf:{tmp}"),
        model(EMBED, ["east"], kind="embedding", tokenizer="tiktoken:cl100k_base", tokenizer_exact=True,
              context_window=8192, price=(0.5, 0)),
    ])
    gw = start_gateway(config, redis_url, tmp / "gateway.log", TOKENGATE_MAX_BODY_BYTES=str(BODY_BOUND))
    yield gw
    gw.stop()


def refused_before_counting(gateway: Gateway) -> dict[str, float]:
    """``tokengate_refused_before_counting_total`` by code, from the (one) worker."""
    text = httpx.get(gateway.base + "/metrics", timeout=10).text
    return {sample.labels["code"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "tokengate_refused_before_counting"
            for sample in family.samples if sample.name.endswith("_total")}


def post(gateway: Gateway, key: str, route: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{gateway.v1}/{route}", timeout=60, headers={"Authorization": f"Bearer {key}"},
                      json=body)


def prose(size: int) -> str:
    """~``size`` bytes of ordinary English (a tokenizer's everyday work, ~4 bytes a token)."""
    return ("The Yangtze flows east past Wuhan and Yichang to the sea. " * (size // 58 + 1))[:size]


@pytest.mark.parametrize("which", list(MODELS))
def test_a_one_credit_key_gets_402_for_4_mib_without_any_counting(big: Gateway, which: str) -> None:
    key = big.new_key(credits=1)
    before = refused_before_counting(big).get("insufficient_quota", 0)
    body = {"model": MODELS[which], "messages": [{"role": "user", "content": prose(BODY_BOUND - 4096)}]}
    response = post(big, key, "chat/completions", body)
    assert response.status_code == 402, response.text
    error = response.json()["error"]
    assert error["code"] == error["type"] == "insufficient_quota"
    assert error["message"].startswith("balance exhausted: 1 credits available, this request needs at least ")
    assert refused_before_counting(big)["insufficient_quota"] == before + 1  # refused before counting


def test_a_funded_key_gets_the_windows_400_for_4_mib_without_any_counting(big: Gateway) -> None:
    key = big.new_key()
    before = refused_before_counting(big).get("context_length_exceeded", 0)
    body = {"model": MODELS["hf"], "messages": [{"role": "user", "content": prose(BODY_BOUND - 4096)}],
            "max_tokens": 10}
    response = post(big, key, "chat/completions", body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert "at least" in response.json()["error"]["message"]
    embedding = post(big, key, "embeddings", {"model": EMBED, "input": prose(2 * MIB)})
    assert embedding.status_code == 400 and embedding.json()["error"]["param"] == "input"
    assert refused_before_counting(big)["context_length_exceeded"] == before + 2


def test_a_key_that_can_pay_for_the_floor_is_counted_as_before(big: Gateway) -> None:
    """Just over 16 KiB with enough credits for its floor, not for its count: admission's own
    402 (after counting), never an early one. Under 16 KiB, nothing new happens at all."""
    key = big.new_key(credits=1000)  # 20 KiB of prose: a floor of ~210 tokens, a count of ~4,500
    counts = refused_before_counting(big)
    for size in (20 * 1024, 8 * 1024):
        body = {"model": MODELS["exact"], "messages": [{"role": "user", "content": prose(size)}]}
        response = post(big, key, "chat/completions", body)
        assert response.status_code == 402, response.text
        assert "prompt tokens and one completion token per choice" in response.json()["error"]["message"]
        assert "at least" not in response.json()["error"]["message"].split("(")[1]  # its count, not a floor
    assert refused_before_counting(big) == counts

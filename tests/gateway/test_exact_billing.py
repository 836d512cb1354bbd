"""Billed = what the upstream reports, whatever the catalog's tokenizer estimated.

The upstreams here count one token per UTF-8 byte (``--tokenizer bytes``): CJK text costs
three times what the catalog's cl100k estimate says, and the catalog (wrongly) claims the
estimate is exact, so the reservation falls short. A well-funded account is charged the full
cost of the upstream's usage; an account that cannot cover the excess is charged down to zero,
never below, and the rest is recorded as ``uncollected``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.quota.pricing import cost
from gateway.tokenizers import load_tokenizer
from tests.gateway.conftest import (
    SERVED_CHAT,
    Gateway,
    Sims,
    start_gateway,
    start_sims,
    wait_for_event,
)

MODEL = "short-estimate"
PROMPT = "长江流经武汉与宜昌又" * 30  # 300 CJK characters: 900 bytes
IN_PM, OUT_PM = 1000, 2000


def write_catalog(path: Path, sims: Sims) -> Path:
    path.write_text(f"""
clusters:
  - name: east
    endpoints: [{{url: "{sims.url(0)}"}}]
models:
  - name: {MODEL}
    served_name: {SERVED_CHAT}
    tokenizer: tiktoken:cl100k_base
    tokenizer_exact: true        # not so: the upstream counts bytes
    context_window: 4096
    price: {{input: 1, output: 2}}
    deployments: [east]
""", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def byte_gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    sims = start_sims(1, SERVED_CHAT, "--tokenizer", "bytes")
    tmp = tmp_path_factory.mktemp("bytes")
    gw = start_gateway(write_catalog(tmp / "models.yaml", sims), redis_url, tmp / "gateway.log")
    yield gw
    gw.stop()
    sims.stop()


def call(gateway: Gateway, key: str, route: str, stream: bool, max_tokens: int) -> httpx.Response:
    body: dict[str, object] = {"model": MODEL, "max_tokens": max_tokens, "stream": stream}
    if route == "chat/completions":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    if stream:
        body["stream_options"] = {"include_usage": True}
    return httpx.post(f"{gateway.v1}/{route}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})


def reported_usage(response: httpx.Response, stream: bool) -> dict[str, int]:
    if not stream:
        usage: dict[str, int] = response.json()["usage"]
        return usage
    last = [e for e in response.text.split("\n\n") if e.startswith("data: {")][-1]
    usage = httpx.Response(200, content=last[6:]).json()["usage"]
    return usage


@pytest.mark.parametrize("route", ["chat/completions", "completions"])
@pytest.mark.parametrize("stream", [False, True])
def test_prompt_beyond_the_estimate_is_charged(byte_gateway: Gateway, route: str, stream: bool) -> None:
    account, key = byte_gateway.new_account(1_000_000)
    response = call(byte_gateway, key, route, stream, max_tokens=8)
    assert response.status_code == 200, response.text
    usage = reported_usage(response, stream)
    assert usage["prompt_tokens"] >= len(PROMPT.encode()) > len(
        load_tokenizer("tiktoken:cl100k_base").encode(PROMPT))
    event = wait_for_event(byte_gateway.redis_url, response.headers["x-request-id"])
    assert (event.prompt_tokens, event.completion_tokens) == (usage["prompt_tokens"],
                                                              usage["completion_tokens"])
    assert event.charge == cost(event.prompt_tokens, event.completion_tokens, IN_PM, OUT_PM)
    assert event.uncollected == 0
    balance = byte_gateway.balance(account)
    assert balance["spent"] == event.charge and balance["reserved"] == 0


@pytest.mark.parametrize("stream", [False, True])
def test_an_account_that_cannot_cover_the_excess_reaches_zero(byte_gateway: Gateway, stream: bool) -> None:
    """Enough credits for the estimate (cl100k) but not for the bytes the upstream counts."""
    estimate = len(load_tokenizer("tiktoken:cl100k_base").encode(PROMPT))
    credits = estimate + 100  # admits: the estimate, the template overhead and one token fit
    account, key = byte_gateway.new_account(credits)
    response = call(byte_gateway, key, "chat/completions", stream, max_tokens=1)
    assert response.status_code == 200, response.text
    event = wait_for_event(byte_gateway.redis_url, response.headers["x-request-id"])
    full = cost(event.prompt_tokens, event.completion_tokens, IN_PM, OUT_PM)
    assert full > credits
    assert (event.charge, event.uncollected) == (credits, full - credits)
    balance = byte_gateway.balance(account)
    assert balance["available"] == 0 and balance["spent"] == credits and balance["reserved"] == 0
    assert balance["purchased"] == balance["available"] + balance["reserved"] + balance["spent"] + \
        balance["expired"]
    refused = call(byte_gateway, key, "chat/completions", stream, max_tokens=1)
    assert refused.status_code == 402
    metrics = httpx.get(byte_gateway.base + "/metrics", timeout=5).text
    assert "tokengate_uncollected_credits_total" in metrics

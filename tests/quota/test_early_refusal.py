"""The early refusal of big prompts never refuses what admission accepts (real Redis).

``Pipeline.refuse_early`` judges a prompt on floors of its size (no tokenizer run) and the
account's balance; ``Pipeline.admit`` then counts it and runs the admission script. For
random prompts (hostile text included: the vocabularies' longest tokens repeated, text that
normalizers shorten), models (tokenizers exact and stand-in, tiktoken, bytes and a Hugging
Face BPE; prices with free sides; small and large windows), max_tokens, n and balances, each
refusal made early must be a refusal of admission's too (the same one, or a window its count
proves where the floor could not). Both run against one standalone Redis, on fresh accounts.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.auth import Authenticator, KeyRef
from gateway.catalog import Catalog, parse_catalog
from gateway.errors import GatewayError
from gateway.metrics import GatewayMetrics
from gateway.openai_request import parse_request
from gateway.pipeline import Pipeline
from gateway.quota import QuotaStore
from gateway.redisio import fast_redis
from gateway.settings import Settings
from tests.redis_servers import RedisServer
from tests.unit.test_openai_request import qwen_like
from tests.unit.test_token_floor import HOSTILE

from .helpers import connect, new_id

TOKENIZERS = {"cl-exact": ("tiktoken:cl100k_base", True), "cl-stand-in": ("tiktoken:cl100k_base", False),
              "bytes": ("bytes", True), "hf": ("hf:{dir}", True)}
PRICES = {"p1": (1, 2), "cheap": (0.001, 1), "free": (0, 0), "in-only": (2.25, 0), "out-only": (0, 1)}
WINDOWS = (64, 2048)
FRAGMENTS = [*HOSTILE, " " * 128, "The Yangtze flows east. ", "长江", "=" * 64, "12345"]


def catalog_yaml(tokenizer_dir: Path) -> str:
    models = []
    for (tok, (spec, exact)), (price, (i, o)), window in itertools.product(
            TOKENIZERS.items(), PRICES.items(), WINDOWS):
        models.append({"name": f"chat-{tok}-{price}-{window}", "tokenizer": spec.format(dir=tokenizer_dir),
                       "tokenizer_exact": exact, "context_window": window,
                       "price": {"input": i, "output": o}, "deployments": ["a"]})
    for (tok, (spec, exact)), window in itertools.product(TOKENIZERS.items(), WINDOWS):
        models.append({"name": f"embed-{tok}-{window}", "kind": "embedding", "tokenizer_exact": exact,
                       "tokenizer": spec.format(dir=tokenizer_dir), "context_window": window,
                       "price": {"input": 0.5, "output": 0}, "deployments": ["a"]})
    return orjson.dumps({"clusters": [{"name": "a", "endpoints": [{"url": "http://127.0.0.1:9"}]}],
                         "models": models}).decode()  # JSON is YAML


class Planes:
    """A pipeline over real Redis (no router or upstream: nothing here gets that far)."""

    def __init__(self, server: RedisServer, catalog: Catalog) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = connect("standalone", [("127.0.0.1", server.port)])
        self.fast = fast_redis(server.url)
        self.store = QuotaStore(self.client, fast=self.fast)
        none: Any = None
        self.pipeline = Pipeline(Settings(), catalog, Authenticator(self.fast, 10.0), self.store, none, none,
                                 GatewayMetrics())
        self.catalog = catalog

    def run(self, aw: Any) -> Any:
        return self.loop.run_until_complete(aw)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.fast.aclose())
        self.loop.close()


@pytest.fixture(scope="module")
def planes(redis_standalone: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planes]:
    directory = tmp_path_factory.mktemp("qwen-like")
    qwen_like().save(str(directory / "tokenizer.json"))
    planes = Planes(redis_standalone, parse_catalog(catalog_yaml(directory)))
    yield planes
    planes.close()


TEXT = st.lists(st.tuples(st.sampled_from(FRAGMENTS), st.integers(1, 60)), min_size=1, max_size=6).map(
    lambda parts: "".join(fragment * times for fragment, times in parts))


@st.composite
def cases(draw: st.DrawFn, names: list[str]) -> tuple[str, str, dict[str, Any], int]:
    name = draw(st.sampled_from(names))
    texts = draw(st.lists(TEXT, min_size=1, max_size=3))
    if name.startswith("embed"):
        kind, body = "embeddings", {"input": texts}
    elif draw(st.booleans()):
        kind, body = "chat", {"messages": [{"role": "user", "content": t} for t in texts]}
    else:
        kind, body = "completions", {"prompt": texts}
    if kind != "embeddings":
        body["n"] = draw(st.integers(1, 3))
        max_tokens = draw(st.one_of(st.none(), st.integers(1, 2100)))
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
    credits = draw(st.one_of(st.integers(0, 40), st.integers(0, 20_000)))
    return name, kind, {"model": name, **body}, credits


def test_an_early_refusal_is_always_admissions_too(planes: Planes) -> None:
    refused: dict[str, int] = {}

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cases(sorted(planes.catalog.models)))
    def check(case: tuple[str, str, dict[str, Any], int]) -> None:
        name, kind, body, credits = case
        account, key_id = new_id("acct"), new_id("key")
        planes.run(planes.store.init_balance(account))
        if credits:
            planes.run(planes.store.credit(account, credits))
        planes.run(planes.store.set_key_record(account, key_id))
        key, model = KeyRef(key_id, account), planes.catalog.models[name]
        request = parse_request(kind, orjson.dumps(body))  # type: ignore[arg-type]
        early: GatewayError | None = None
        collected = None
        try:
            collected = planes.run(planes.pipeline.refuse_early(key, request, model))
        except GatewayError as error:
            early = error
        try:
            planes.run(planes.pipeline.admit(key, request, model, new_id("req"), collected))
        except GatewayError as error:
            if early is not None:  # the same refusal, or a window its count proved, the floor could not
                window = error.code == "context_length_exceeded"
                assert error.status == early.status or (early.status == 402 and window), (early, error)
            event(f"admission refused: {error.code}")
        else:
            assert early is None, f"refused early ({early.message}) what admission accepted"
        if early is not None:
            event(f"refused early: {early.code}")
            refused[str(early.code)] = refused.get(str(early.code), 0) + 1

    check()  # and the property was put to the test, both ways:
    assert refused.get("insufficient_quota", 0) >= 10, refused
    assert refused.get("context_length_exceeded", 0) >= 10, refused

"""Settlement on the request path (Pipeline.settle) and the reaper count and log uncollected credits."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.auth import KeyRef
from gateway.catalog import parse_catalog
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Outcome, Pipeline
from gateway.quota import QuotaStore
from gateway.relay.meter import Usage
from gateway.settings import Settings
from gateway.state import GatewayState

from .helpers import admit, funded_key, reap_account

CATALOG = """
clusters:
  - name: a
    endpoints: [{url: "http://127.0.0.1:9"}]
models:
  - name: m
    tokenizer: tiktoken:cl100k_base
    context_window: 1000
    price: {input: 1, output: 2}
    deployments: [a]
"""


def uncollected(metrics: GatewayMetrics, model: str) -> float:
    value = metrics.registry.get_sample_value("tokengate_uncollected_credits_total", {"model": model})
    return value or 0.0


async def test_uncollected_credits_are_counted_and_logged(
    store: QuotaStore, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = parse_catalog(CATALOG)
    metrics = GatewayMetrics()
    none = cast(Any, None)
    pipe = Pipeline(Settings(), catalog, none, store, none, none, metrics)
    model = catalog.models["m"]
    account, key = await funded_key(store, 100)
    who = KeyRef(key, account)
    await admit(store, account, key, request_id="paid", prompt=10, max_tokens=5)  # 20
    await pipe.settle(who, model, "paid", False, Outcome(Usage(10, 5)))
    assert uncollected(metrics, "m") == 0
    await admit(store, account, key, request_id="short", prompt=10, max_tokens=5)  # 20
    with caplog.at_level(logging.WARNING, logger="tokengate.pipeline"):
        await pipe.settle(who, model, "short", False, Outcome(Usage(40, 50)))  # 140 due, 80 left
    assert uncollected(metrics, "m") == 60
    [warning] = [r.getMessage() for r in caplog.records if "uncollected" in r.getMessage()]
    assert "short" in warning and "60 credits" in warning
    await pipe.settle(who, model, "short", False, Outcome(Usage(40, 50)))  # a retry: counted once
    assert uncollected(metrics, "m") == 60
    assert (await store.balance(account))["available"] == 0


async def test_the_reaper_counts_an_expirys_uncollected_credits(store: QuotaStore) -> None:
    metrics = GatewayMetrics()
    account, key = await funded_key(store, 30)
    await admit(store, account, key, request_id="gone", prompt=10, max_tokens=5, lease_ms=20)  # 20
    await store.checkpoint(
        request_id="gone", account_id=account, key_id=key, completion_tokens=40, lease_ms=20
    )  # 10 + 80 = 90 due, 30 in the account
    await asyncio.sleep(0.06)
    [event] = await reap_account(store, account)
    assert (event.charge, event.uncollected) == (30, 60)
    GatewayState._uncollected(cast(Any, SimpleNamespace(metrics=metrics)), event)
    assert uncollected(metrics, "m") == 60

"""Helpers of the billing tests: a clock the test moves, funded accounts, one-line requests."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from billing.clock import DAY_MS, wall_ms
from billing.ledger import ledger_balance, ledger_grants
from billing.packages import NewPackage
from billing.service import Billing
from billing.streams import backlog
from billing.worker import BillingWorker, WorkerOptions
from gateway.accounts import KeyLimits
from gateway.quota.store import QuotaStore
from gateway.usage import UsageEvent

PRICES = {"input_pm": 1000, "output_pm": 2000}  # 1 credit per prompt token, 2 per output


class ManualClock:
    """Billing's clock (purchases, records), moved by the test. Admission uses Redis TIME."""

    def __init__(self) -> None:
        self.now = wall_ms()

    def __call__(self) -> int:
        return self.now

    def set(self, ms: int) -> None:
        self.now = ms


async def redis_now(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@dataclass(frozen=True)
class Pack:
    credits: int
    days: int = 30
    models: list[str] | None = None


@dataclass
class Funded:
    account_id: str
    key_id: str
    secret: str
    grants: list[dict[str, Any]]


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


async def funded(billing: Billing, packs: Sequence[Pack], *, valid_from: int | None = None) -> Funded:
    """A new account with one key that bought one package per ``pack``.

    ``valid_from`` (epoch ms, default: the clock) is when the grants start, so a test can make
    a grant that expires at an instant it chooses (relative to Redis time).
    """
    account = await billing.accounts.create_account("t")
    key = await billing.accounts.create_key(account["id"], "k", KeyLimits())
    grants = []
    for pack in packs:
        package, _ = await billing.packages.create_package(
            NewPackage(name="p", credits=pack.credits, valid_days=pack.days, models=pack.models)
        )
        if valid_from is not None:
            billing.packages.clock = lambda: valid_from
        try:
            grant, _ = await billing.packages.purchase(account["id"], package["id"], new_id("order"))
        finally:
            billing.packages.clock = billing.clock
        grants.append(grant)
    return Funded(account["id"], key["id"], key["key"], grants)


async def request(
    store: QuotaStore,
    who: Funded,
    *,
    model: str = "m",
    prompt: int = 10,
    completion: int = 10,
    max_tokens: int | None = 100,
    request_id: str | None = None,
) -> UsageEvent | None:
    """Admit and settle one request; its usage event (None: settled before)."""
    rid = request_id or new_id("req")
    await store.admit(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        model=model,
        prompt_tokens=prompt,
        max_tokens=max_tokens,
        max_tokens_ceiling=4096,
        **PRICES,
    )
    return await store.settle_event(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        status="ok",
        counted_by="upstream",
        stream=False,
        cluster="c",
        endpoint="http://e",
    )


async def ledger_figures(billing: Billing, account_id: str, now_ms: int | None = None) -> dict[str, int]:
    async with billing.engine.connect() as conn:
        found = await ledger_grants(conn, [account_id])
    return ledger_balance(found, wall_ms() if now_ms is None else now_ms)


async def drain(billing: Billing, redis: Redis, *, timeout: float = 30.0) -> BillingWorker:
    """Run a billing worker in this process until the usage streams are all recorded."""
    worker = BillingWorker(
        redis,
        billing.engine,
        consumer=new_id("test-worker"),
        options=WorkerOptions(block_ms=50, claim_idle_ms=60_000),
    )
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: _drained(redis, task), timeout)
    finally:
        worker.stop()
        await task
    return worker


async def _drained(redis: Redis, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # a worker that died: its error
    return await backlog(redis) == 0


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def conserved(balance: dict[str, int]) -> bool:
    return balance["purchased"] == (
        balance["available"] + balance["reserved"] + balance["spent"] + balance["expired"]
    )


__all__ = ["DAY_MS", "PRICES"]

"""Consumption across packages, with controlled time: the grant that expires first among
those valid for the model pays first; expired grants stop counting at their expiry (Redis
time) and their remainder shows as ``expired``; the ledger agrees grant by grant."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from billing.clock import DAY_MS
from billing.service import Billing
from gateway.errors import BalanceExhausted
from gateway.quota.store import QuotaStore

from .helpers import ManualClock, Pack, conserved, drain, funded, ledger_figures, new_id, redis_now, request

pytestmark = pytest.mark.timeout(60)


async def test_the_grant_expiring_first_pays_first(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100, days=30), Pack(50, days=3), Pack(80, days=10)])
    long, short, middle = (g["id"] for g in who.grants)
    first = await request(store, who, prompt=30, completion=5)  # 40 credits
    assert first is not None and first.allocation() == [(short, 40)]
    second = await request(store, who, prompt=20, completion=10)  # 40: 10 + 30
    assert second is not None and second.allocation() == [(short, 10), (middle, 30)]
    view = await store.view(who.account_id)
    assert [(g.id, g.spent, g.available) for g in view.grants] == [
        (short, 50, 0),
        (middle, 30, 50),
        (long, 0, 100),
    ]
    await drain(billing, redis)
    ledger = await ledger_figures(billing, who.account_id)
    assert ledger == {**view.totals(), "reserved": 0} and ledger["spent"] == 80


async def test_a_reservation_spanning_grants_is_charged_in_order(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(30, days=2), Pack(500, days=20)])
    soon, later = (g["id"] for g in who.grants)
    rid = new_id("req")
    adm = await store.admit(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        model="m",
        prompt_tokens=10,
        max_tokens=50,
        max_tokens_ceiling=4096,
        input_pm=1000,
        output_pm=2000,
    )
    assert adm.reserve == 110 and adm.allocation == f"{soon}:30,{later}:80"
    bal = await store.balance(who.account_id)
    assert (bal["reserved"], bal["available"]) == (110, 420) and conserved(bal)
    event = await store.settle_event(
        request_id=rid,
        account_id=who.account_id,
        key_id=who.key_id,
        prompt_tokens=10,
        completion_tokens=5,
        status="ok",
        counted_by="upstream",
        stream=False,
        cluster="c",
        endpoint="e",
    )
    assert event is not None and event.charge == 20 and event.grants == f"{soon}:20"
    view = await store.view(who.account_id)
    assert [(g.spent, g.reserved, g.available) for g in view.grants] == [(20, 0, 10), (0, 0, 500)]


async def test_model_restricted_credits_never_pay_for_another_model(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(1000, days=5, models=["x"]), Pack(60, days=50)])
    x_only, anything = (g["id"] for g in who.grants)
    event = await request(store, who, model="y", prompt=10, completion=10)  # 30 credits
    assert event is not None and event.allocation() == [(anything, 30)]
    # 30 credits left for y: many concurrent requests of y can take exactly those
    results = await asyncio.gather(
        *(request(store, who, model="y", prompt=4, completion=3, max_tokens=3) for _ in range(12)),
        return_exceptions=True,
    )
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 3 and all(isinstance(r, BalanceExhausted) for r in results if r not in served)
    with pytest.raises(BalanceExhausted, match="1000 more credits are valid for other models only"):
        await request(store, who, model="y", prompt=1, completion=0)
    event = await request(store, who, model="x", prompt=100, completion=0)
    assert event is not None and event.allocation() == [(x_only, 100)]
    view = await store.view(who.account_id)
    assert {g.id: g.spent for g in view.grants} == {x_only: 100, anything: 60}
    assert all(g.reserved + g.spent <= g.credits for g in view.grants)
    await drain(billing, redis)
    assert await ledger_figures(billing, who.account_id) == {**view.totals(), "reserved": 0}


async def test_expiry_by_redis_time_and_in_the_ledger(
    billing: Billing, redis: Redis, clock: ManualClock
) -> None:
    """A 1-day grant made to expire 1.5 s from now (Redis time) beside a 30-day one."""
    store = QuotaStore(redis)
    expires = await redis_now(redis) + 1500
    soon = await funded(billing, [Pack(100, days=1)], valid_from=expires - DAY_MS)
    package_grant = soon.grants[0]["id"]
    await request(store, soon, prompt=20, completion=0)  # 20 spent from the expiring grant
    rid = new_id("req")  # in flight across the expiry: reserves 10 + 2*20 = 50
    await store.admit(
        request_id=rid,
        account_id=soon.account_id,
        key_id=soon.key_id,
        model="m",
        prompt_tokens=10,
        max_tokens=20,
        max_tokens_ceiling=100,
        input_pm=1000,
        output_pm=2000,
    )
    bal = await store.balance(soon.account_id)
    assert bal == {"purchased": 100, "reserved": 50, "spent": 20, "expired": 0, "available": 30}

    await asyncio.sleep(max(0, expires - await redis_now(redis)) / 1000 + 0.05)
    bal = await store.balance(soon.account_id)
    assert bal == {"purchased": 100, "reserved": 50, "spent": 20, "expired": 30, "available": 0}
    with pytest.raises(BalanceExhausted):
        await request(store, soon, prompt=1, completion=0)
    event = await store.settle_event(
        request_id=rid,
        account_id=soon.account_id,
        key_id=soon.key_id,
        prompt_tokens=10,
        completion_tokens=5,
        status="ok",
        counted_by="upstream",
        stream=False,
        cluster="c",
        endpoint="e",
    )
    assert event is not None and event.grants == f"{package_grant}:20"  # admitted while valid
    bal = await store.balance(soon.account_id)
    assert bal == {"purchased": 100, "reserved": 0, "spent": 40, "expired": 60, "available": 0}

    await drain(billing, redis)
    clock.set(expires - 1)
    assert await ledger_figures(billing, soon.account_id, clock()) == {
        "purchased": 100,
        "reserved": 0,
        "spent": 40,
        "expired": 0,
        "available": 60,
    }
    clock.set(expires)
    assert await ledger_figures(billing, soon.account_id, clock()) == bal

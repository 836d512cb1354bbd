"""A capped key's counter is a copy of the ledger, on each ledger backend with real Redis:
setting a cap counts what the key already spent in the period (recorded or still in the
stream), reconcile reports and restores a lost or wrong counter (held included), and
reconcile's key check compares the cap of the key record."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from billing.db.schema import usage_records
from billing.key_caps import check_key_spend
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway import keyspace
from gateway.contract import CreditLimit, period_id, period_start_ms
from gateway.errors import BalanceExhausted
from gateway.quota.store import QuotaStore

from .helpers import PRICES, Funded, Pack, drain, funded, new_id, redis_now, request

pytestmark = pytest.mark.timeout(60)


async def _admit(store: QuotaStore, who: Funded, max_tokens: int = 20) -> int:
    """Admit a request of 10 prompt tokens; its reserve (10 + 2 x max_tokens)."""
    adm = await store.admit(
        request_id=new_id("r"), account_id=who.account_id, key_id=who.key_id, model="m",
        prompt_tokens=10, max_tokens=max_tokens, max_tokens_ceiling=1000, **PRICES,
    )  # fmt: skip
    return adm.reserve


async def test_a_cap_set_on_a_key_counts_what_it_spent_today(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(10_000)])
    for _ in range(3):
        await request(store, who, prompt=10, completion=10)  # 30 credits each
    await drain(billing, redis)  # recorded in the ledger
    await request(store, who, prompt=10, completion=10)  # settled, still in the stream only
    key = await billing.accounts.update_key(who.key_id, {"credit_limit": CreditLimit(100, "day")})
    assert key is not None and key["credit_limit"] == {"credits": 100, "period": "day"}
    spend = await billing.store.key_spend(who.account_id, who.key_id, "day")
    assert (spend.spent, spend.held) == (120, 0)
    with pytest.raises(BalanceExhausted) as refused:
        await _admit(store, who, max_tokens=1)
    assert refused.value.code == "key_credit_limit"
    raised = await billing.accounts.update_key(who.key_id, {"credit_limit": CreditLimit(200, "month")})
    assert raised is not None and raised["credit_limit"] == {"credits": 200, "period": "month"}
    month = await billing.store.key_spend(who.account_id, who.key_id, "month")
    assert month.spent == 120 and month.period == period_id("month", await redis_now(redis))
    assert await _admit(store, who) == 50
    removed = await billing.accounts.update_key(who.key_id, {"credit_limit": None})
    assert removed is not None and removed["credit_limit"] is None
    assert await _admit(store, who, max_tokens=100) == 210  # no cap: the balance alone


async def test_reconcile_restores_a_lost_counter_and_checks_the_cap(billing: Billing, redis: Redis) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(10_000)])
    await billing.accounts.update_key(who.key_id, {"credit_limit": CreditLimit(1000, "total")})
    for _ in range(2):
        await request(store, who, prompt=10, completion=10)
    await drain(billing, redis)
    held = await _admit(store, who)  # in flight: held on the cap
    reconciler = Reconciler(billing.store, billing.engine, grace_s=0)
    report = await reconciler.run(apply=False, account_ids=[who.account_id])
    assert not report.keys and not report.drift
    spend_key = keyspace.key_spend_key(who.account_id, who.key_id)
    await redis.delete(spend_key)  # Redis lost the counter
    assert (await billing.store.key_spend(who.account_id, who.key_id, "total")).spent == 0
    report = await reconciler.run(apply=False, account_ids=[who.account_id])
    assert report.keys == [f"{who.key_id} (credit cap, period t: spent 0 held 0 -> spent 60 held {held})"]
    report = await reconciler.run(apply=True, account_ids=[who.account_id])
    assert report.keys and not report.ledger
    spend = await billing.store.key_spend(who.account_id, who.key_id, "total")
    assert (spend.spent, spend.held) == (60, held)
    assert not (await reconciler.run(apply=False, account_ids=[who.account_id])).keys
    # the key record's cap is compared too
    await redis.hset(keyspace.key_record_key(who.account_id, who.key_id), "credit_limit", "")
    report = await reconciler.run(apply=False, account_ids=[who.account_id])
    assert report.keys == [who.key_id]
    await reconciler.run(apply=True, account_ids=[who.account_id])
    record_key = keyspace.key_record_key(who.account_id, who.key_id)
    record = await redis.hmget(record_key, "credit_limit", "credit_period")
    assert record == [b"1000", b"total"]
    assert not (await reconciler.run(apply=False, account_ids=[who.account_id])).keys


async def test_only_the_periods_own_usage_counts(billing: Billing, redis: Redis) -> None:
    """Usage recorded before the period's start counts in total, not in the day."""
    who = await funded(billing, [Pack(10_000)])
    now = await redis_now(redis)
    today = period_start_ms("day", now)
    async with billing.engine.begin() as conn:
        for request_id, finished, charge in ((new_id("old"), today - 1, 500), (new_id("new"), today, 7)):
            await conn.execute(usage_records.insert(), {
                "request_id": request_id, "account_id": who.account_id, "key_id": who.key_id, "model": "m",
                "cluster": "c", "endpoint": "e", "prompt_tokens": 1, "completion_tokens": 1,
                "cached_tokens": 0, "charge": charge, "uncollected": 0, "status": "ok",
                "counted_by": "upstream", "stream": False, "started_at_ms": finished - 5,
                "finished_at_ms": finished, "grants": "", "recorded_at_ms": now,
            })  # fmt: skip
    day = await check_key_spend(billing.store, billing.engine, who.account_id, who.key_id,
                                CreditLimit(1000, "day"), apply=True)  # fmt: skip
    assert (day.spent, day.held, day.drift) == (7, 0, True)
    total = await check_key_spend(billing.store, billing.engine, who.account_id, who.key_id,
                                  CreditLimit(1000, "total"), apply=False)  # fmt: skip
    assert (total.period, total.redis_spent, total.spent) == ("t", 0, 507)

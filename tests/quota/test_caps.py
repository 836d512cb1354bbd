"""Per-key credit caps in the admission and settlement scripts, against real Redis
(standalone and Cluster): refusal with 402 ``key_credit_limit`` while the account's other
keys go on, holds of concurrent admissions, the excess limited by the cap, period rollover,
expiry, and an uncapped key that touches no counter."""

from __future__ import annotations

import asyncio

import pytest

from gateway import keyspace
from gateway.errors import BalanceExhausted
from gateway.quota import QuotaStore
from gateway.quota.caps import KeySpend
from gateway.quota.periods import period_id

from .helpers import admit, new_id, reap_account, redis_ms, settle, settle_charged

# PRICES of helpers: 1 credit per prompt token, 2 per completion token.
# prompt 10 + max_tokens 20 -> a reserve of 50 credits.


async def two_keys(store: QuotaStore, credits: int, cap: int, period: str = "day") -> tuple[str, str, str]:
    """A fresh account holding ``credits``; key A capped at ``cap`` per ``period``, key B free."""
    account, capped, free = new_id("acct"), new_id("key"), new_id("key")
    await store.init_balance(account)
    await store.credit(account, credits)
    await store.set_key_record(account, capped, credit_limit=cap, credit_period=period)
    await store.set_key_record(account, free)
    return account, capped, free


async def spend(store: QuotaStore, account: str, key: str, period: str = "day") -> KeySpend:
    return await store.key_spend(account, key, period)


async def test_a_key_past_its_cap_is_refused_while_another_key_goes_on(store: QuotaStore) -> None:
    account, capped, free = await two_keys(store, 10_000, cap=120)
    first = await admit(store, account, capped, request_id=new_id("r"), max_tokens=20)
    assert first.key_cap and first.reserve == 50
    assert await settle(store, account, capped, first.request_id, 10, 20) == 50
    second = await admit(store, account, capped, max_tokens=20)
    assert second.reserve == 50
    clamped = await admit(store, account, capped, max_tokens=20)  # room 120 - 50 - 50 = 20
    assert (clamped.max_tokens, clamped.reserve, clamped.clamped) == (5, 20, True)
    with pytest.raises(BalanceExhausted) as refused:
        await admit(store, account, capped, max_tokens=20)
    error = refused.value
    assert (error.status, error.code, error.error_type) == (402, "key_credit_limit", "insufficient_quota")
    assert "120 credits per day, 50 spent this day and 70 more are held" in error.message
    assert "needs at least 12" in error.message  # 10 prompt tokens and one completion token
    served = await admit(store, account, free, max_tokens=20)  # the other key: unaffected
    assert served.reserve == 50 and not served.key_cap
    assert await spend(store, account, capped) == KeySpend(
        period_id("day", await redis_ms(store.client)), 50, 70
    )
    assert (await store.balance(account))["reserved"] == 50 + 20 + 50


async def test_the_balance_or_the_cap_whichever_binds_names_the_refusal(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 30, cap=1000)  # the balance binds
    with pytest.raises(BalanceExhausted) as balance:
        await admit(store, account, capped, prompt=40)
    assert balance.value.code == "insufficient_quota"
    account, capped, _ = await two_keys(store, 1000, cap=30, period="total")  # the cap binds
    with pytest.raises(BalanceExhausted) as cap:
        await admit(store, account, capped, prompt=40)
    assert cap.value.code == "key_credit_limit"
    assert "30 credits in total, 0 spent in total" in cap.value.message
    # an embedding (no completion): its prompt alone must fit the room
    with pytest.raises(BalanceExhausted) as embedding:
        await admit(store, account, capped, prompt=31, ceiling=0)
    assert embedding.value.code == "key_credit_limit"
    assert (await admit(store, account, capped, prompt=30, ceiling=0)).reserve == 30


async def test_concurrent_admissions_hold_no_more_than_the_cap(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 100_000, cap=500)

    async def one() -> int | str:
        try:
            return (await admit(store, account, capped, max_tokens=20)).reserve
        except BalanceExhausted as error:
            return str(error.code)

    results = await asyncio.gather(*(one() for _ in range(30)))
    reserves = [r for r in results if isinstance(r, int)]
    assert reserves == [50] * 10 and results.count("key_credit_limit") == 20
    held = await spend(store, account, capped)
    assert (held.spent, held.held) == (0, 500)
    in_flight = await store.reservations(account)
    assert len(in_flight) == 10 and all(r.key_cap for r in in_flight.values())
    charges = await asyncio.gather(*(settle(store, account, capped, rid, 10, 5) for rid in in_flight))
    assert charges == [20] * 10
    after = await spend(store, account, capped)
    assert (after.spent, after.held) == (200, 0)


async def test_the_excess_over_the_reserve_is_limited_by_the_room(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=100, period="total")
    r1 = await admit(store, account, capped, max_tokens=20)
    r2 = await admit(store, account, capped, max_tokens=20)  # holds the other 50
    # r1 actually cost 10 + 2 x 100 = 210: its reserve, and no excess (r2 holds the rest)
    charged = await settle_charged(store, account, capped, r1.request_id, 10, 100)
    assert charged is not None and (charged.charge, charged.uncollected) == (50, 160)
    # r2 too: now r1's hold is gone, but r1 spent its 50: the room is r2's own reserve
    charged = await settle_charged(store, account, capped, r2.request_id, 10, 100)
    assert charged is not None and (charged.charge, charged.uncollected) == (50, 160)
    assert await spend(store, account, capped, "total") == KeySpend("t", 100, 0)
    assert (await store.balance(account))["spent"] == 100  # never more than the cap
    with pytest.raises(BalanceExhausted, match="100 credits in total, 100 spent in total"):
        await admit(store, account, capped, max_tokens=1)


async def test_an_excess_within_the_room_is_charged(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=100)
    r1 = await admit(store, account, capped, max_tokens=10)  # reserve 30
    charged = await settle_charged(store, account, capped, r1.request_id, 10, 40)  # costs 90
    assert charged is not None and (charged.charge, charged.uncollected) == (90, 0)
    assert (await spend(store, account, capped)).spent == 90


async def test_a_new_day_starts_at_zero(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=100)
    spend_key = keyspace.key_spend_key(account, capped)
    done = await admit(store, account, capped, max_tokens=45)  # reserve 100: all of it
    await settle(store, account, capped, done.request_id, 10, 45)
    with pytest.raises(BalanceExhausted, match="key's credit limit"):
        await admit(store, account, capped, max_tokens=1)
    today = (await spend(store, account, capped)).period
    yesterday = f"d{int(today[1:]) - 1}"
    await store.client.hset(spend_key, "period", yesterday)  # what was spent, was spent yesterday
    assert (await spend(store, account, capped)).spent == 0
    again = await admit(store, account, capped, max_tokens=20)
    assert again.reserve == 50
    assert await spend(store, account, capped) == KeySpend(today, 0, 50)


async def test_a_request_admitted_yesterday_counts_in_the_day_it_settles(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=100)
    spend_key = keyspace.key_spend_key(account, capped)
    flying = await admit(store, account, capped, max_tokens=20)  # holds 50
    today = (await spend(store, account, capped)).period
    await store.client.hset(spend_key, mapping={"period": f"d{int(today[1:]) - 1}", "spent": "40"})
    await settle(store, account, capped, flying.request_id, 10, 10)  # costs 30
    assert await spend(store, account, capped) == KeySpend(today, 30, 0)
    assert (await store.client.hget(spend_key, "period")) == today.encode()


async def test_a_new_month_starts_at_zero(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=60, period="month")
    done = await admit(store, account, capped, max_tokens=25)  # reserve 60
    await settle(store, account, capped, done.request_id, 10, 25)
    month = await spend(store, account, capped, "month")
    assert month == KeySpend(period_id("month", await redis_ms(store.client)), 60, 0)
    with pytest.raises(BalanceExhausted, match="60 credits per month, 60 spent this month"):
        await admit(store, account, capped, max_tokens=1)
    last_month = f"m{int(month.period[1:]) - 1}"
    await store.client.hset(keyspace.key_spend_key(account, capped), "period", last_month)
    assert (await admit(store, account, capped, max_tokens=25)).reserve == 60


async def test_an_expired_request_releases_its_hold_and_counts_its_checkpoint(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=200)
    flying = await admit(store, account, capped, max_tokens=20, lease_ms=50)
    assert await store.checkpoint(
        request_id=flying.request_id, account_id=account, key_id=capped, completion_tokens=5, lease_ms=50
    )
    assert (await spend(store, account, capped)).held == 50
    await asyncio.sleep(0.1)
    [event] = await reap_account(store, account)
    assert (event.status, event.charge) == ("expired", 20)  # 10 prompt + 2 x 5
    held = await spend(store, account, capped)
    assert (held.spent, held.held) == (20, 0)


async def test_an_uncapped_key_touches_no_counter(store: QuotaStore) -> None:
    account, _, free = await two_keys(store, 10_000, cap=100)
    done = await admit(store, account, free, max_tokens=20)
    await settle(store, account, free, done.request_id, 10, 20)
    assert not await store.client.exists(keyspace.key_spend_key(account, free))


async def test_a_cap_removed_or_a_key_revoked_in_flight(store: QuotaStore) -> None:
    account, capped, _ = await two_keys(store, 10_000, cap=60)
    spend_key = keyspace.key_spend_key(account, capped)
    flying = await admit(store, account, capped, max_tokens=25)  # all 60
    await store.set_key_record(account, capped)  # the cap removed: the key goes on
    assert not (await admit(store, account, capped, max_tokens=25)).key_cap
    await settle(store, account, capped, flying.request_id, 10, 5)  # its hold released all the same
    assert (await store.client.hget(spend_key, "held")) == b"0"
    flying = await admit(store, account, capped, max_tokens=5)
    await store.set_key_record(account, capped, credit_limit=60, credit_period="day")
    capped_flight = await admit(store, account, capped, max_tokens=5)
    await store.delete_key_record(account, capped)  # revoked: the counter goes with it
    assert not await store.client.exists(spend_key)
    assert await settle(store, account, capped, capped_flight.request_id, 10, 5) == 20  # still billed
    assert await settle(store, account, capped, flying.request_id, 10, 5) == 20
    assert not await store.client.exists(spend_key)  # and is not made again by the settlement


async def test_a_cap_needs_credits_and_a_period(store: QuotaStore) -> None:
    for limit, period in ((0, "day"), (10, "week"), (10, None), (None, "day"), (True, "day")):
        with pytest.raises(ValueError, match="credit cap"):
            await store.set_key_record("acct", "key", credit_limit=limit, credit_period=period)  # type: ignore[arg-type]

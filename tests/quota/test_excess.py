"""Settlement charges the full cost even beyond the reserve (invariant 2), against real Redis.

The part up to the reserve is charged to the grants reserved from; the excess comes from the
account's available credits (live, valid for the model, drawing order), never below zero;
what those cannot pay is ``uncollected`` on the event.
"""

from __future__ import annotations

import asyncio

from gateway import keyspace
from gateway.quota import QuotaStore, cost
from gateway.quota.accounts import new_epoch
from gateway.quota.keys import grants_key
from gateway.quota.scripts import RedisClient
from gateway.quota.store import Charged

from .helpers import (
    account_with,
    admit,
    funded_key,
    reap_account,
    redis_ms,
    settle_charged,
    usage_events,
)


async def grant_figures(store: QuotaStore, account: str) -> dict[str, tuple[int, int, int, int]]:
    """Per grant: (available, reserved, spent, expired)."""
    view = await store.view(account)
    assert all(g.reserved + g.spent <= g.credits for g in view.grants)
    assert all(g.credits == g.available + g.reserved + g.spent + g.expired for g in view.grants)
    return {g.id: (g.available, g.reserved, g.spent, g.expired) for g in view.grants}


async def test_a_well_funded_account_pays_the_full_cost(store: QuotaStore, client: RedisClient) -> None:
    account, key = await funded_key(store, 5000)
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    assert adm.reserve == 20 and cost(500, 900, 1000, 2000) == 2300
    charged = await settle_charged(store, account, key, "r1", prompt=500, completion=900)
    assert charged == Charged(2300, 0)
    bal = await store.balance(account)
    assert bal == {"purchased": 5000, "reserved": 0, "spent": 2300, "expired": 0, "available": 2700}
    [event] = await usage_events(client, account)
    assert (event.prompt_tokens, event.completion_tokens) == (500, 900)
    assert (event.charge, event.uncollected) == (2300, 0)
    assert sum(n for _, n in event.allocation()) == event.charge
    assert event.to_record()["uncollected"] == 0


async def test_odd_prices_round_up_once_over_the_whole_request(store: QuotaStore) -> None:
    account, key = await funded_key(store, 10_000)
    await admit(store, account, key, request_id="r1", prompt=3, max_tokens=2, input_pm=333, output_pm=1001)
    charged = await settle_charged(store, account, key, "r1", prompt=701, completion=999)
    # ceil((701*333 + 999*1001) / 1000) = ceil(1233432 / 1000)
    assert charged == Charged(1234, 0) and cost(701, 999, 333, 1001) == 1234


async def test_the_excess_comes_from_the_reserved_grant_then_in_drawing_order(
    store: QuotaStore, client: RedisClient
) -> None:
    now = await redis_ms(client)
    account, key = await account_with(
        store, ("never", 500, 0, None), ("late", 60, now + 90_000, None), ("soon", 50, now + 60_000, None)
    )
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=10)  # 30
    assert adm.allocation == "soon:30"
    charged = await settle_charged(store, account, key, "r1", prompt=40, completion=50)  # 140
    assert charged == Charged(140, 0)
    [event] = await usage_events(client, account)
    assert event.allocation() == [("soon", 50), ("late", 60), ("never", 30)]
    assert await grant_figures(store, account) == {
        "soon": (0, 0, 50, 0),
        "late": (0, 0, 60, 0),
        "never": (470, 0, 30, 0),
    }


async def test_a_grant_freed_meanwhile_is_drawn_first_and_listed_in_drawing_order(
    store: QuotaStore, client: RedisClient
) -> None:
    now = await redis_ms(client)
    account, key = await account_with(
        store, ("late", 100, now + 90_000, None), ("soon", 30, now + 60_000, None)
    )
    first = await admit(store, account, key, request_id="a", prompt=10, max_tokens=10)
    second = await admit(store, account, key, request_id="b", prompt=10, max_tokens=5)
    assert (first.allocation, second.allocation) == ("soon:30", "late:20")
    assert await settle_charged(store, account, key, "a", prompt=0, completion=0) == Charged(0, 0)
    assert await settle_charged(store, account, key, "b", prompt=30, completion=20) == Charged(70, 0)
    [_, event] = await usage_events(client, account)
    assert event.allocation() == [("soon", 30), ("late", 40)]  # reserved part and excess merged
    assert await grant_figures(store, account) == {"soon": (0, 0, 30, 0), "late": (60, 0, 40, 0)}


async def test_an_exhausted_balance_reaches_zero_and_the_rest_is_uncollected(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 100)
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=20)  # 50
    await admit(store, account, key, request_id="r2", prompt=5, max_tokens=5)  # 15, stays reserved
    charged = await settle_charged(store, account, key, "r1", prompt=50, completion=100)  # 250
    assert charged == Charged(85, 165)
    bal = await store.balance(account)
    assert bal == {"purchased": 100, "reserved": 15, "spent": 85, "expired": 0, "available": 0}
    [event] = await usage_events(client, account)
    [grant] = (await store.view(account)).grants
    assert (event.charge, event.uncollected, event.grants) == (85, 165, f"{grant.id}:85")
    assert event.charge + event.uncollected == cost(50, 100, 1000, 2000)
    # the other request's reservation was never touched: it still settles in full
    assert await settle_charged(store, account, key, "r2", prompt=5, completion=5) == Charged(15, 0)


async def test_grants_for_other_models_and_expired_grants_never_pay_the_excess(
    store: QuotaStore, client: RedisClient
) -> None:
    now = await redis_ms(client)
    account, key = await account_with(
        store,
        ("other", 1000, 0, ["x"]),
        ("lapsed", 1000, now - 1, None),
        ("brief", 100, now + 400, None),
        ("mine", 40, 0, ["m"]),
    )
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=20)  # 50
    assert adm.allocation == "brief:50"
    await asyncio.sleep(max(0, now + 400 - await redis_ms(client)) / 1000 + 0.05)  # brief lapses
    charged = await settle_charged(store, account, key, "r1", prompt=100, completion=100)  # 300
    assert charged == Charged(90, 210)  # the reserve from "brief" (held), the excess from "mine"
    [event] = await usage_events(client, account)
    assert event.allocation() == [("brief", 50), ("mine", 40)]
    assert await grant_figures(store, account) == {
        "lapsed": (0, 0, 0, 1000),
        "brief": (0, 0, 50, 50),
        "mine": (0, 0, 40, 0),
        "other": (1000, 0, 0, 0),
    }


async def test_expiry_charges_a_checkpoint_above_the_reserve_in_full(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await funded_key(store, 1000)
    adm = await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5, lease_ms=30)
    assert adm.reserve == 20
    assert await store.checkpoint(
        request_id="r1", account_id=account, key_id=key, completion_tokens=60, prompt_tokens=12, lease_ms=30
    )
    await asyncio.sleep(0.08)
    [event] = await reap_account(store, account)
    assert (event.status, event.prompt_tokens, event.completion_tokens) == ("expired", 12, 60)
    assert (event.charge, event.uncollected) == (cost(12, 60, 1000, 2000), 0) == (132, 0)
    assert (await store.balance(account))["spent"] == 132


async def test_expiry_beyond_the_balance_leaves_the_rest_uncollected(store: QuotaStore) -> None:
    account, key = await funded_key(store, 60)
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5, lease_ms=30)  # 20
    await store.checkpoint(request_id="r1", account_id=account, key_id=key, completion_tokens=40, lease_ms=30)
    await asyncio.sleep(0.08)
    [event] = await reap_account(store, account)
    assert (event.charge, event.uncollected) == (60, cost(10, 40, 1000, 2000) - 60) == (60, 30)
    assert (await store.balance(account))["available"] == 0


async def test_a_duplicate_settle_changes_nothing(store: QuotaStore, client: RedisClient) -> None:
    account, key = await funded_key(store, 100)
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    results = await asyncio.gather(
        *(settle_charged(store, account, key, "r1", prompt=30, completion=50) for _ in range(4))
    )
    assert sorted(results, key=str) == [Charged(100, 30), None, None, None]
    bal = await store.balance(account)
    events = await usage_events(client, account)
    assert await settle_charged(store, account, key, "r1", prompt=30, completion=50) is None
    assert await store.balance(account) == bal == {
        "purchased": 100, "reserved": 0, "spent": 100, "expired": 0, "available": 0,
    }  # fmt: skip
    assert await usage_events(client, account) == events and len(events) == 1


async def test_a_lost_reservation_pays_the_excess_from_a_rebuilt_balance(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await account_with(store, ("g", 1000, 0, None), ("h", 30, 0, ["x"]))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)  # 20 on g
    for name in (keyspace.balance_key(account), grants_key(account), keyspace.reservations_key(account)):
        await client.delete(name)  # Redis lost the account; a rebuild follows
    await client.hset(keyspace.balance_key(account), "epoch", new_epoch())
    await client.hset(grants_key(account), mapping={"g": "100|0|50|0|", "h": "30|0|0|0|x"})
    charged = await settle_charged(store, account, key, "r1", prompt=40, completion=30)  # 100
    # the 20 remembered (charged to g unreleased: the rebuild never saw it), then the 30 g has
    # free; h is not valid for "m"
    assert charged == Charged(50, 50)
    [event] = await usage_events(client, account)
    assert (event.grants, event.uncollected) == ("g:50", 50)
    assert await grant_figures(store, account) == {"g": (0, 0, 100, 0), "h": (30, 0, 0, 0)}


async def test_a_lost_reservation_without_a_balance_charges_the_reserve_only(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await account_with(store, ("g", 1000, 0, None))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)  # 20
    for name in (keyspace.balance_key(account), grants_key(account), keyspace.reservations_key(account)):
        await client.delete(name)
    charged = await settle_charged(store, account, key, "r1", prompt=40, completion=30)  # 100
    assert charged == Charged(20, 80)
    assert not await client.exists(keyspace.balance_key(account), grants_key(account))
    [event] = await usage_events(client, account)
    assert (event.charge, event.uncollected, event.grants, event.prompt_tokens) == (20, 80, "g:20", 40)


async def test_a_replayed_event_keeps_its_uncollected_and_charges_only_its_grants(
    store: QuotaStore, client: RedisClient
) -> None:
    account, key = await account_with(store, ("g", 100, 0, None))
    stream = keyspace.usage_stream_key(keyspace.shard_of(account))
    await admit(store, account, key, request_id="r1", prompt=10, max_tokens=5)
    assert await settle_charged(store, account, key, "r1", prompt=50, completion=100) == Charged(100, 150)
    [settled] = await usage_events(client, account)
    await client.delete(stream)  # lost before any billing worker read it
    await client.hset(keyspace.balance_key(account), "epoch", new_epoch())  # and rebuilt meanwhile
    await client.hset(grants_key(account), "g", "100|0|0|0|")
    await store.reap(keyspace.shard_of(account))
    assert [await usage_events(client, account)] == [[settled]] and store.journal.replayed == 1
    assert (await store.balance(account))["spent"] == 100  # the allocation, not the uncollected

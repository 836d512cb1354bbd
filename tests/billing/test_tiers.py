"""An account's tier for fair shares: the weight of its best live package, in Redis."""

from __future__ import annotations

from billing.clock import wall_ms
from billing.packages import NewPackage
from billing.reconcile import Reconciler
from billing.service import Billing
from billing.tiers import refresh_tier
from gateway.accounts import KeyLimits

from .helpers import DAY_MS, ManualClock, new_id


async def test_the_best_live_package_sets_the_tier_until_it_ends(
    billing: Billing, clock: ManualClock
) -> None:
    account = await billing.accounts.create_account("t")
    await billing.accounts.create_key(account["id"], "k", KeyLimits())
    store = billing.store
    assert await store.tier(account["id"], clock()) == 1  # nothing bought: weight 1
    basic, _ = await billing.packages.create_package(NewPackage(name="basic", credits=100, valid_days=30))
    gold, _ = await billing.packages.create_package(
        NewPackage(name="gold", credits=100, valid_days=10, weight=3))
    assert gold["weight"] == 3 and basic["weight"] == 1
    await billing.packages.purchase(account["id"], basic["id"], new_id("order"))
    assert await store.tier(account["id"], clock()) == 1
    grant, _ = await billing.packages.purchase(account["id"], gold["id"], new_id("order"))
    assert await store.tier(account["id"], clock()) == 3
    assert await store.tier(account["id"], clock() + 10 * DAY_MS + 1) == 1  # gold has ended by then
    await billing.adjustments.withdrawals.withdraw_grant(grant["id"], new_id("refund"))
    assert await store.tier(account["id"], clock()) == 1  # refunded: back to the basic tier


async def test_reconcile_rebuilds_tiers_redis_lost(billing: Billing, clock: ManualClock) -> None:
    account = await billing.accounts.create_account("t")
    gold, _ = await billing.packages.create_package(NewPackage(name="g", credits=10, valid_days=5, weight=7))
    await billing.packages.purchase(account["id"], gold["id"], new_id("order"))
    await billing.store.set_tier(account["id"], 1, 0)  # as if Redis had lost it
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[account["id"]])
    assert await billing.store.tier(account["id"], wall_ms()) == 7
    assert await refresh_tier(billing.engine, billing.store, account["id"], clock() + 6 * DAY_MS) == 1

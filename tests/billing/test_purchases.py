"""Purchases: idempotent on order_id, SQL first then Redis, repaired by reconcile, never
credited twice."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from billing.db.schema import grants, ledger_entries
from billing.errors import Conflict
from billing.packages import NewPackage
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway import keyspace
from gateway.errors import BalanceExhausted
from gateway.quota.store import QuotaStore

from .helpers import Pack, conserved, funded, ledger_figures, new_id, request

pytestmark = pytest.mark.timeout(60)


async def _count(billing: Billing, order_id: str) -> tuple[int, int]:
    async with billing.engine.connect() as conn:
        n_grants = (
            await conn.execute(select(func.count()).select_from(grants).where(grants.c.order_id == order_id))
        ).scalar()
        n_entries = (
            await conn.execute(
                select(func.count())
                .select_from(ledger_entries)
                .where(ledger_entries.c.id == f"purchase:{order_id}")
            )
        ).scalar()
    return int(n_grants or 0), int(n_entries or 0)


async def test_the_same_order_twice_is_one_grant(billing: Billing) -> None:
    who = await funded(billing, [])
    package, _ = await billing.packages.create_package(NewPackage(name="p", credits=500, valid_days=30))
    order = new_id("order")
    first, created = await billing.packages.purchase(who.account_id, package["id"], order)
    again, created_again = await billing.packages.purchase(who.account_id, package["id"], order)
    assert (created, created_again) == (True, False)
    assert again == first and first["credits"] == first["remaining"] == 500
    assert await _count(billing, order) == (1, 1)
    assert (await billing.store.balance(who.account_id))["purchased"] == 500


async def test_the_same_order_with_other_content_is_a_conflict(billing: Billing) -> None:
    a, b = await funded(billing, []), await funded(billing, [])
    p1, _ = await billing.packages.create_package(NewPackage(name="p", credits=10, valid_days=1))
    p2, _ = await billing.packages.create_package(NewPackage(name="q", credits=20, valid_days=1))
    order = new_id("order")
    await billing.packages.purchase(a.account_id, p1["id"], order)
    for account, package in ((a.account_id, p2["id"]), (b.account_id, p1["id"])):
        with pytest.raises(Conflict) as err:
            await billing.packages.purchase(account, package, order)
        assert err.value.status == 409
    assert (await billing.store.balance(b.account_id))["purchased"] == 0


async def test_concurrent_purchases_of_one_order_credit_once(billing: Billing) -> None:
    who = await funded(billing, [])
    package, _ = await billing.packages.create_package(NewPackage(name="p", credits=300, valid_days=9))
    order = new_id("order")
    results = await asyncio.gather(
        *(billing.packages.purchase(who.account_id, package["id"], order) for _ in range(6))
    )
    assert sorted(created for _, created in results) == [False] * 5 + [True]
    assert len({grant["id"] for grant, _ in results}) == 1
    assert await _count(billing, order) == (1, 1)
    assert (await billing.store.balance(who.account_id))["purchased"] == 300


async def test_the_trial_is_granted_once_per_account(billing: Billing) -> None:
    """However often and concurrently sign-up asks, an account gets the trial package once."""
    trial = await billing.packages.trial_package()
    if trial is None:  # one trial package per ledger: another test may have made it
        trial, _ = await billing.packages.create_package(
            NewPackage(id=new_id("trial"), name="Trial", credits=700, valid_days=7, trial=True))
    who = await funded(billing, [])
    granted = await asyncio.gather(*(billing.packages.grant_trial(who.account_id) for _ in range(5)))
    assert len({g["id"] for g in granted if g is not None}) == 1 and None not in granted
    assert await _count(billing, f"trial:{who.account_id}") == (1, 1)
    assert (await billing.store.balance(who.account_id))["purchased"] == trial["credits"]
    with pytest.raises(Conflict):  # a second trial package cannot exist
        await billing.packages.create_package(
            NewPackage(id=new_id("trial"), name="Again", credits=1, valid_days=1, trial=True))


async def test_packages_are_idempotent_by_id(billing: Billing) -> None:
    pid = new_id("pkg")
    first, created = await billing.packages.create_package(
        NewPackage(id=pid, name="Pro", credits=10**6, valid_days=30, models=["m"], list_price=4900)
    )
    again, created_again = await billing.packages.create_package(
        NewPackage(id=pid, name="Pro", credits=10**6, valid_days=30, models=["m"], list_price=4900)
    )
    assert (created, created_again) == (True, False) and again == first
    with pytest.raises(Conflict):
        await billing.packages.create_package(NewPackage(id=pid, name="Pro", credits=1, valid_days=30))
    assert first in await billing.packages.list_packages()


async def test_a_crash_between_sql_and_redis_is_repaired_once(billing: Billing, redis: Redis) -> None:
    """The grant is committed, Redis never credited (the process died): reconcile applies it;
    the client's retry of the order then changes nothing."""
    who = await funded(billing, [Pack(100)])
    package, _ = await billing.packages.create_package(NewPackage(name="p", credits=1000, valid_days=5))
    order = new_id("order")
    row, created = await billing.packages.record_purchase(who.account_id, package["id"], order)
    assert created  # ... and the process dies before billing.packages.apply(row)
    store = QuotaStore(redis)
    assert (await billing.store.balance(who.account_id))["purchased"] == 100
    with pytest.raises(BalanceExhausted):
        await request(store, who, prompt=150, max_tokens=1)

    reconciler = Reconciler(billing.store, billing.engine, grace_s=0)
    report = await reconciler.run(apply=False, account_ids=[who.account_id])
    assert row.id in " ".join(report.drift[who.account_id])
    assert (await billing.store.balance(who.account_id))["purchased"] == 100  # a dry run
    report = await reconciler.run(apply=True, account_ids=[who.account_id])
    assert report.drift and not report.ledger
    assert (await billing.store.balance(who.account_id))["purchased"] == 1100

    grant, created = await billing.packages.purchase(who.account_id, package["id"], order)
    assert not created and grant["id"] == row.id
    bal = await billing.store.balance(who.account_id)
    assert bal["purchased"] == 1100 and conserved(bal)
    assert (await ledger_figures(billing, who.account_id))["purchased"] == 1100
    assert not (await reconciler.run(apply=False, account_ids=[who.account_id])).drift


async def test_a_purchase_while_redis_lost_the_balance_waits_for_the_rebuild(
    billing: Billing, redis: Redis
) -> None:
    who = await funded(billing, [Pack(10)])
    await redis.delete(keyspace.balance_key(who.account_id))
    package, _ = await billing.packages.create_package(NewPackage(name="p", credits=50, valid_days=5))
    grant, created = await billing.packages.purchase(who.account_id, package["id"], new_id("o"))
    assert created and grant["remaining"] == 50  # recorded; Redis refused to invent a balance
    assert not await redis.exists(keyspace.balance_key(who.account_id))
    await Reconciler(billing.store, billing.engine, grace_s=0).run(apply=True, account_ids=[who.account_id])
    assert (await billing.store.balance(who.account_id))["purchased"] == 60

"""What a request cost beyond what its balance could pay (``uncollected``), from settlement
through the worker to the ledger, the usage routes and the CSV export, on each ledger backend;
it is no debit, so reconcile stays clean."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from billing.api import router
from billing.ledger import record_usage
from billing.reconcile import Reconciler
from billing.service import Billing
from gateway.quota import cost
from gateway.quota.store import QuotaStore
from gateway.usage import UsageEvent

from .helpers import Funded, Pack, conserved, drain, funded, ledger_figures, new_id, request
from .test_worker import append, event_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def admin(billing: Billing) -> AsyncIterator[httpx.AsyncClient]:
    """The admin usage routes in process (the routes gateway/api/admin.py mounts)."""
    app = FastAPI()
    app.include_router(router, prefix="/admin")
    app.state.billing = billing
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


async def overspend(store: QuotaStore, who: Funded) -> UsageEvent:
    """A request whose actual cost (250) is far above its reserve (50) and the balance left."""
    rid = new_id("req")
    await store.admit(
        request_id=rid, account_id=who.account_id, key_id=who.key_id, model="m", prompt_tokens=10,
        max_tokens=20, max_tokens_ceiling=4096, input_pm=1000, output_pm=2000,
    )  # fmt: skip
    event = await store.settle_event(
        request_id=rid, account_id=who.account_id, key_id=who.key_id, prompt_tokens=50,
        completion_tokens=100, status="ok", counted_by="upstream", stream=True, cluster="c",
        endpoint="e",
    )  # fmt: skip
    assert event is not None
    return event


async def test_uncollected_is_recorded_shown_and_exported(
    billing: Billing, redis: Redis, admin: httpx.AsyncClient
) -> None:
    store = QuotaStore(redis)
    who = await funded(billing, [Pack(100)])
    first = await request(store, who, prompt=10, completion=10)  # 30
    assert first is not None and (first.charge, first.uncollected) == (30, 0)
    await asyncio.sleep(0.01)  # newest first: two requests of one millisecond have no order
    event = await overspend(store, who)  # 50 reserved + the 20 left; 180 of 250 uncollected
    assert (event.charge, event.uncollected) == (70, 180) == (70, cost(50, 100, 1000, 2000) - 70)
    await drain(billing, redis)

    page = (await admin.get(f"/admin/accounts/{who.account_id}/usage")).json()["data"]
    assert [(r["request_id"], r["charge"], r["uncollected"]) for r in page] == [
        (event.request_id, 70, 180),
        (first.request_id, 30, 0),
    ]
    assert page[0] == event.to_record()  # the record is the event, field for field
    grouped = await admin.get(f"/admin/accounts/{who.account_id}/usage", params={"group_by": "model"})
    [row] = grouped.json()["data"]
    assert (row["requests"], row["charge"], row["uncollected"]) == (2, 100, 180)
    export = await admin.get("/admin/usage/export", params={"account_id": who.account_id})
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [(r["charge"], r["uncollected"]) for r in rows] == [("70", "180"), ("30", "0")]
    assert list(rows[0]).index("uncollected") == list(rows[0]).index("charge") + 1

    # uncollected moved no credits: the ledger's debits are the charges, and Redis agrees
    ledger = await ledger_figures(billing, who.account_id)
    assert ledger == {"purchased": 100, "available": 0, "reserved": 0, "spent": 100, "expired": 0}
    assert await store.balance(who.account_id) == ledger and conserved(ledger)
    report = await Reconciler(billing.store, billing.engine, grace_s=0).run(
        apply=False, account_ids=[who.account_id]
    )
    assert not report.drift and not report.ledger and not report.keys


async def test_a_repeat_with_other_uncollected_is_a_conflict(billing: Billing) -> None:
    who = await funded(billing, [Pack(1000)])
    event = event_for(who, 5, uncollected=7)
    async with billing.engine.begin() as conn:
        assert (await record_usage(conn, [event], billing.clock())).new == [event.request_id]
    other = dataclasses.replace(event, uncollected=8)
    async with billing.engine.begin() as conn:
        done = await record_usage(conn, [dataclasses.replace(event), other], billing.clock())
    assert (done.new, done.duplicates, done.conflicts) == ([], [event.request_id], [other])


async def test_an_event_written_before_uncollected_existed_records_zero(
    billing: Billing, redis: Redis, admin: httpx.AsyncClient
) -> None:
    who = await funded(billing, [Pack(1000)])
    fields = event_for(who, 9).to_fields()
    del fields["uncollected"]
    await append(redis, fields)
    await drain(billing, redis)
    [record] = (await admin.get(f"/admin/accounts/{who.account_id}/usage")).json()["data"]
    assert (record["charge"], record["uncollected"]) == (9, 0)

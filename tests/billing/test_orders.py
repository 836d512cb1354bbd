"""Orders through the service, on SQLite and PostgreSQL: pending until paid, one grant however
often or concurrently the payment is reported, nothing for a wrong amount, currency or
order, expiry, and the audit log of every change of state."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.audit import audit_page
from billing.db.schema import grants, ledger_entries
from billing.errors import Conflict
from billing.orders import MAX_PENDING, Payment
from billing.packages import NewPackage
from billing.payments.testpay import TestProvider
from billing.service import Billing
from gateway.accounts import KeyLimits
from gateway.errors import NotFound, RateLimited, ServiceUnavailable
from gateway.quota.store import QuotaStore

from .helpers import Funded, ManualClock, conserved, request

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shop(billing: Billing) -> Billing:
    billing.orders.provider = TestProvider("http://control.test")
    return billing


async def _on_sale(billing: Billing, credits: int = 1000, amount: int = 4900, currency: str = "CNY") -> str:
    package, _ = await billing.packages.create_package(
        NewPackage(
            name="Starter",
            credits=credits,
            valid_days=30,
            price={"amount": amount, "currency": currency},
            for_sale=True,
        )
    )
    return package["id"]


async def _account(billing: Billing) -> str:
    account = await billing.accounts.create_account("shop")
    await billing.store.init_balance(account["id"])
    return account["id"]


async def _n(conn: AsyncConnection, order_id: str) -> int:
    """How many grants the order made (each with its purchase entry)."""
    n = await conn.execute(select(func.count()).select_from(grants).where(grants.c.order_id == order_id))
    entries = await conn.execute(
        select(func.count()).select_from(ledger_entries).where(ledger_entries.c.id == f"purchase:{order_id}")
    )
    count = int(n.scalar() or 0)
    assert count == int(entries.scalar() or 0)
    return count


async def test_an_order_is_pending_with_a_checkout_url_until_paid(shop: Billing) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    order = await shop.orders.create(account_id, package_id)
    assert order["status"] == "pending" and (order["amount"], order["currency"]) == (4900, "CNY")
    assert order["checkout_url"] == f"http://control.test/pay/test/{order['id']}"
    assert order["grant_id"] is None and order["paid_at"] is None
    assert (await shop.store.balance(account_id))["purchased"] == 0

    outcome = await shop.orders.pay(Payment(order["id"], 4900, "cny", actor="provider:test"))
    paid = await shop.orders.get(order["id"], account_id=account_id)
    assert (
        outcome == "paid" and paid["status"] == "paid" and paid["grant_id"] and paid["checkout_url"] is None
    )
    balance = await shop.store.balance(account_id)
    assert balance["purchased"] == balance["available"] == 1000 and conserved(balance)


async def test_a_payment_reported_many_times_at_once_grants_once(shop: Billing) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    order = await shop.orders.create(account_id, package_id)
    payment = Payment(order["id"], 4900, "CNY", actor="provider:stripe", payment_ref="pi_1")
    outcomes = await asyncio.gather(*(shop.orders.pay(payment) for _ in range(10)))
    assert sorted(outcomes) == ["already_paid"] * 9 + ["paid"]
    assert await shop.orders.pay(payment) == "already_paid"  # and later again
    async with shop.engine.connect() as conn:
        assert await _n(conn, order["id"]) == 1
    assert (await shop.store.balance(account_id))["purchased"] == 1000
    lines = (await audit_page(shop.engine, target=f"order:{order['id']}"))["data"]
    assert [line["action"] for line in lines] == ["order.paid", "order.created"]


@pytest.mark.parametrize("amount, currency", [(4899, "CNY"), (4900, "USD"), (0, "CNY"), (490000, "cny")])
async def test_a_payment_of_another_amount_or_currency_grants_nothing(
    shop: Billing, amount: int, currency: str
) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    order = await shop.orders.create(account_id, package_id)
    assert (
        await shop.orders.pay(Payment(order["id"], amount, currency, actor="provider:stripe")) == "mismatch"
    )
    assert (await shop.orders.get(order["id"]))["status"] == "pending"
    assert (await shop.store.balance(account_id))["purchased"] == 0
    refused = (await audit_page(shop.engine, target=f"order:{order['id']}", action="payment.refused"))["data"]
    assert refused[0]["detail"]["reason"] == "mismatch" and refused[0]["actor"] == "provider:stripe"


async def test_a_payment_for_an_unknown_order_grants_nothing(shop: Billing) -> None:
    for order_id in ("ord_" + "0" * 24, "", "x" * 500, "bad\x00id"):
        assert (
            await shop.orders.pay(Payment(order_id, 4900, "CNY", actor="provider:stripe")) == "unknown_order"
        )


async def test_only_packages_on_sale_can_be_ordered(shop: Billing) -> None:
    account_id = await _account(shop)
    hidden, _ = await shop.packages.create_package(NewPackage(name="internal", credits=5, valid_days=1))
    for package_id in (hidden["id"], "no-such-package", "adjustment"):
        with pytest.raises(NotFound):
            await shop.orders.create(account_id, package_id)


async def test_without_a_provider_orders_are_refused(billing: Billing) -> None:
    package_id, account_id = await _on_sale(billing), await _account(billing)
    billing.orders.provider = None
    with pytest.raises(ServiceUnavailable) as refused:
        await billing.orders.create(account_id, package_id)
    assert refused.value.code == "payments_unconfigured"


async def test_an_unpaid_order_expires_yet_a_late_payment_still_pays_it(
    shop: Billing, clock: ManualClock
) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    order = await shop.orders.create(account_id, package_id)
    clock.set(clock.now + shop.orders.ttl_ms)
    page = await shop.orders.list(account_id=account_id)
    assert [(o["id"], o["status"], o["checkout_url"]) for o in page["data"]] == [
        (order["id"], "expired", None)
    ]
    assert (await shop.orders.list(account_id=account_id, status="pending"))["data"] == []
    # the customer paid at the last moment: the money was taken, so the order is paid
    assert await shop.orders.pay(Payment(order["id"], 4900, "CNY", actor="provider:stripe")) == "paid"
    assert (await shop.orders.get(order["id"]))["status"] == "paid"
    actions = [
        line["action"] for line in (await audit_page(shop.engine, target=f"order:{order['id']}"))["data"]
    ]
    assert actions == ["order.paid", "order.expired", "order.created"]


async def test_orders_are_the_accounts_own_and_paged_newest_first(shop: Billing, clock: ManualClock) -> None:
    package_id, mine, theirs = await _on_sale(shop), await _account(shop), await _account(shop)
    made = []
    for _ in range(5):
        clock.set(clock.now + 1)
        made.append((await shop.orders.create(mine, package_id))["id"])
    other = await shop.orders.create(theirs, package_id)
    with pytest.raises(NotFound):
        await shop.orders.get(other["id"], account_id=mine)
    first = await shop.orders.list(account_id=mine, limit=3)
    second = await shop.orders.list(account_id=mine, limit=3, cursor=first["next_cursor"])
    assert [o["id"] for o in first["data"] + second["data"]] == made[::-1] and second["next_cursor"] is None


async def test_a_refund_withdraws_what_is_left_of_the_grant_once(shop: Billing) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    key = await shop.accounts.create_key(account_id, "k", KeyLimits())
    order = await shop.orders.create(account_id, package_id)
    assert await shop.orders.pay(Payment(order["id"], 4900, "CNY", actor="provider:test")) == "paid"
    who = Funded(account_id, key["id"], key["key"], [])
    await request(QuotaStore(shop.store.client), who, prompt=100, completion=50)  # 200 credits spent
    refunded = await shop.orders.refund(order["id"], "customer asked")
    assert refunded["status"] == "refunded" and refunded["refunded_at"]
    balance = await shop.store.balance(account_id)
    assert (balance["purchased"], balance["spent"], balance["available"]) == (200, 200, 0) and conserved(
        balance
    )
    assert await shop.orders.refund(order["id"], "again") == refunded  # once
    assert (await shop.store.balance(account_id)) == balance
    line = (await audit_page(shop.engine, target=f"order:{order['id']}", action="order.refunded"))["data"]
    assert [(x["actor"], x["detail"]["credits_withdrawn"], x["detail"]["reason"]) for x in line] == [
        ("admin", 800, "customer asked")
    ]
    # a late copy of the refunded payment grants nothing
    assert await shop.orders.pay(Payment(order["id"], 4900, "CNY", actor="provider:stripe")) == "refunded"
    assert (await shop.store.balance(account_id))["purchased"] == 200


async def test_only_a_paid_order_is_refunded(shop: Billing) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    order = await shop.orders.create(account_id, package_id)
    with pytest.raises(Conflict):
        await shop.orders.refund(order["id"], "not paid")
    with pytest.raises(NotFound):
        await shop.orders.refund("ord_unknown", "no such order")


async def test_an_account_holds_a_bounded_number_of_unpaid_orders(shop: Billing, clock: ManualClock) -> None:
    package_id, account_id = await _on_sale(shop), await _account(shop)
    for _ in range(MAX_PENDING):
        await shop.orders.create(account_id, package_id)
    with pytest.raises(RateLimited) as refused:
        await shop.orders.create(account_id, package_id)
    assert refused.value.code == "too_many_pending_orders"
    clock.set(clock.now + shop.orders.ttl_ms)  # they expire: room again
    assert (await shop.orders.create(account_id, package_id))["status"] == "pending"

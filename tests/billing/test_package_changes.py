"""An admin changes how a package is sold (name, price, on sale, list price, tier weight);
what its grants carry never changes. On both ledgers."""

from __future__ import annotations

import asyncio

import pytest

from billing.packages import NewPackage, PackageChanges
from billing.payments.testpay import TestProvider
from billing.records import Price
from billing.service import Billing
from gateway.contract import BadRequest, NotFound

from .helpers import ManualClock, new_id


async def _on_sale(billing: Billing) -> str:
    price: Price = {"amount": 4900, "currency": "CNY"}
    new = NewPackage(name="Starter", credits=1000, valid_days=30, price=price, for_sale=True)
    package, _ = await billing.packages.create_package(new)
    return package["id"]


async def test_a_package_goes_off_sale_and_back_with_a_new_price(billing: Billing) -> None:
    billing.orders.provider = TestProvider("http://control.test")
    package_id = await _on_sale(billing)
    account = await billing.accounts.create_account("buyer")
    pending = await billing.orders.create(account["id"], package_id)  # placed before the change

    off = await billing.packages.update_package(package_id, PackageChanges(for_sale=False))
    assert off["for_sale"] is False and off["credits"] == 1000
    assert package_id not in {o["id"] for o in await billing.packages.price_list()}
    with pytest.raises(NotFound):
        await billing.orders.create(account["id"], package_id)

    back = await billing.packages.update_package(package_id, PackageChanges(
        for_sale=True, price={"amount": 5900, "currency": "cny"}, name="Starter 2027", list_price=6900))
    assert back["price"] == {"amount": 5900, "currency": "CNY"} and back["name"] == "Starter 2027"
    assert back["list_price"] == 6900
    offers = {o["id"]: o for o in await billing.packages.price_list()}
    assert offers[package_id]["price"]["amount"] == 5900
    order = await billing.orders.create(account["id"], package_id)
    assert order["amount"] == 5900
    assert (await billing.orders.get(pending["id"]))["amount"] == 4900  # an order keeps its price


async def test_a_package_on_sale_keeps_a_price(billing: Billing) -> None:
    package_id = await _on_sale(billing)
    with pytest.raises(BadRequest) as caught:
        await billing.packages.update_package(package_id, PackageChanges(unset_price=True))
    assert caught.value.param == "price"
    await billing.packages.update_package(package_id, PackageChanges(for_sale=False, unset_price=True))
    with pytest.raises(BadRequest):
        await billing.packages.update_package(package_id, PackageChanges(for_sale=True))
    unpriced = (await billing.packages.update_package(package_id, PackageChanges()))
    assert unpriced["price"] is None and unpriced["for_sale"] is False


async def test_racing_changes_never_leave_a_sale_without_a_price(billing: Billing) -> None:
    """One admin takes the price away while another puts the package on sale: one of them is
    refused, whichever order the ledger runs them in."""
    package_id = await _on_sale(billing)
    await billing.packages.update_package(package_id, PackageChanges(for_sale=False))
    results = await asyncio.gather(
        billing.packages.update_package(package_id, PackageChanges(unset_price=True)),
        billing.packages.update_package(package_id, PackageChanges(for_sale=True)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, BadRequest) for r in results) <= 1
    final = next(p for p in await billing.packages.list_packages() if p["id"] == package_id)
    assert not (final["for_sale"] and final["price"] is None)


async def test_a_new_weight_re_tiers_the_holders_at_once(billing: Billing, clock: ManualClock) -> None:
    package, _ = await billing.packages.create_package(NewPackage(name="pro", credits=100, valid_days=30))
    holder = await billing.accounts.create_account("holder")
    await billing.packages.purchase(holder["id"], package["id"], new_id("order"))
    assert await billing.store.tier(holder["id"], clock()) == 1
    changed = await billing.packages.update_package(package["id"], PackageChanges(weight=4))
    assert changed["weight"] == 4
    assert await billing.store.tier(holder["id"], clock()) == 4
    await billing.packages.update_package(package["id"], PackageChanges(weight=1))
    assert await billing.store.tier(holder["id"], clock()) == 1


async def test_an_unknown_package_is_not_found(billing: Billing) -> None:
    with pytest.raises(NotFound):
        await billing.packages.update_package(new_id("pkg"), PackageChanges(name="x"))

"""``/console/buy``: the packages on sale with their prices, one **Buy** form each, and the
organization's orders.

Buying is ``OrderService.create`` for the session's account, exactly as
``POST /v1/me/orders`` does: the browser then goes to the provider's checkout (the test
provider's **Pay** page, or Stripe), and the package is granted only when the payment is
reported, by the one path every provider takes. The package id is the only thing the form
says; the account is always the session's.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.money import display
from billing.users import Session
from control.console.pages import plausible_id, words
from control.console.web import billing_of, form_of, in_organization, redirect, render
from gateway.contract import NotFound, ServiceUnavailable

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]


async def _page(request: Request, session: Session, status: int = 200, error: str | None = None) -> Response:
    billing = billing_of(request)
    assert session.account_id is not None
    offers = await billing.packages.price_list()
    orders = (await billing.orders.list(account_id=session.account_id, limit=20))["data"]
    names = {p["id"]: p["name"] for p in await billing.packages.list_packages()}
    shown: list[dict[str, Any]] = [
        {
            **order,
            "price": display(order["amount"], order["currency"]),
            "package": names.get(order["package_id"]),
        }
        for order in orders
    ]
    return render(
        request,
        "buy.html",
        session=session,
        status=status,
        offers=[{**o, "shown_price": display(o["price"]["amount"], o["price"]["currency"])} for o in offers],
        orders=shown,
        error=error,
    )


@router.get("/buy")
async def buy_page(request: Request, session: SessionDep) -> Response:
    return await _page(request, session)


@router.post("/buy")
async def buy(request: Request, session: SessionDep) -> Response:
    """A pending order for the package, then off to its checkout page."""
    form = await form_of(request, session)
    package_id, t = form.get("package_id", ""), words(request)
    assert session.account_id is not None
    if not plausible_id(package_id):
        return await _page(request, session, 400, t("c_unknown_package"))
    try:
        order = await billing_of(request).orders.create(session.account_id, package_id)
    except NotFound:
        return await _page(request, session, 404, t("c_unknown_package"))
    except ServiceUnavailable:
        return await _page(request, session, 503, t("c_payments_off"))
    if not order["checkout_url"]:
        return await _page(request, session, 503, t("c_payments_off"))
    return redirect(order["checkout_url"])

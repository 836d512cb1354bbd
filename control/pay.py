"""The test provider's checkout page and the page a customer lands on after paying.

``GET /pay/test/{order}`` shows the order and a **Pay** button; pressing it reports the
payment to ``OrderService.pay`` (the path Stripe's webhook takes) and lands on
``GET /pay/orders/{order}``, which shows the order's state (also Stripe's success and cancel
URL). The order id (96 random bits) is the capability: these pages need no login. The test
provider moves no money, so its Pay button works only where the operator chose it
(``TOKENGATE_PAYMENT_PROVIDER=test``) and only for orders it opened.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from billing.money import display
from billing.orders import Payment
from billing.records import Order
from billing.service import Billing
from gateway.contract import NotFound, Settings

router = APIRouter(prefix="/pay", include_in_schema=False)
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}
_STATES = {
    "pending": "Waiting for payment.",
    "paid": "Paid. The credits are in your balance.",
    "expired": "This order expired before it was paid. Place a new order to buy.",
    "refunded": "This order was refunded.",
}


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} · tokengate</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#1f2328}}
.card{{border:1px solid #d0d7de;border-radius:8px;padding:1.5rem}}
dt{{color:#57606a;font-size:.85rem}} dd{{margin:0 0 .8rem 0;font-size:1.1rem}}
button{{font-size:1rem;padding:.6rem 1.6rem;border-radius:6px;border:0;background:#1f6feb;color:#fff;
cursor:pointer}}
.note{{color:#57606a;font-size:.85rem}}
</style></head><body><div class="card">{body}</div></body></html>"""
    return HTMLResponse(page, status_code=status, headers=_HEADERS)


async def _order(request: Request, order_id: str) -> tuple[Billing, Order, str]:
    billing: Billing = request.app.state.billing
    order = await billing.orders.get(order_id)
    package = next(
        (p for p in await billing.packages.list_packages() if p["id"] == order["package_id"]), None
    )
    return billing, order, package["name"] if package else order["package_id"]


def _summary(order: Order, package_name: str) -> str:
    return (
        f"<dl><dt>Order</dt><dd>{html.escape(order['id'])}</dd>"
        f"<dt>Package</dt><dd>{html.escape(package_name)}</dd>"
        f"<dt>Amount</dt><dd>{html.escape(display(order['amount'], order['currency']))}</dd>"
        f'<dt>Status</dt><dd id="status">{html.escape(order["status"])}</dd></dl>'
    )


def _test_payments(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return settings.payment_provider == "test"


@router.get("/test/{order_id}")
async def checkout_page(order_id: str, request: Request) -> Response:
    try:
        _, order, name = await _order(request, order_id)
    except NotFound:
        return _page("Unknown order", "<h1>Unknown order</h1><p>No such order.</p>", 404)
    if not _test_payments(request) or order["provider"] != "test":
        return _page(
            "Not payable here", "<h1>Not payable here</h1><p>This order is not paid on this page.</p>", 404
        )
    if order["status"] != "pending":
        return RedirectResponse(f"/pay/orders/{order['id']}", status_code=303)
    body = (
        f"<h1>Pay for your order</h1>{_summary(order, name)}"
        f'<form method="post" action="/pay/test/{html.escape(order["id"])}">'
        '<button type="submit">Pay</button></form>'
        '<p class="note">Test payments: no money moves. The operator enabled them for trials.</p>'
    )
    return _page("Pay", body)


@router.post("/test/{order_id}")
async def pay_test_order(order_id: str, request: Request) -> Response:
    try:
        billing, order, _ = await _order(request, order_id)
    except NotFound:
        return _page("Unknown order", "<h1>Unknown order</h1><p>No such order.</p>", 404)
    if not _test_payments(request) or order["provider"] != "test":
        return _page("Not payable here", "<h1>Not payable here</h1>", 404)
    if order["status"] == "pending":
        await billing.orders.pay(
            Payment(order["id"], order["amount"], order["currency"], actor="provider:test")
        )
    return RedirectResponse(f"/pay/orders/{order['id']}", status_code=303)


@router.get("/orders/{order_id}")
async def order_page(order_id: str, request: Request) -> Response:
    try:
        _, order, name = await _order(request, order_id)
    except NotFound:
        return _page("Unknown order", "<h1>Unknown order</h1><p>No such order.</p>", 404)
    title = {"paid": "Thank you", "pending": "Payment pending"}.get(order["status"], "Order")
    body = (
        f"<h1>{title}</h1><p>{_STATES[order['status']]}</p>{_summary(order, name)}"
        '<p><a href="/console/overview">Back to the console</a></p>'
    )
    return _page(title, body)

"""Order routes: a customer's own (``/v1/me/orders``, with an API key; control/me.py mounts
them) and the admin's (``/admin/orders``, behind the admin credential; control/admin.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from billing.api import BillingDep, StrictBody, text
from billing.me import CallerDep
from billing.records import Order, OrderPage
from billing.responses import errors

StatusQ = Annotated[Literal["pending", "paid", "expired", "refunded"] | None, Query()]
LimitQ = Annotated[int, Query(ge=1, le=500)]
CursorQ = Annotated[str | None, Query(max_length=400)]


class OrderBody(StrictBody):
    package_id: str = text(64)


class RefundBody(StrictBody):
    reason: str = text(500)


mine = APIRouter()
admin = APIRouter()


@mine.post("", status_code=201, responses=errors(404, 429))
async def create_order(body: OrderBody, who: CallerDep, billing: BillingDep) -> Order:
    """A pending order for a package on sale; pay it at ``checkout_url``."""
    return await billing.orders.create(who[0].account_id, body.package_id)


@mine.get("")
async def my_orders(
    who: CallerDep, billing: BillingDep, status: StatusQ = None, limit: LimitQ = 50, cursor: CursorQ = None
) -> OrderPage:
    return await billing.orders.list(account_id=who[0].account_id, status=status, limit=limit, cursor=cursor)


@mine.get("/{order_id}", responses=errors(404))
async def my_order(order_id: str, who: CallerDep, billing: BillingDep) -> Order:
    return await billing.orders.get(order_id, account_id=who[0].account_id)


@admin.get("")
async def all_orders(
    billing: BillingDep,
    status: StatusQ = None,
    account_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: LimitQ = 50,
    cursor: CursorQ = None,
) -> OrderPage:
    return await billing.orders.list(account_id=account_id, status=status, limit=limit, cursor=cursor)


@admin.get("/{order_id}", responses=errors(404))
async def one_order(order_id: str, billing: BillingDep) -> Order:
    return await billing.orders.get(order_id)


@admin.post("/{order_id}/refund", responses=errors(404, 409))
async def refund_order(order_id: str, body: RefundBody, billing: BillingDep) -> Order:
    """Withdraw what is left of the order's grant and return the payment (Stripe)."""
    return await billing.orders.refund(order_id, body.reason)

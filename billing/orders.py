"""Orders: what a customer asked to buy, from ``pending`` to ``paid`` (or ``expired``), then
perhaps ``refunded``.

Paying an order is one path whatever the provider (:meth:`OrderService.pay`): the amount
and currency must be the order's, and the package is granted as a purchase whose
``order_id`` is the order's id, so however often, concurrently or out of order a payment
is reported, it grants once (``PackageService.record_purchase`` is idempotent on the order
id; the order's own change to ``paid`` is a conditional UPDATE that one report wins).

An order unpaid by ``expires_at`` becomes ``expired`` (swept when orders are read); a
payment reported after that still pays it, since the customer's money was taken.
Every change of state is written to the audit log in the transaction that makes it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing import audit
from billing.clock import Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import orders, packages
from billing.directory import decode_cursor, encode_cursor
from billing.errors import Conflict
from billing.packages import PackageService
from billing.payments import OrderToPay, PaymentProvider, ProviderUnavailable
from billing.records import Order, OrderPage
from gateway.contract import BadRequest, NotFound, RateLimited, ServiceUnavailable

log = logging.getLogger("tokengate.billing")

MAX_ORDERS = 500
MAX_PENDING = 20  # unpaid orders an account may hold at once (each opens a provider checkout)
PaidOutcome = Literal["paid", "already_paid", "refunded", "mismatch", "unknown_order"]
# Withdraws what is left of a grant once per operation id: (grant id, operation id) -> credits.
Withdraw = Callable[[str, str], Awaitable[int]]


def order_of(row: Any) -> Order:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "package_id": row.package_id,
        "status": row.status,
        "amount": int(row.amount),
        "currency": row.currency,
        "provider": row.provider,
        "checkout_url": row.checkout_url if row.status == "pending" else None,
        "created_at": ms_to_iso(row.created_at_ms),
        "expires_at": ms_to_iso(row.expires_at_ms),
        "paid_at": ms_to_iso(row.paid_at_ms) if row.paid_at_ms is not None else None,
        "refunded_at": ms_to_iso(row.refunded_at_ms) if row.refunded_at_ms is not None else None,
        "grant_id": row.grant_id,
    }


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment as a provider reports it, before we believe it."""

    order_id: str
    amount: int
    currency: str
    actor: str  # 'provider:stripe', 'provider:test'
    payment_ref: str | None = None  # the provider's id of the payment, for refunds


class OrderService:
    def __init__(
        self,
        engine: AsyncEngine,
        packages: PackageService,
        provider: PaymentProvider | None,
        *,
        ttl_ms: int = 3_600_000,
        withdraw: Withdraw | None = None,
        clock: Clock = wall_ms,
    ) -> None:
        self.engine = engine
        self.packages = packages
        self.provider = provider
        self.ttl_ms = ttl_ms
        self.withdraw = withdraw
        self.clock = clock

    async def create(self, account_id: str, package_id: str) -> Order:
        """A pending order for a package on sale, with the provider's checkout URL.

        NotFound for a package that is unknown or not on sale; ServiceUnavailable when no
        provider is configured or it cannot open a checkout (the order then stays pending
        without a URL and expires)."""
        if self.provider is None:
            raise ServiceUnavailable(
                "payments are not configured on this platform (TOKENGATE_PAYMENT_PROVIDER)",
                code="payments_unconfigured",
            )
        now = self.clock()
        async with transaction(self.engine) as conn:
            package = (await conn.execute(select(packages).where(packages.c.id == package_id))).first()
            if package is None or not package.for_sale:
                raise NotFound(f"no package {package_id!r} on sale", param="package_id")
            await self._expire_due(conn, account_id=account_id)
            waiting = (
                select(func.count())
                .select_from(orders)
                .where(orders.c.account_id == account_id, orders.c.status == "pending")
            )
            if int((await conn.execute(waiting)).scalar_one()) >= MAX_PENDING:
                raise RateLimited(
                    f"{MAX_PENDING} orders are waiting for payment: pay or let them expire first",
                    code="too_many_pending_orders",
                    headers={"Retry-After": "60"},
                )
            row = {
                "id": "ord_" + secrets.token_hex(12),
                "account_id": account_id,
                "package_id": package_id,
                "amount": int(package.price_amount),
                "currency": package.price_currency,
                "status": "pending",
                "provider": self.provider.name,
                "created_at_ms": now,
                "expires_at_ms": now + self.ttl_ms,
            }
            await conn.execute(orders.insert(), row)
            await audit.record(
                conn,
                at_ms=now,
                actor=f"account:{account_id}",
                action="order.created",
                target=f"order:{row['id']}",
                detail={"package_id": package_id, "amount": row["amount"], "currency": row["currency"]},
            )
        try:
            checkout = await self.provider.checkout(
                OrderToPay(row["id"], package.name, row["amount"], row["currency"], row["expires_at_ms"])
            )
        except ProviderUnavailable as error:
            log.warning("order %s: the payment provider could not open a checkout: %s", row["id"], error)
            raise ServiceUnavailable(
                "the payment provider is unavailable; try again shortly",
                code="payment_provider_unavailable",
                headers={"Retry-After": "5"},
            ) from None
        async with transaction(self.engine) as conn:
            await conn.execute(
                update(orders)
                .where(orders.c.id == row["id"])
                .values(checkout_url=checkout.url, provider_ref=checkout.ref)
            )
            return order_of(await _order(conn, row["id"]))

    async def get(self, order_id: str, account_id: str | None = None) -> Order:
        """One order (of ``account_id`` when given: another account's is NotFound)."""
        async with transaction(self.engine) as conn:
            await self._expire_due(conn, order_id=order_id)
            row = await _order(conn, order_id)
        if row is None or (account_id is not None and row.account_id != account_id):
            raise NotFound(f"no order {order_id!r}")
        return order_of(row)

    async def list(
        self,
        *,
        account_id: str | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> OrderPage:
        """Newest first, paged by an opaque cursor (as the account list)."""
        if not 1 <= limit <= MAX_ORDERS:
            raise BadRequest(f"limit must be between 1 and {MAX_ORDERS}", param="limit")
        c = orders.c
        query = select(orders)
        if account_id is not None:
            query = query.where(c.account_id == account_id)
        if status is not None:
            query = query.where(c.status == status)
        if cursor:
            at, last = decode_cursor(cursor)
            query = query.where(or_(c.created_at_ms < at, and_(c.created_at_ms == at, c.id < last)))
        query = query.order_by(c.created_at_ms.desc(), c.id.desc()).limit(limit + 1)
        async with transaction(self.engine) as conn:
            await self._expire_due(conn, account_id=account_id)
            rows = list(await conn.execute(query))
        more, rows = len(rows) > limit, rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at_ms, rows[-1].id) if more and rows else None
        return {"data": [order_of(r) for r in rows], "next_cursor": next_cursor}

    async def pay(self, payment: Payment) -> PaidOutcome:
        """Grant an order's package once, if the payment is for it, in its amount and currency.

        A mismatch or an unknown order grants nothing and is logged and audited for the
        operator. Safe under any repetition or concurrency: see the module's docstring.
        """
        async with transaction(self.engine) as conn:
            row = await _order(conn, payment.order_id)
        if row is None or (int(row.amount), row.currency.upper()) != (
            payment.amount,
            payment.currency.upper(),
        ):
            outcome: PaidOutcome = "unknown_order" if row is None else "mismatch"
            log.warning(
                "payment refused (%s) for order %.80r: %s %.8r reported by %s",
                outcome,
                payment.order_id,
                payment.amount,
                payment.currency,
                payment.actor,
            )
            detail = {
                "reason": outcome,
                "amount": payment.amount,
                "currency": payment.currency,
                "payment_ref": payment.payment_ref,
            }
            await audit.record_now(
                self.engine,
                at_ms=self.clock(),
                actor=payment.actor,
                action="payment.refused",
                target=f"order:{payment.order_id}",
                detail=detail,
            )
            return outcome
        if row.status == "refunded":
            return "refunded"  # a late copy of the payment that was refunded: nothing more
        grant, _ = await self.packages.record_purchase(row.account_id, row.package_id, row.id)
        now = self.clock()
        async with transaction(self.engine) as conn:
            done = await conn.execute(
                update(orders)
                .where(orders.c.id == row.id, orders.c.status.in_(("pending", "expired")))
                .values(status="paid", paid_at_ms=now, grant_id=grant.id, payment_ref=payment.payment_ref)
            )
            won = done.rowcount == 1
            if won:
                await audit.record(
                    conn,
                    at_ms=now,
                    actor=payment.actor,
                    action="order.paid",
                    target=f"order:{row.id}",
                    detail={"grant_id": grant.id, "was": row.status, "payment_ref": payment.payment_ref},
                )
        await self.packages.apply(grant)  # every report credits Redis again: a no-op once done
        return "paid" if won else "already_paid"

    async def refund(self, order_id: str, reason: str, actor: str = "admin") -> Order:
        """Withdraw what is left of a paid order's grant, return the payment through the
        provider, and mark the order ``refunded``. Idempotent: a refunded order answers as it
        is; a retry after a failure completes what is missing (the withdrawal and the
        provider's refund are each once per order). Conflict unless the order was paid."""
        async with transaction(self.engine) as conn:
            row = await _order(conn, order_id)
        if row is None:
            raise NotFound(f"no order {order_id!r}")
        if row.status == "refunded":
            return order_of(row)
        if row.status != "paid" or row.grant_id is None:
            raise Conflict(f"order {order_id!r} is {row.status}: only a paid order can be refunded")
        if self.withdraw is None:
            raise ServiceUnavailable("refunds are not available here", code="refunds_unavailable")
        withdrawn = await self.withdraw(row.grant_id, f"refund:{row.id}")
        if self.provider is not None and self.provider.name == row.provider:
            try:
                await self.provider.refund(row.id, row.payment_ref, int(row.amount))
            except ProviderUnavailable as error:
                log.warning("order %s: the provider's refund failed (%s); retry the refund", row.id, error)
                raise ServiceUnavailable(
                    "the credits were withdrawn but the payment provider did not refund yet; retry",
                    code="payment_provider_unavailable",
                    headers={"Retry-After": "5"},
                ) from None
        now = self.clock()
        async with transaction(self.engine) as conn:
            done = await conn.execute(
                update(orders)
                .where(orders.c.id == row.id, orders.c.status == "paid")
                .values(status="refunded", refunded_at_ms=now)
            )
            if done.rowcount == 1:
                await audit.record(
                    conn,
                    at_ms=now,
                    actor=actor,
                    action="order.refunded",
                    target=f"order:{row.id}",
                    detail={
                        "reason": reason,
                        "credits_withdrawn": withdrawn,
                        "amount": int(row.amount),
                        "currency": row.currency,
                    },
                )
            return order_of(await _order(conn, row.id))

    async def _expire_due(
        self, conn: AsyncConnection, *, account_id: str | None = None, order_id: str | None = None
    ) -> None:
        """Mark the pending orders past their time ``expired`` (audited by ``system``)."""
        c, now = orders.c, self.clock()
        due = select(c.id).where(c.status == "pending", c.expires_at_ms <= now)
        if account_id is not None:
            due = due.where(c.account_id == account_id)
        if order_id is not None:
            due = due.where(c.id == order_id)
        for (expired_id,) in list(await conn.execute(due.limit(1000))):
            done = await conn.execute(
                update(orders).where(c.id == expired_id, c.status == "pending").values(status="expired")
            )
            if done.rowcount == 1:
                await audit.record(
                    conn, at_ms=now, actor="system", action="order.expired", target=f"order:{expired_id}"
                )


async def _order(conn: AsyncConnection, order_id: str) -> Any:
    if not (0 < len(order_id) <= 64 and order_id.isprintable()):
        return None  # never an id of ours (and PostgreSQL refuses a NUL in text)
    return (await conn.execute(select(orders).where(orders.c.id == order_id))).first()

"""Payment providers behind one small interface: open a checkout for an order, refund it.

A provider never grants anything itself. It reports a payment (a verified webhook, the test
provider's Pay button) to :meth:`billing.orders.OrderService.pay`, the one path that checks
the amount and currency and grants the order's package once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OrderToPay:
    """What a provider needs of an order to open its checkout."""

    id: str
    package_name: str
    amount: int  # integer minor units
    currency: str  # ISO 4217, upper case
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class Checkout:
    url: str  # where the customer's browser goes to pay
    ref: str | None = None  # the provider's id of the checkout (a Stripe Checkout Session)


class PaymentProvider(Protocol):
    name: str

    async def checkout(self, order: OrderToPay) -> Checkout:
        """Open a checkout for the order. Raises ProviderUnavailable when the provider fails."""
        ...

    async def refund(self, order_id: str, payment_ref: str | None, amount: int) -> None:
        """Return the payment of an order (idempotent per order); a no-op where there is none."""
        ...


class ProviderUnavailable(Exception):
    """The provider did not answer or refused; nothing was paid or refunded."""

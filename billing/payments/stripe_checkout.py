"""Stripe Checkout through the official ``stripe`` package: a Checkout Session per order,
and refunds of its PaymentIntent.

The session carries the order id as ``client_reference_id`` (what the webhook matches,
see stripe_webhook.py), the order's amount and currency as one line item, and expires
with the order. Requests are idempotent per order (Stripe's ``Idempotency-Key``), so a
retried checkout or refund never makes a second one. ``TOKENGATE_STRIPE_API_BASE`` points
the client at another address, which the tests use for a local stand-in of Stripe's API.
"""

from __future__ import annotations

from typing import Any

import stripe

from billing.payments import Checkout, OrderToPay, ProviderUnavailable


class StripeProvider:
    name = "stripe"

    def __init__(self, api_key: str, public_url: str, api_base: str | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            http_client=stripe.HTTPXClient(),
            max_network_retries=2,
        )

    async def checkout(self, order: OrderToPay) -> Checkout:
        done = f"{self.public_url}/pay/orders/{order.id}"
        session = await self._create_session(
            {
                "mode": "payment",
                "client_reference_id": order.id,
                "metadata": {"order_id": order.id},
                "line_items": [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": order.currency.lower(),
                            "unit_amount": order.amount,
                            "product_data": {"name": order.package_name},
                        },
                    }
                ],
                "success_url": done,
                "cancel_url": done,
                "expires_at": order.expires_at_ms // 1000,
            },
            order.id,
        )
        if not session.url:
            raise ProviderUnavailable("Stripe answered a checkout session without a URL")
        return Checkout(url=session.url, ref=session.id)

    async def _create_session(self, params: Any, order_id: str) -> stripe.checkout.Session:
        try:
            return await self.client.v1.checkout.sessions.create_async(
                params, {"idempotency_key": f"checkout:{order_id}"}
            )
        except stripe.StripeError as error:
            raise ProviderUnavailable(
                f"Stripe refused the checkout session: {error.user_message or error}"
            ) from None

    async def refund(self, order_id: str, payment_ref: str | None, amount: int) -> None:
        """Refund the order's PaymentIntent in full (once per order)."""
        if not payment_ref:
            raise ProviderUnavailable(f"order {order_id} has no Stripe payment to refund")
        try:
            await self.client.v1.refunds.create_async(
                {"payment_intent": payment_ref, "amount": amount, "metadata": {"order_id": order_id}},
                {"idempotency_key": f"refund:{order_id}"},
            )
        except stripe.StripeError as error:
            raise ProviderUnavailable(f"Stripe refused the refund: {error.user_message or error}") from None

"""The test provider: the order's checkout URL is a page of the control plane whose **Pay**
button reports the payment (control/pay.py). No money moves: for trials, demos and tests
only, so it is enabled only by ``TOKENGATE_PAYMENT_PROVIDER=test`` (the quickstart's default).
"""

from __future__ import annotations

from billing.payments import Checkout, OrderToPay


class TestProvider:
    __test__ = False  # not a pytest test class
    name = "test"

    def __init__(self, public_url: str) -> None:
        self.public_url = public_url.rstrip("/")

    async def checkout(self, order: OrderToPay) -> Checkout:
        return Checkout(url=f"{self.public_url}/pay/test/{order.id}")

    async def refund(self, order_id: str, payment_ref: str | None, amount: int) -> None:
        """Nothing was paid, so nothing goes back."""

"""Stripe's webhooks: the documented signature, and the events that pay an order.

``Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``, each ``v1`` an HMAC-SHA256
with the endpoint's secret of ``"<t>.<raw body>"``; one matching ``v1`` suffices (Stripe
sends several while a secret is rolled). A timestamp more than ``TOLERANCE_S`` away from
now is refused, so a captured delivery cannot be replayed later.
(https://docs.stripe.com/webhooks#verify-manually)
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

from billing.orders import Payment

TOLERANCE_S = 300
PAYING_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


class BadSignature(ValueError):
    """The delivery is not provably Stripe's, or is too old."""


def verify(body: bytes, header: str | None, secret: str, now_s: float) -> None:
    """Raise BadSignature unless ``header`` signs ``body`` with ``secret`` within the tolerance."""
    if not header or len(header) > 4096:
        raise BadSignature("no Stripe-Signature header")
    timestamp, signatures = None, []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value.strip())
    if timestamp is None or not signatures:
        raise BadSignature("Stripe-Signature lacks t= or v1=")
    if abs(now_s - timestamp) > TOLERANCE_S:
        raise BadSignature("the signature's timestamp is outside the tolerance")
    expected = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise BadSignature("no v1 signature matches")


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """A Stripe-Signature header for ``body`` (the stand-in and the tests sign with it)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def payment_of(body: bytes) -> Payment | None:
    """The order payment an event reports, or None for an event that pays nothing
    (another type, an unpaid session, no order reference). Raises ValueError if the
    body is not a Stripe event at all."""
    event = orjson.loads(body)
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ValueError("not a Stripe event")
    if event["type"] not in PAYING_EVENTS:
        return None
    session: Any = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    if not isinstance(session, dict) or session.get("payment_status") != "paid":
        return None
    order_id, amount, currency = (session.get(k) for k in ("client_reference_id", "amount_total", "currency"))
    if not isinstance(order_id, str) or not isinstance(currency, str):
        return None
    if not isinstance(amount, int) or isinstance(amount, bool):
        return None
    intent = session.get("payment_intent")
    return Payment(
        order_id=order_id,
        amount=amount,
        currency=currency,
        actor="provider:stripe",
        payment_ref=intent if isinstance(intent, str) else None,
    )

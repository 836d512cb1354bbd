"""``POST /webhooks/stripe``: Stripe's deliveries, verified before anything is read from them.

The body is read up to ``MAX_BODY`` (413 beyond), the signature checked over the raw bytes
(billing/payments/stripe_webhook.py: 400 when it is missing, wrong or too old), and an event
that pays an order goes to the one payment path (``OrderService.pay``). Stripe retries any
delivery that is not 2xx, so a verified event that pays nothing (another type, an unknown
order, a mismatched amount) is acknowledged with 200 and its outcome; the mismatches are
logged and audited for the operator.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from billing.payments.stripe_webhook import BadSignature, payment_of, verify
from billing.service import Billing
from gateway.contract import BadRequest, NotFound, PayloadTooLarge, Settings

log = logging.getLogger("tokengate.control")
MAX_BODY = 256 * 1024  # Stripe's events are a few KiB
router = APIRouter(prefix="/webhooks")


async def bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes", code="payload_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes", code="payload_too_large")
    return bytes(body)


@router.post("/stripe", include_in_schema=False)
async def stripe_webhook(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    billing: Billing = request.app.state.billing
    secret = settings.stripe_webhook_secret
    if secret is None:
        raise NotFound("Stripe webhooks are not configured here (TOKENGATE_STRIPE_WEBHOOK_SECRET)")
    body = await bounded_body(request, MAX_BODY)
    try:
        verify(body, request.headers.get("stripe-signature"), secret.get_secret_value(), time.time())
    except BadSignature as error:
        log.warning("Stripe webhook refused: %s", error)
        raise BadRequest(f"webhook signature refused: {error}", code="invalid_signature") from None
    try:
        payment = payment_of(body)
    except ValueError:
        raise BadRequest("the body is not a Stripe event", code="invalid_event") from None
    if payment is None:
        return JSONResponse({"received": True, "outcome": "ignored"})
    outcome = await billing.orders.pay(payment)
    return JSONResponse({"received": True, "outcome": outcome})

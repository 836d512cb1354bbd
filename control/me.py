"""Self-service for API keys: ``GET /v1/me`` and ``GET /v1/me/usage``, the key's own account
only, and the public price list ``GET /v1/packages``. The routes live with the ledger they
read (``billing/me.py``); this is their mount.
"""

from __future__ import annotations

from fastapi import APIRouter

from billing import alerts_api, orders_api
from billing.codes_api import redeem_router
from billing.me import prices
from billing.me import router as billing_me
from control.client_address import request_bucket

router = APIRouter()
router.include_router(billing_me, prefix="/v1/me")
router.include_router(redeem_router(request_bucket), prefix="/v1/me")  # POST /v1/me/redeem
router.include_router(prices, prefix="/v1/packages")
router.include_router(orders_api.mine, prefix="/v1/me/orders")
router.include_router(alerts_api.mine, prefix="/v1/me")  # GET/PUT /v1/me/alerts

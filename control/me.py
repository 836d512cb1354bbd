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
from billing.responses import errors
from control.client_address import request_bucket

# The door bounds every body (400, 413); a key's routes check it (401) and validate (422);
# the ledger or Redis may be out of reach (503).
KEY_ERRORS = errors(400, 401, 413, 422, 503)
router = APIRouter()
router.include_router(billing_me, prefix="/v1/me", responses=KEY_ERRORS)
router.include_router(redeem_router(request_bucket), prefix="/v1/me", responses=KEY_ERRORS)  # /redeem
router.include_router(prices, prefix="/v1/packages", responses=errors(400, 413, 503))
router.include_router(orders_api.mine, prefix="/v1/me/orders", responses=KEY_ERRORS)
router.include_router(alerts_api.mine, prefix="/v1/me", responses=KEY_ERRORS)  # GET/PUT /v1/me/alerts

"""Self-service for API keys: ``GET /v1/me`` and ``GET /v1/me/usage``, the key's own account
only, and the public price list ``GET /v1/packages``. The routes live with the ledger they
read (``billing/me.py``); this is their mount.
"""

from __future__ import annotations

from fastapi import APIRouter

from billing.me import prices
from billing.me import router as billing_me

router = APIRouter()
router.include_router(billing_me, prefix="/v1/me")
router.include_router(prices, prefix="/v1/packages")

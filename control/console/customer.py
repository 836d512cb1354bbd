"""The customers' pages of the console, one module each, mounted under ``/console``."""

from __future__ import annotations

from fastapi import APIRouter

from control.console import buy, keys, members, overview, playground, prices, redeem, usage

router = APIRouter()
for module in (overview, buy, redeem, keys, usage, playground, prices, members):
    router.include_router(module.router)

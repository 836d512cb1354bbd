"""Self-service for API keys: ``GET /v1/me`` shows the key's own account and balance only."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.errors import AuthenticationFailed
from gateway.state import GatewayState

router = APIRouter(prefix="/v1/me")


@router.get("")
async def me(request: Request) -> dict[str, Any]:
    state: GatewayState = request.app.state.gateway
    token = request.headers.get("authorization", "").partition(" ")[2].strip() or None
    ref = await state.authenticator.authenticate(token)
    key = await state.accounts.get_key(ref.key_id)
    account = await state.accounts.get_account(ref.account_id)
    if key is None or account is None or key["disabled"]:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    fields = ("id", "name", "prefix", "models", "rpm", "tpm", "max_concurrency")
    return {
        "account": {"id": account["id"], "name": account["name"]},
        "key": {f: key[f] for f in fields},
        "balance": await state.quota.balance(ref.account_id),
        "grants": [],
    }

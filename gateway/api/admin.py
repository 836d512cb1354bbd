"""Admin API (FastAPI), behind ``Authorization: Bearer <admin key>``.

The routes that touch the ledger (accounts, keys, packages, purchases, usage, export) live
with it in ``billing/api.py``; this router mounts them behind the admin credential, beside
the gateway's own (config reload).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from billing.api import router as billing_admin
from gateway.auth import is_admin
from gateway.catalog import CatalogError
from gateway.errors import AuthenticationFailed, BadRequest
from gateway.state import GatewayState
from gateway.tokenizers import TokenizerError


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(gateway_state)]


def require_admin(request: Request, state: StateDep) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    admin_key = state.settings.admin_key
    if not is_admin(token.strip(), admin_key.get_secret_value() if admin_key else None):
        raise AuthenticationFailed("admin credential required", code="invalid_admin_key")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


router.include_router(billing_admin)  # accounts, keys, packages, purchases, usage


@router.post("/config/reload")
async def reload_config(state: StateDep) -> dict[str, Any]:
    """Swap in models.yaml as it is now; a bad file is refused (400) and the old one kept."""
    try:
        catalog = state.reload_catalog()
    except (CatalogError, TokenizerError, OSError) as exc:
        raise BadRequest(f"models.yaml not reloaded, the running catalog is kept: {exc}",
                         code="invalid_config") from None
    return {"models": sorted(catalog.models), "clusters": list(catalog.clusters)}

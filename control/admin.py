"""Admin API (FastAPI), behind ``Authorization: Bearer <admin key>``.

The routes that touch the ledger (accounts, keys, packages, purchases, usage, export) live
with it in ``billing/api.py``; this router mounts them behind the admin credential, beside
the catalog reload (asked of every data-plane worker through Redis) and the lists of
accounts and keys (``billing/directory.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from billing import alerts_api, audit, orders_api
from billing.api import BillingDep
from billing.api import router as billing_admin
from billing.codes_api import admin as codes_admin
from billing.directory import MAX_ACCOUNTS, list_accounts, list_keys
from billing.records import AccountPage, AuditPage, Keys
from billing.responses import errors
from control.api_reference import build_reference
from control.console.web import render
from gateway.contract import (
    AuthenticationFailed,
    BadRequest,
    CatalogError,
    NotFound,
    Settings,
    TokenizerError,
    is_admin,
    load_catalog,
    ops,
)

# Named in the schema, so that its docs say how to authenticate (and offer to).
ADMIN_BEARER = HTTPBearer(scheme_name="adminKey", description="TOKENGATE_ADMIN_KEY", auto_error=False)


def require_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN_BEARER)]
) -> None:
    """The admin credential, checked again behind the admin door (control/guard.py)."""
    token = credentials.credentials.strip() if credentials else ""
    settings: Settings = request.app.state.settings
    admin_key = settings.admin_key
    if not is_admin(token, admin_key.get_secret_value() if admin_key else None):
        raise AuthenticationFailed("admin credential required", code="invalid_admin_key")


# Every admin route: the admin door (400, 401, 413), validation (422), the ledger or Redis (503).
ADMIN_ERRORS = errors(400, 401, 413, 422, 503)
router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)], responses=ADMIN_ERRORS)


router.include_router(billing_admin)  # accounts, keys, packages, purchases, usage
router.include_router(codes_admin)  # redemption codes
router.include_router(orders_api.admin, prefix="/orders")
router.include_router(alerts_api.admin)  # /accounts/{id}/alerts, /metrics



@router.get("/openapi.json", include_in_schema=False)
async def openapi_schema(request: Request) -> JSONResponse:
    """The admin API's OpenAPI schema, for the admin only: it maps the whole control surface."""
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def openapi_docs(request: Request) -> HTMLResponse:
    """The API reference over that schema, rendered here (nothing fetched from elsewhere; in a
    browser, the console's admin pages show the same at /console/admin/api)."""
    return render(request, "api_docs.html", reference=build_reference(request.app.openapi()))


def only_params(*names: str) -> Any:
    """A dependency refusing (400) query parameters other than ``names``."""

    def check(request: Request) -> None:
        for name in request.query_params:
            if name not in names:
                allowed = ", ".join(names) or "none"
                raise BadRequest(f"unknown query parameter {name!r} (allowed: {allowed})", param=name)

    return Depends(check)


@router.get("/accounts", dependencies=[only_params("q", "limit", "cursor")])
async def accounts_list(
    billing: BillingDep,
    q: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ACCOUNTS)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> AccountPage:
    """Accounts, newest first: ``q`` matches a name (case-insensitive substring) or an exact id."""
    return await list_accounts(billing.engine, q, limit, cursor)


@router.get("/accounts/{account_id}/keys", dependencies=[only_params()], responses=errors(404))
async def keys_list(account_id: str, billing: BillingDep) -> Keys:
    """The account's keys that are not revoked, without their secrets."""
    keys = await list_keys(billing.engine, account_id)
    if keys is None:
        raise NotFound(f"no account {account_id!r}")
    return {"data": keys}


@router.get("/audit", dependencies=[only_params("target", "action", "limit", "cursor")])
async def audit_log(
    billing: BillingDep,
    target: Annotated[str | None, Query(max_length=300)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_ENTRIES)] = 100,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> AuditPage:
    """Who changed what, when: admin writes and orders' changes of state, newest first."""
    return await audit.audit_page(billing.engine, target=target, action=action, limit=limit, cursor=cursor)


@router.post("/config/reload")
async def reload_config(request: Request) -> dict[str, Any]:
    """Check models.yaml as it is now, then have every data-plane worker swap it in (within
    a second; each keeps requests in flight on the model they started with). A bad file is
    refused (400) and the running catalog kept."""
    settings: Settings = request.app.state.settings
    try:
        catalog = load_catalog(settings.config_path, tokenizers=True)
    except (CatalogError, TokenizerError, OSError) as exc:
        raise BadRequest(f"models.yaml not reloaded, the running catalog is kept: {exc}",
                         code="invalid_config") from None
    await ops.request_reload(request.app.state.redis)
    return {"models": sorted(catalog.models), "clusters": list(catalog.clusters)}

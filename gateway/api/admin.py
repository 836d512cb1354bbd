"""Admin API (FastAPI): accounts and keys. Needs ``Authorization: Bearer <admin key>``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gateway.accounts import AccountRegistry, KeyLimits
from gateway.auth import is_admin
from gateway.errors import AuthenticationFailed, NotFound
from gateway.state import GatewayState


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewAccount(_Body):
    name: str = Field(min_length=1, max_length=200)


class NewKey(_Body):
    name: str = Field(default="default", min_length=1, max_length=200)
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)


class KeyChanges(_Body):
    models: list[str] | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)
    disabled: bool | None = None


def gateway_state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


StateDep = Annotated[GatewayState, Depends(gateway_state)]


def require_admin(request: Request, state: StateDep) -> None:
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    admin_key = state.settings.admin_key
    if not is_admin(token, admin_key.get_secret_value() if admin_key else None):
        raise AuthenticationFailed("admin credential required", code="invalid_admin_key")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def registry(state: StateDep) -> AccountRegistry:
    return state.accounts


RegistryDep = Annotated[AccountRegistry, Depends(registry)]


@router.post("/accounts", status_code=201)
async def create_account(body: NewAccount, accounts: RegistryDep) -> dict[str, Any]:
    return await accounts.create_account(body.name)


@router.get("/accounts/{account_id}")
async def get_account(account_id: str, state: StateDep) -> dict[str, Any]:
    account = await state.accounts.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    balance = await state.quota.balance(account_id)
    return {**account, "balance": balance, "grants": []}


@router.post("/accounts/{account_id}/keys", status_code=201)
async def create_key(account_id: str, body: NewKey, accounts: RegistryDep) -> dict[str, Any]:
    if await accounts.get_account(account_id) is None:
        raise NotFound(f"no account {account_id!r}")
    limits = KeyLimits(body.models, body.rpm, body.tpm, body.max_concurrency)
    return await accounts.create_key(account_id, body.name, limits)


@router.patch("/keys/{key_id}")
async def update_key(key_id: str, body: KeyChanges, state: StateDep) -> dict[str, Any]:
    key = await state.accounts.update_key(key_id, body.model_dump(exclude_unset=True))
    if key is None:
        raise NotFound(f"no key {key_id!r}")
    state.authenticator.forget(key_id)
    return key


@router.delete("/keys/{key_id}", status_code=204)
async def delete_key(key_id: str, state: StateDep) -> Response:
    if not await state.accounts.delete_key(key_id):
        raise NotFound(f"no key {key_id!r}")
    state.authenticator.forget(key_id)
    return Response(status_code=204)


@router.post("/config/reload")
async def reload_config(state: StateDep) -> dict[str, Any]:
    catalog = state.reload_catalog()
    return {"models": sorted(catalog.models), "clusters": list(catalog.clusters)}

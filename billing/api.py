"""The admin routes that touch the ledger (control/admin.py mounts them under /admin,
behind the admin credential). Thin: parse, call billing, map the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from billing.balances import account_balance
from billing.packages import MAX_WEIGHT, NewPackage, PackageChanges
from billing.records import (
    Account,
    AccountView,
    Adjustment,
    AdjustmentPage,
    ApiKey,
    Grant,
    IssuedKey,
    Package,
    Packages,
    UsagePage,
)
from billing.responses import csv_answer, errors
from billing.service import Billing
from billing.usage_query import UsageQuery, export_csv, usage_page
from gateway.contract import BadRequest, CreditLimit, KeyLimits, NotFound, iso_to_ms, key_authenticator

# The largest count or amount a body may carry: the ledger stores BIGINT and Redis's Lua
# counts in doubles (exact to 2**53), so a bigger number would fail there (a 500), not here.
MAX_AMOUNT = 2**50
# PostgreSQL's text holds no NUL character: a string with one would fail the ledger's
# statement (a 500), so every string field refuses it (a 422 naming it) and the schema says so.
NO_NUL = r"^[^\x00]*$"


def text(max_length: int = 200, **kwargs: Any) -> Any:
    """A string field: not empty, at most ``max_length`` characters, no NUL."""
    return Field(min_length=1, max_length=max_length, pattern=NO_NUL, **kwargs)


Name = text()
Ident = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
Models = Field(default=None, min_length=1)
Limit = Field(default=None, ge=1, le=MAX_AMOUNT)


class StrictBody(BaseModel):
    """The one base of every admin, self-service and commerce body (unknown fields refused)."""

    # strict: "rpm": "5" is refused, not read as 5 (a JSON client sending a string has a bug)
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any) -> Any:
        """5.0 is 5: JSON has one number type, and the schema's ``integer`` (JSON Schema's)
        includes it, so a client that writes it so is not refused; 5.5 still is."""
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value



class NewAccount(StrictBody):
    name: str = Name


class CreditLimitBody(StrictBody):
    credits: int = Field(ge=1, le=MAX_AMOUNT, description="at most this many credits per period")
    period: Literal["day", "month", "total"] = Field(description="UTC calendar day or month, or ever")

    def cap(self) -> CreditLimit:
        return CreditLimit(self.credits, self.period)


class NewKey(StrictBody):
    name: str = text(default="default")
    models: list[Annotated[str, Field(min_length=1, pattern=r"^[^,|\x00]+$")]] | None = Models
    rpm: int | None = Limit
    tpm: int | None = Limit
    max_concurrency: int | None = Limit
    credit_limit: CreditLimitBody | None = None


class KeyChanges(StrictBody):
    models: list[Annotated[str, Field(min_length=1, pattern=r"^[^,|\x00]+$")]] | None = Models
    rpm: int | None = Limit
    tpm: int | None = Limit
    max_concurrency: int | None = Limit
    disabled: bool | None = None
    credit_limit: CreditLimitBody | None = Field(default=None, description="null removes the cap")


class PriceBody(StrictBody):
    amount: int = Field(ge=0, le=MAX_AMOUNT, description="integer minor units of the currency (cents, fen)")
    currency: str = Field(pattern=r"^[A-Za-z]{3}$", description="ISO 4217 code, e.g. CNY or USD")


class PackageBody(StrictBody):
    id: str | None = Ident
    name: str = Name
    credits: int = Field(ge=1, le=MAX_AMOUNT)
    valid_days: int = Field(ge=1, le=36_500)
    models: list[Annotated[str, Field(min_length=1, pattern=r"^[^,|\x00]+$")]] | None = Models
    list_price: int | None = Field(default=None, ge=0, le=MAX_AMOUNT)
    price: PriceBody | None = None
    for_sale: bool = False
    trial: bool = False
    weight: int = Field(default=1, ge=1, le=MAX_WEIGHT,
                        description="its tier in fair shares: turns at a model at capacity go by the "
                                    "weight of the account's best live package")


class PackageChangesBody(StrictBody):
    """How a package is sold and shown; what it grants is fixed (make a new package for that)."""

    name: str | None = text(default=None)
    price: PriceBody | None = Field(default=None, description="null removes the price (off sale only)")
    for_sale: bool | None = None
    list_price: int | None = Field(default=None, ge=0, le=MAX_AMOUNT, description="null removes it")
    weight: int | None = Field(default=None, ge=1, le=MAX_WEIGHT,
                               description="a new tier for the accounts holding it, at once")


class PurchaseBody(StrictBody):
    package_id: str = text(64)
    order_id: str = text()


class AdjustmentBody(StrictBody):
    credits: int = Field(ge=-MAX_AMOUNT, le=MAX_AMOUNT, description="non-zero; negative: a debit")
    reason: str = text(500)
    idempotency_key: str = text()


def billing_of(request: Request) -> Billing:
    billing: Billing = request.app.state.billing
    return billing


BillingDep = Annotated[Billing, Depends(billing_of)]
router = APIRouter()


@router.post("/accounts", status_code=201)
async def create_account(body: NewAccount, billing: BillingDep) -> Account:
    return await billing.accounts.create_account(body.name)


@router.get("/accounts/{account_id}", responses=errors(404))
async def get_account(account_id: str, billing: BillingDep) -> AccountView:
    account = await billing.accounts.get_account(account_id)
    if account is None:
        raise NotFound(f"no account {account_id!r}")
    view = await account_balance(
        billing.engine, billing.store, account_id, ledger_fallback=True, clock=billing.clock
    )
    return {**account, **view}


@router.post("/accounts/{account_id}/keys", status_code=201, responses=errors(404))
async def create_key(account_id: str, body: NewKey, billing: BillingDep) -> IssuedKey:
    cap = body.credit_limit.cap() if body.credit_limit else None
    limits = KeyLimits(body.models, body.rpm, body.tpm, body.max_concurrency, credit_limit=cap)
    return await billing.accounts.create_key(account_id, body.name, limits)


@router.patch("/keys/{key_id}", responses=errors(404))
async def update_key(key_id: str, body: KeyChanges, request: Request, billing: BillingDep) -> ApiKey:
    changes = body.model_dump(exclude_unset=True)
    if changes.get("disabled", False) is None:
        raise BadRequest("disabled must be true or false", param="disabled")
    if "credit_limit" in changes:  # null: no cap any more
        changes["credit_limit"] = body.credit_limit.cap() if body.credit_limit else None
    key = await billing.accounts.update_key(key_id, changes)
    if key is None:
        raise NotFound(f"no key {key_id!r}")
    key_authenticator(request.app.state).forget(key_id)
    return key


@router.delete("/keys/{key_id}", status_code=204, responses=errors(404))
async def delete_key(key_id: str, request: Request, billing: BillingDep) -> Response:
    if not await billing.accounts.revoke_key(key_id):
        raise NotFound(f"no key {key_id!r}")
    key_authenticator(request.app.state).forget(key_id)
    return Response(status_code=204)


@router.post("/packages", status_code=201, response_model=Package,
             responses={200: {"model": Package, "description": "The same package existed already"},
                        **errors(409)})
async def create_package(body: PackageBody, billing: BillingDep) -> JSONResponse:
    package, created = await billing.packages.create_package(NewPackage(**body.model_dump()))
    return JSONResponse(package, status_code=201 if created else 200)


@router.patch("/packages/{package_id}", responses=errors(404))
async def update_package(package_id: str, body: PackageChangesBody, billing: BillingDep) -> Package:
    """Change how a package is sold (its name, price, whether it is on sale, its list price
    and tier weight). Credits, valid days, models and the trial mark are what its grants
    carry, so they never change: create a new package and take this one off sale."""
    given = body.model_dump(exclude_unset=True)
    for name in ("name", "for_sale", "weight"):
        if name in given and given[name] is None:
            raise BadRequest(f"{name} cannot be null", param=name)
    changes = PackageChanges(
        name=body.name,
        price=body.price.model_dump() if body.price else None,  # type: ignore[arg-type]
        for_sale=body.for_sale,
        list_price=body.list_price,
        weight=body.weight,
        unset_price="price" in given and body.price is None,
        unset_list_price="list_price" in given and body.list_price is None,
    )
    return await billing.packages.update_package(package_id, changes)


@router.get("/packages")
async def list_packages(billing: BillingDep) -> Packages:
    return {"data": await billing.packages.list_packages()}


@router.post("/accounts/{account_id}/purchases", status_code=201, response_model=Grant,
             responses={200: {"model": Grant, "description": "The same order was granted already"},
                        **errors(404, 409)})
async def purchase(account_id: str, body: PurchaseBody, billing: BillingDep) -> JSONResponse:
    grant, created = await billing.packages.purchase(account_id, body.package_id, body.order_id)
    return JSONResponse(grant, status_code=201 if created else 200)


@router.post("/accounts/{account_id}/adjustments", status_code=201, response_model=Adjustment,
             responses={200: {"model": Adjustment, "description": "The same adjustment was made already"},
                        **errors(404, 409)})
async def adjust(account_id: str, body: AdjustmentBody, billing: BillingDep) -> JSONResponse:
    """Credit (+) or debit (-) an account once per idempotency key: 201 the adjustment, 200
    when the key was used before with the same content, 409 with other content or for a
    debit past the available balance (``insufficient_balance``; nothing changes)."""
    if body.credits == 0:
        raise BadRequest("credits must not be 0", param="credits")
    adjustment, created = await billing.adjustments.adjust(
        account_id, body.credits, body.reason, body.idempotency_key
    )
    return JSONResponse(adjustment, status_code=201 if created else 200)


@router.get("/accounts/{account_id}/adjustments", responses=errors(404))
async def list_adjustments(
    account_id: str, billing: BillingDep, limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> AdjustmentPage:
    """The account's adjustments, newest first."""
    return await billing.adjustments.list_adjustments(account_id, limit, cursor)


def usage_query(
    account_id: str | None,
    start: str | None,
    end: str | None,
    group_by: str | None,
    limit: int,
    cursor: str | None,
) -> UsageQuery:
    """The query of a usage route (``from``/``to``: ISO 8601 times or dates, ``to`` excluded)."""
    try:
        from_ms = iso_to_ms(start) if start else None
        to_ms = iso_to_ms(end) if end else None
    except ValueError:
        raise BadRequest("from and to are ISO 8601 dates or times", param="from") from None
    groups = tuple(dict.fromkeys(g.strip() for g in (group_by or "").split(",") if g.strip()))  # once each
    return UsageQuery(account_id, from_ms, to_ms, groups, limit, cursor)


FromQ = Annotated[str | None, Query(alias="from")]
ToQ = Annotated[str | None, Query(alias="to")]
LimitQ = Annotated[int, Query(ge=1, le=1000)]


@router.get("/accounts/{account_id}/usage", responses=errors(404))
async def account_usage(
    account_id: str,
    billing: BillingDep,
    start: FromQ = None,
    end: ToQ = None,
    group_by: str | None = None,
    limit: LimitQ = 100,
    cursor: str | None = None,
) -> UsagePage:
    if await billing.accounts.get_account(account_id) is None:
        raise NotFound(f"no account {account_id!r}")
    query = usage_query(account_id, start, end, group_by, limit, cursor)
    return await usage_page(billing.engine, query)


@router.get("/usage/export", response_class=StreamingResponse,
            responses=csv_answer("A header line, then one line per usage record, newest first"))
async def export_usage(
    billing: BillingDep,
    format: str = "csv",
    account_id: str | None = None,
    start: FromQ = None,
    end: ToQ = None,
) -> StreamingResponse:
    if format != "csv":
        raise BadRequest("the export format is csv", param="format")
    query = usage_query(account_id, start, end, None, 100, None)
    rows: AsyncIterator[bytes] = export_csv(billing.engine, query)
    return StreamingResponse(
        rows, media_type="text/csv", headers={"Content-Disposition": 'attachment; filename="usage.csv"'}
    )

"""Self-service with an API key (control/me.py mounts it at /v1/me): the key's own
account only. No route takes an account id: the account is the key's, always. Beside it,
the one public route, the price list (``GET /v1/packages``, no key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from billing.api import FromQ, LimitQ, ToQ, usage_query
from billing.balances import account_balance
from billing.records import ApiKey, Me, Offers, UsagePage
from billing.service import Billing
from billing.usage_query import usage_page
from gateway.contract import AuthenticationFailed, KeyRef, key_authenticator


def _billing(request: Request) -> Billing:
    billing: Billing = request.app.state.billing
    return billing


BillingDep = Annotated[Billing, Depends(_billing)]


def client_bucket(request: Request) -> str:
    """The client's address as limits per address count it. Which proxies to believe is the
    serving app's to say (the control plane sets ``app.state.client_bucket``); billing does
    not know its deployment."""
    bucket_of: Callable[[Request], str] = request.app.state.client_bucket
    return bucket_of(request)


# Named in the schema, so that its docs say how to authenticate (and offer to).
KEY_BEARER = HTTPBearer(scheme_name="apiKey", description="an API key (tg-...)", auto_error=False)


async def caller(
    request: Request,
    billing: BillingDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(KEY_BEARER)],
) -> tuple[KeyRef, ApiKey]:
    """The key presented (``Authorization: Bearer tg-...``) and its record, if it is live.
    Failed keys are limited per client address with the data plane's limit, so ``/v1/me``
    is no way around it (through the data plane or straight to the control plane)."""
    token = credentials.credentials.strip() if credentials else None
    ref: KeyRef = await key_authenticator(request.app.state).authenticate(
        token, address=client_bucket(request))
    key = await billing.accounts.get_key(ref.key_id)  # the ledger: not revoked, not disabled
    if key is None or key["disabled"] or key["account_id"] != ref.account_id:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    return ref, key


CallerDep = Annotated[tuple[KeyRef, ApiKey], Depends(caller)]
router = APIRouter()
prices = APIRouter()


@prices.get("")
async def price_list(billing: BillingDep) -> Offers:
    """The packages on sale with their prices: public, so a team can compare before it signs up."""
    return {"data": await billing.packages.price_list()}


@router.get("")
async def me(who: CallerDep, billing: BillingDep) -> Me:
    ref, key = who
    account = await billing.accounts.get_account(ref.account_id)
    if account is None:
        raise AuthenticationFailed("invalid API key", code="invalid_api_key")
    view = await account_balance(billing.engine, billing.store, ref.account_id, clock=billing.clock)
    cap, spent = key["credit_limit"], None
    if cap is not None:  # what the key spent in its cap's period, by Redis time (as admission counts)
        spent = (await billing.store.key_spend(ref.account_id, key["id"], cap["period"])).spent
    return {
        "account": {"id": account["id"], "name": account["name"]},
        "key": {"id": key["id"], "name": key["name"], "prefix": key["prefix"], "models": key["models"],
                "rpm": key["rpm"], "tpm": key["tpm"], "max_concurrency": key["max_concurrency"],
                "credit_limit": cap, "spent_in_period": spent},
        "balance": view["balance"],
        "grants": view["grants"],
    }


@router.get("/usage")
async def my_usage(
    who: CallerDep,
    billing: BillingDep,
    start: FromQ = None,
    end: ToQ = None,
    group_by: str | None = None,
    limit: LimitQ = 100,
    cursor: str | None = None,
) -> UsagePage:
    query = usage_query(who[0].account_id, start, end, group_by, limit, cursor)
    return await usage_page(billing.engine, query)

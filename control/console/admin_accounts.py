"""Admin pages of accounts: search and list, one account (balance, grants, keys, orders,
adjustments), credit adjustments and disabling.

An adjustment's form carries an idempotency key generated with the page, so a form posted
twice (a double click, a reload) applies once: the second post finds the same adjustment.
Disabling an account disables each of its keys through ``AccountService.update_key``, as
``PATCH /admin/keys/{id}`` does, so the data plane refuses them at once.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from billing.balances import account_balance
from billing.directory import list_accounts, list_keys
from billing.records import ApiKey
from control.console.admin_common import AdminSession, actor, audited, not_found, plain_id, text, whole, words
from control.console.web import billing_of, form_of, redirect, render
from gateway.contract import BadRequest, GatewayError, key_authenticator

router = APIRouter()
MAX_CREDITS = 2**50
DONE = {
    "adjusted": "adm_adjusted",
    "again": "adm_adjust_once",
    "disabled": "adm_disabled_now",
    "enabled": "adm_enabled_now",
}


def key_state(keys: list[ApiKey]) -> str:
    """``disabled`` when every key is off, ``no_keys`` without keys, else ``active``."""
    if not keys:
        return "no_keys"
    return "disabled" if all(k["disabled"] for k in keys) else "active"


@router.get("/accounts")
async def accounts_page(request: Request, session: AdminSession) -> Response:
    q = request.query_params.get("q", "")
    cursor = request.query_params.get("cursor") or None
    errors: dict[str, str] = {}
    try:
        page = await list_accounts(billing_of(request).engine, q or None, 50, cursor)
    except BadRequest as error:
        errors[error.param or "q"] = error.message
        page = {"data": [], "next_cursor": None}
    return render(
        request,
        "admin/accounts.html",
        session=session,
        q=q,
        page=page,
        errors=errors,
        status=400 if errors else 200,
    )


async def account_context(request: Request, account_id: str) -> dict[str, Any] | None:
    """Everything the account page shows; None for an unknown account."""
    billing = billing_of(request)
    if not plain_id(account_id):
        return None
    account = await billing.accounts.get_account(account_id)
    keys = await list_keys(billing.engine, account_id)
    if account is None or keys is None:
        return None
    try:
        balance: Any = await account_balance(
            billing.engine, billing.store, account_id, ledger_fallback=True, clock=billing.clock
        )
    except GatewayError:
        balance = None  # Redis unreachable: the rest of the page still helps
    orders = await billing.orders.list(account_id=account_id, limit=20)
    adjustments = await billing.adjustments.list_adjustments(account_id, 20)
    return {
        "account": account,
        "balance": balance,
        "keys": keys,
        "state": key_state(keys),
        "orders": orders["data"],
        "adjustments": adjustments["data"],
        "idempotency_key": secrets.token_urlsafe(18),
    }


async def _account_page(
    request: Request, session: AdminSession, account_id: str, *, status: int = 200, **extra: Any
) -> Response:
    context = await account_context(request, account_id)
    if context is None:
        return not_found(request, session)
    done = DONE.get(request.query_params.get("done", ""))
    credits = request.query_params.get("credits", "")
    credits = credits if credits.lstrip("-").isdigit() and len(credits) <= 17 else ""
    notice = words(request, done, credits=credits) if done else None
    context = {"errors": {}, "values": {}, "notice": notice, **context, **extra}
    return render(request, "admin/account.html", session=session, status=status, **context)


@router.get("/accounts/{account_id}")
async def account_page(request: Request, account_id: str, session: AdminSession) -> Response:
    return await _account_page(request, session, account_id)


@router.post("/accounts/{account_id}/adjust")
async def adjust(request: Request, account_id: str, session: AdminSession) -> Response:
    form = await form_of(request, session)
    if not plain_id(account_id):
        return not_found(request, session)
    errors: dict[str, str] = {}
    credits = whole(request, form, "credits", errors, low=-MAX_CREDITS, high=MAX_CREDITS)
    if credits == 0:
        errors["credits"] = words(request, "adm_nonzero")
    reason = text(request, form, "reason", errors, 500)
    key = form.get("idempotency_key", "")
    if not 0 < len(key) <= 200 or not key.isprintable():
        errors["form"] = words(request, "csrf_failed")
    values = {"credits": form.get("credits", ""), "reason": form.get("reason", "")}
    if errors or credits is None:
        return await _account_page(request, session, account_id, status=400, errors=errors, values=values)
    billing = billing_of(request)
    try:
        adjustment, created = await billing.adjustments.adjust(
            account_id, credits, reason, key, actor=actor(session)
        )
    except GatewayError as error:
        await audited(
            request,
            session,
            "console.adjustment",
            f"account:{account_id}",
            {"credits": credits, "reason": reason, "idempotency_key": key, "error": error.message},
        )
        if error.status == 404:
            return not_found(request, session)
        message = words(request, "adm_service_error", message=error.message)
        return await _account_page(
            request,
            session,
            account_id,
            status=error.status if error.status < 500 else 503,
            errors={"form": message},
            values=values,
        )
    await audited(
        request,
        session,
        "console.adjustment",
        f"account:{account_id}",
        {
            "credits": credits,
            "reason": reason,
            "idempotency_key": key,
            "adjustment_id": adjustment["id"],
            "created": created,
        },
    )
    done = "adjusted" if created else "again"
    return redirect(f"/console/admin/accounts/{account_id}?done={done}&credits={credits}")


async def _set_disabled(request: Request, account_id: str, session: AdminSession, disabled: bool) -> Response:
    await form_of(request, session)
    billing = billing_of(request)
    keys = await list_keys(billing.engine, account_id) if plain_id(account_id) else None
    if keys is None:
        return not_found(request, session)
    changed = []
    for key in keys:
        if await billing.accounts.update_key(key["id"], {"disabled": disabled}) is not None:
            key_authenticator(request.app.state).forget(key["id"])
            changed.append(key["id"])
    action = "console.account.disable" if disabled else "console.account.enable"
    await audited(request, session, action, f"account:{account_id}", {"keys": changed})
    return redirect(f"/console/admin/accounts/{account_id}?done={'disabled' if disabled else 'enabled'}")


@router.post("/accounts/{account_id}/disable")
async def disable(request: Request, account_id: str, session: AdminSession) -> Response:
    return await _set_disabled(request, account_id, session, True)


@router.post("/accounts/{account_id}/enable")
async def enable(request: Request, account_id: str, session: AdminSession) -> Response:
    return await _set_disabled(request, account_id, session, False)

"""``/console/overview``: the organization's available credits, its grants with their expiry,
what it spent this month, and a banner when the balance runs low or credits expire soon.

The balance is the one ``/v1/me`` shows (Redis, reservations included; the ledger's figures
when Redis lost it). "Low" is the account's own alert threshold when it set one (the alert
settings of ``/v1/me/alerts``), else under a tenth of what it ever purchased.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from billing.alert_settings import read_settings
from billing.balances import account_balance
from billing.clock import DAY_MS
from billing.records import GrantBalance, Totals, UsageGroup
from billing.usage_query import UsageQuery, usage_page
from billing.users import Session
from control.console.pages import words
from control.console.web import billing_of, in_organization, render
from gateway.contract import iso_to_ms

router = APIRouter()
EXPIRY_WARNING_MS = 7 * DAY_MS


def month_start_ms(now_ms: int) -> int:
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    return int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)


def is_low(totals: Totals, threshold: int | None) -> bool:
    """Below the account's alert threshold, or (none set) under 10% of what it purchased."""
    if threshold is not None:
        return totals["available"] < threshold
    return totals["purchased"] > 0 and totals["available"] * 10 < totals["purchased"]


def expiring(grants: list[GrantBalance], now_ms: int) -> list[dict[str, Any]]:
    """Grants with credits left that expire within seven days: (credits, UTC date)."""
    soon = []
    for grant in grants:
        until = grant["valid_until"]
        if until is None or grant["available"] <= 0:
            continue
        at = iso_to_ms(until)
        if now_ms < at <= now_ms + EXPIRY_WARNING_MS:
            soon.append({"credits": grant["available"], "date": until[:10]})
    return soon


async def month_totals(request: Request, account_id: str, now_ms: int) -> dict[str, int]:
    """Requests and credits charged since the first of this month (UTC), from the ledger."""
    query = UsageQuery(account_id, from_ms=month_start_ms(now_ms), group_by=("model",), limit=1000)
    page = await usage_page(billing_of(request).engine, query)
    groups: list[UsageGroup] = page["data"]  # type: ignore[assignment]
    return {
        "requests": sum(g.get("requests", 0) for g in groups),
        "charge": sum(g.get("charge", 0) for g in groups),
    }


@router.get("/overview")
async def overview(request: Request, session: Annotated[Session, Depends(in_organization)]) -> Response:
    billing, account_id = billing_of(request), session.account_id
    assert account_id is not None  # in_organization
    now = billing.clock()
    view = await account_balance(
        billing.engine, billing.store, account_id, ledger_fallback=True, clock=billing.clock
    )
    alerts = await read_settings(billing.engine, account_id)
    totals, t = view["balance"], words(request)
    banners = (
        [t("c_low_balance", available=totals["available"])] if is_low(totals, alerts["low_balance"]) else []
    )
    banners += [t("c_expiring", **soon) for soon in expiring(view["grants"], now)]
    live = [g for g in view["grants"] if g["remaining"] > 0]
    live.sort(key=lambda g: g["valid_until"] or "9999")
    return render(
        request,
        "overview.html",
        session=session,
        totals=totals,
        grants=live,
        names={p["id"]: p["name"] for p in await billing.packages.list_packages()},
        month=await month_totals(request, account_id, now),
        banners=banners,
    )

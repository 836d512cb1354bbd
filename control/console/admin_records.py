"""Admin pages of what happened: the audit log (paged, filtered by target or action) and
usage across accounts (totals by day and model from the ledger, with a bar per day).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup

from billing.audit import audit_page
from billing.usage_query import UsageQuery, usage_page
from control.console.admin_common import AdminSession, day_param, words
from control.console.charts import bar_chart
from control.console.web import billing_of, render
from gateway.contract import BadRequest, iso_to_ms

router = APIRouter()
CHART_DAYS = 60


@router.get("/audit")
async def audit_log(request: Request, session: AdminSession) -> Response:
    errors: dict[str, str] = {}
    filters = {name: request.query_params.get(name, "").strip() for name in ("target", "action")}
    for name, limit in (("target", 300), ("action", 64)):
        if len(filters[name]) > limit or not filters[name].isprintable():
            errors[name], filters[name] = words(request, "adm_not_valid", limit=limit), ""
    try:
        page: Any = await audit_page(
            billing_of(request).engine,
            target=filters["target"] or None,
            action=filters["action"] or None,
            limit=50,
            cursor=request.query_params.get("cursor") or None,
        )
    except BadRequest as error:
        errors["cursor"], page = error.message, {"data": [], "next_cursor": None}
    params = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "admin/audit.html",
        session=session,
        status=400 if errors else 200,
        page=page,
        filters=filters,
        params=params,
        errors=errors,
    )


def day_chart(request: Request, rows: list[dict[str, Any]]) -> Markup | None:
    """Credits charged per day (the last ``CHART_DAYS``, oldest first), drawn as the customer
    pages draw theirs (control/console/charts.py); None without usage."""
    per_day: dict[str, int] = {}
    for row in rows:
        per_day[row["day"]] = per_day.get(row["day"], 0) + int(row["charge"])
    days = sorted(per_day)[-CHART_DAYS:]
    if not days:
        return None
    title = words(request, "adm_charge_by_day")
    desc = title + ": " + ", ".join(f"{day} {per_day[day]}" for day in days)
    return bar_chart(title, desc, days, [per_day[day] for day in days])


@router.get("/usage")
async def usage(request: Request, session: AdminSession) -> Response:
    errors: dict[str, str] = {}
    start, end = day_param(request, "from", errors), day_param(request, "to", errors)
    query = UsageQuery(
        None,
        iso_to_ms(start) if start else None,
        iso_to_ms(end) if end else None,
        ("day", "model"),
        1000,
        None,
    )
    rows: list[dict[str, Any]] = [
        dict(r) for r in (await usage_page(billing_of(request).engine, query))["data"]
    ]
    values = {"from": request.query_params.get("from", ""), "to": request.query_params.get("to", "")}
    return render(
        request,
        "admin/usage.html",
        session=session,
        status=400 if errors else 200,
        rows=rows,
        chart=day_chart(request, rows),
        values=values,
        errors=errors,
    )

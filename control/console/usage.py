"""``/console/usage``: the organization's requests, tokens and credits by day and by model
(server-drawn SVG charts), its recent requests, and ``/console/usage.csv``.

Every query names the session's account: the ledger's usage routes
(``billing.usage_query``) with ``account_id`` fixed, as ``GET /v1/me/usage`` does.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from markupsafe import Markup
from sqlalchemy import select

from billing.clock import DAY_MS
from billing.db.engine import transaction
from billing.db.schema import api_keys
from billing.records import UsageGroup, UsageRecord
from billing.usage_query import UsageQuery, export_csv, usage_page
from billing.users import Session
from control.console.charts import bar_chart
from control.console.pages import words
from control.console.web import HEADERS, billing_of, in_organization, render

router = APIRouter()
SessionDep = Annotated[Session, Depends(in_organization)]
DAYS = 30
RECENT = 50
METRICS = (("requests", "c_requests"), ("tokens", "c_tokens"), ("charge", "c_credits"))


def _days(now_ms: int) -> list[str]:
    """The last ``DAYS`` UTC dates, oldest first (days without usage are drawn as zero)."""
    today = datetime.fromtimestamp(now_ms // 1000, UTC).date()
    return [(today - timedelta(days=i)).isoformat() for i in range(DAYS - 1, -1, -1)]


def _value(group: UsageGroup, metric: str) -> int:
    if metric == "tokens":
        return group.get("prompt_tokens", 0) + group.get("completion_tokens", 0)
    return int(cast(dict[str, Any], group).get(metric, 0))


def _charts(t: Any, by: str, labels: list[str], groups: list[UsageGroup]) -> list[tuple[str, Markup]]:
    """(caption, SVG) of requests, tokens and credits over ``labels``."""
    charts = []
    for metric, key in METRICS:
        values = [_value(g, metric) for g in groups]
        points = ", ".join(f"{label} {value}" for label, value in zip(labels, values, strict=True) if value)
        title = f"{t(key)} · {t(by)}"
        desc = t("c_chart_desc", metric=t(key), by=t(by), points=points or "0")
        charts.append((t(key), bar_chart(title, desc, labels, values)))
    return charts


async def _key_names(request: Request, account_id: str) -> dict[str, str]:
    """Names of all the account's keys, revoked ones too (their usage stays)."""
    async with transaction(billing_of(request).engine) as conn:
        rows = await conn.execute(
            select(api_keys.c.id, api_keys.c.name).where(api_keys.c.account_id == account_id)
        )
        return {row.id: row.name for row in rows}


@router.get("/usage")
async def usage(request: Request, session: SessionDep) -> Response:
    billing, account_id, t = billing_of(request), session.account_id, words(request)
    assert account_id is not None
    now = billing.clock()
    since = (now // DAY_MS - DAYS + 1) * DAY_MS
    by_day_page = await usage_page(billing.engine, UsageQuery(account_id, since, None, ("day",), DAYS + 1))
    by_model_page = await usage_page(billing.engine, UsageQuery(account_id, since, None, ("model",), 200))
    recent_page = await usage_page(billing.engine, UsageQuery(account_id, limit=RECENT))
    found = {g.get("day"): g for g in cast(list[UsageGroup], by_day_page["data"])}
    labels = _days(now)
    by_day = [found.get(day, cast(UsageGroup, {})) for day in labels]
    by_model = cast(list[UsageGroup], by_model_page["data"])
    model_names = [g.get("model", "") for g in by_model]
    return render(
        request,
        "usage.html",
        session=session,
        days=DAYS,
        day_charts=_charts(t, "c_by_day", [d[5:] for d in labels], by_day),
        model_charts=_charts(t, "c_by_model", model_names, by_model) if by_model else [],
        by_model=by_model,
        recent=cast(list[UsageRecord], recent_page["data"]),
        key_names=await _key_names(request, account_id),
    )


@router.get("/usage.csv")
async def usage_csv(request: Request, session: SessionDep) -> Response:
    """Every usage record of the organization, newest first (the admin export's columns)."""
    assert session.account_id is not None
    rows = export_csv(billing_of(request).engine, UsageQuery(session.account_id))
    headers = {**HEADERS, "Content-Disposition": 'attachment; filename="usage.csv"'}
    return StreamingResponse(rows, media_type="text/csv; charset=utf-8", headers=headers)

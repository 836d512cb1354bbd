"""Alert routes: the admin's (``/admin/accounts/{id}/alerts`` and ``/admin/metrics``, mounted
by control/admin.py behind the admin credential) and the customer's (``/v1/me/alerts`` with
an API key, its own account only; control/me.py). Thin: parse, call billing, answer.

``PUT`` takes any of ``url`` (http(s), or null to stop sending), ``low_balance`` (credits,
>= 0, or null), ``expiry_days`` (1-365, or null) and ``rotate_secret``; an absent field is
kept. The answer is the settings; ``secret`` is in it only when this request generated it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import GaugeMetricFamily
from pydantic import Field

from billing.alert_metrics import alert_families, exposition
from billing.alert_settings import read_settings, write_settings
from billing.alert_urls import MAX_URL
from billing.api import BillingDep, StrictBody, text
from billing.errors import LedgerUnavailable
from billing.me import CallerDep
from billing.records import AlertSettings
from billing.responses import errors
from billing.service import Billing
from billing.usage_metrics import usage_families
from gateway.contract import NotFound, Settings


class AlertSettingsBody(StrictBody):
    url: str | None = text(
        MAX_URL, default=None, description="http(s) URL that receives the signed webhooks; null: none"
    )
    low_balance: int | None = Field(
        default=None, ge=0, le=2**50, description="alert when the credits left are at or below this"
    )
    expiry_days: int | None = Field(
        default=None, ge=1, le=365, description="notice this many days before a grant expires"
    )
    rotate_secret: bool = Field(default=False, description="generate a new signing secret")


admin = APIRouter()
mine = APIRouter()


def _allow_private(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return settings.alerts_allow_private


async def _known(billing: Billing, account_id: str) -> None:
    if await billing.accounts.get_account(account_id) is None:
        raise NotFound(f"no account {account_id!r}")


async def _write(
    request: Request, billing: Billing, account_id: str, body: AlertSettingsBody, actor: str | None
) -> AlertSettings:
    changes = body.model_dump(exclude_unset=True, exclude={"rotate_secret"})
    return await write_settings(
        billing.engine,
        account_id,
        changes,
        rotate_secret=body.rotate_secret,
        allow_private=_allow_private(request),
        now_ms=billing.clock(),
        actor=actor,
    )


@admin.get("/accounts/{account_id}/alerts", responses=errors(404))
async def account_alerts(account_id: str, billing: BillingDep) -> AlertSettings:
    await _known(billing, account_id)
    return await read_settings(billing.engine, account_id)


@admin.put("/accounts/{account_id}/alerts", responses=errors(404))
async def set_account_alerts(
    account_id: str, body: AlertSettingsBody, request: Request, billing: BillingDep
) -> AlertSettings:
    """Set an account's alert receiver and thresholds (the admin door logs the change)."""
    await _known(billing, account_id)
    return await _write(request, billing, account_id, body, actor=None)


@admin.get("/metrics", include_in_schema=False)
async def metrics(billing: BillingDep) -> Response:
    """Prometheus text: the usage backlog and dead letters (from Redis), and the alerts by
    kind and state, the oldest undelivered, low accounts (from the ledger). With the database
    down the ledger's gauges are left out and ``tokengate_ledger_up`` is 0; the rest answers."""
    families = await usage_families(billing.store.client)
    up = GaugeMetricFamily("tokengate_ledger_up", "1 when the ledger answered this scrape")
    try:
        families += await alert_families(billing.engine, billing.clock())
        up.add_metric([], 1)
    except LedgerUnavailable:
        up.add_metric([], 0)
    return Response(exposition([*families, up]), media_type=CONTENT_TYPE_LATEST)


@mine.get("/alerts")
async def my_alerts(who: CallerDep, billing: BillingDep) -> AlertSettings:
    return await read_settings(billing.engine, who[0].account_id)


@mine.put("/alerts")
async def set_my_alerts(
    body: AlertSettingsBody, who: CallerDep, request: Request, billing: BillingDep
) -> AlertSettings:
    """Set the key's account's alert receiver and thresholds (recorded in the audit log)."""
    account_id = who[0].account_id
    return await _write(request, billing, account_id, body, actor=f"account:{account_id}")

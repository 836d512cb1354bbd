"""Raising alerts: a pass over the accounts with alert settings, each alert a row of the
``alert_deliveries`` outbox (billing/alert_delivery.py sends them).

* ``balance.low``: the account's credits left (available + reserved by requests in flight,
  by Redis, as admission sees them) are at or below its ``low_balance``. Once per level:
  the dedupe key names what was purchased (``balance.low:<account>:<purchased>``), so a new
  purchase (or credit, or withdrawal) and a new drop alert again, and nothing else does.
  Reserved credits count as left: a burst of reservations, mostly released a moment later,
  must not spend the one alert of a level before the balance is really low.
* ``grant.expiring``: a live grant with credits left expires within ``expiry_days`` (by Redis
  time, the clock that expires it); once per grant (``grant.expiring:<grant id>``).

A row's payload is fixed when it is raised (so every attempt sends the same event); the
insert skips a dedupe key already there, so passes in several processes raise it once.
An account without a URL gets its alerts recorded, not sent (state ``unsent``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.clock import DAY_MS, Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import account_alerts, alert_deliveries, grants
from gateway.contract import AccountStore, BalanceUnknown, GrantState

log = logging.getLogger("tokengate.billing.alerts")

BALANCE_LOW = "balance.low"
GRANT_EXPIRING = "grant.expiring"
KINDS = (BALANCE_LOW, GRANT_EXPIRING)
# next_attempt_ms of a row that will never be attempted again: given up, or no receiver.
NEVER_MS = 2**62


class Figures(Protocol):
    """What an alert reads of a balance (``AccountStore.view``): grants and Redis time."""

    @property
    def now_ms(self) -> int: ...
    @property
    def grants(self) -> Sequence[GrantState]: ...
    def totals(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Alert:
    kind: str
    dedupe: str
    data: dict[str, Any]


def due_alerts(
    account_id: str, low_balance: int | None, expiry_days: int | None, view: Figures
) -> list[Alert]:
    """The alerts an account's balance view calls for (before dedupe)."""
    found: list[Alert] = []
    totals = view.totals()
    left = totals["available"] + totals["reserved"]
    if low_balance is not None and left <= low_balance:
        data: dict[str, Any] = {
            "threshold": low_balance,
            "remaining": left,
            "available": totals["available"],
            "reserved": totals["reserved"],
            "purchased": totals["purchased"],
        }
        found.append(Alert(BALANCE_LOW, f"{BALANCE_LOW}:{account_id}:{totals['purchased']}", data))
    if expiry_days is not None:
        horizon = view.now_ms + expiry_days * DAY_MS
        for grant in view.grants:
            left = grant.available + grant.reserved
            if grant.expires_ms and view.now_ms < grant.expires_ms <= horizon and left > 0:
                data = {
                    "grant_id": grant.id,
                    "remaining": left,
                    "credits": grant.credits,
                    "valid_until": ms_to_iso(grant.expires_ms),
                    "expiry_days": expiry_days,
                }
                found.append(Alert(GRANT_EXPIRING, f"{GRANT_EXPIRING}:{grant.id}", data))
    return found


async def raise_alerts(engine: AsyncEngine, store: AccountStore, clock: Clock = wall_ms) -> list[str]:
    """One pass over the accounts with thresholds; the ids of the alerts it raised.

    An account whose balance Redis lost is skipped (reconcile rebuilds it; alerting on a
    figure nobody knows would be wrong either way). Redis down: the pass fails.
    """
    c = account_alerts.c
    async with transaction(engine) as conn:
        rows = list(
            await conn.execute(
                select(c.account_id, c.url, c.low_balance, c.expiry_days)
                .where(or_(c.low_balance.is_not(None), c.expiry_days.is_not(None)))
                .order_by(c.account_id)
            )
        )
    raised: list[str] = []
    for row in rows:
        try:
            view = await store.view(row.account_id)
        except BalanceUnknown:
            log.warning("alerts: the balance of %s is not in Redis; skipped this pass", row.account_id)
            continue
        low = None if row.low_balance is None else int(row.low_balance)
        alerts = due_alerts(row.account_id, low, row.expiry_days, view)
        if alerts:
            raised += await _record(
                engine, row.account_id, alerts, sendable=row.url is not None, now_ms=clock()
            )
    return raised


async def _record(
    engine: AsyncEngine, account_id: str, alerts: Sequence[Alert], *, sendable: bool, now_ms: int
) -> list[str]:
    """Insert the alerts not raised before, each with its payload; their ids."""
    made: list[str] = []
    async with transaction(engine) as conn:
        known = set(
            (
                await conn.execute(
                    select(alert_deliveries.c.dedupe).where(
                        alert_deliveries.c.dedupe.in_([a.dedupe for a in alerts])
                    )
                )
            ).scalars()
        )
        fresh = [a for a in alerts if a.dedupe not in known]
        if not fresh:
            return made
        packages = await _packages(conn, [a.data["grant_id"] for a in fresh if a.kind == GRANT_EXPIRING])
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        for alert in fresh:
            event_id = "evt_" + secrets.token_hex(12)
            data = dict(alert.data)
            if alert.kind == GRANT_EXPIRING:
                data["package_id"] = packages.get(data["grant_id"])
            payload = {
                "id": event_id,
                "type": alert.kind,
                "created": now_ms // 1000,
                "account_id": account_id,
                "data": data,
            }
            row = {
                "id": event_id,
                "account_id": account_id,
                "kind": alert.kind,
                "dedupe": alert.dedupe,
                "payload": orjson.dumps(payload).decode(),
                "attempts": 0,
                "next_attempt_ms": now_ms if sendable else NEVER_MS,
                "created_at_ms": now_ms,
                "last_error": None if sendable else "no receiver url",
            }
            inserted = await conn.execute(
                dialect.insert(alert_deliveries)
                .values(**row)
                .on_conflict_do_nothing(index_elements=["dedupe"])
                .returning(alert_deliveries.c.id)
            )
            if inserted.first() is not None:
                made.append(event_id)
                log.info("alert %s %s for %s", event_id, alert.kind, account_id)
    return made


async def _packages(conn: AsyncConnection, grant_ids: list[str]) -> dict[str, str]:
    if not grant_ids:
        return {}
    rows = await conn.execute(select(grants.c.id, grants.c.package_id).where(grants.c.id.in_(grant_ids)))
    return {row.id: row.package_id for row in rows}

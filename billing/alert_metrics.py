"""The alerts' gauges for the operator (``GET /admin/metrics``, Prometheus text), computed
from the ledger at each scrape: nothing is kept in a process, so every control-plane
replica answers the same and a restart loses no count.

State of an alert (a row of ``alert_deliveries``):

    delivered   a receiver answered 2xx
    pending     not yet delivered, retries scheduled
    failed      given up: no 2xx within 24 h of attempts (or the receiver was removed)
    unsent      recorded for an account without a receiver URL; never sent
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from billing.alerts import KINDS, NEVER_MS
from billing.db.engine import transaction
from billing.db.schema import account_alerts, alert_deliveries, grants

STATES = ("pending", "delivered", "failed", "unsent")


def state_of() -> ColumnElement[str]:
    """The SQL expression of an alert's state (the module's table)."""
    d = alert_deliveries.c
    return case(
        (d.delivered_at_ms.is_not(None), "delivered"),
        (d.next_attempt_ms < NEVER_MS, "pending"),
        (d.attempts > 0, "failed"),
        else_="unsent",
    )


class _Families(Collector):
    """Families built before the scrape (the queries are async; collect() is not)."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def exposition(families: Iterable[Metric]) -> bytes:
    """Gauges in Prometheus' text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


async def alert_families(engine: AsyncEngine, now_ms: int) -> list[Metric]:
    """The alerts' gauges (see the module), from the ledger."""
    d, a = alert_deliveries.c, account_alerts.c
    state = state_of().label("state")
    left = (
        select(func.coalesce(func.sum(grants.c.remaining), 0))
        .where(grants.c.account_id == a.account_id, grants.c.valid_until_ms > now_ms)
        .scalar_subquery()
    )
    async with transaction(engine) as conn:
        counts = {
            (r.kind, r.state): int(r.n)
            for r in await conn.execute(
                select(d.kind, state, func.count().label("n")).group_by(d.kind, "state")
            )
        }
        oldest = (
            await conn.execute(
                select(func.min(d.created_at_ms)).where(
                    d.delivered_at_ms.is_(None), d.next_attempt_ms < NEVER_MS
                )
            )
        ).scalar()
        low = (
            await conn.execute(
                select(func.count())
                .select_from(account_alerts)
                .where(and_(a.low_balance.is_not(None), left <= a.low_balance))
            )
        ).scalar()
        receivers = {
            bool(r.has_url): int(r.n)
            for r in await conn.execute(
                select((a.url.is_not(None)).label("has_url"), func.count().label("n"))
                .where((a.low_balance.is_not(None)) | (a.expiry_days.is_not(None)))
                .group_by("has_url")
            )
        }

    alerts = GaugeMetricFamily(
        "tokengate_alerts",
        "Alerts raised, by kind and delivery state "
        "(pending, delivered, failed: given up, unsent: no receiver URL)",
        labels=["kind", "state"],
    )
    for kind in sorted(set(KINDS) | {k for k, _ in counts}):
        for name in STATES:
            alerts.add_metric([kind, name], counts.get((kind, name), 0))
    age = GaugeMetricFamily(
        "tokengate_alerts_oldest_pending_seconds", "Age of the oldest alert still being retried (0: none)"
    )
    age.add_metric([], max(0, now_ms - int(oldest)) / 1000 if oldest is not None else 0)
    below = GaugeMetricFamily(
        "tokengate_alert_accounts_low_balance",
        "Accounts whose ledger credits left (live grants, without requests in "
        "flight) are at or below their low-balance threshold",
    )
    below.add_metric([], int(low or 0))
    accounts = GaugeMetricFamily(
        "tokengate_alert_accounts",
        "Accounts with alert thresholds, by whether they have a receiver URL",
        labels=["receiver"],
    )
    accounts.add_metric(["url"], receivers.get(True, 0))
    accounts.add_metric(["none"], receivers.get(False, 0))

    return [alerts, age, below, accounts]

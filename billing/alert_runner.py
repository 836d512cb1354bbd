"""The alert pass (raise, then deliver what is due), once or every ``TOKENGATE_ALERT_INTERVAL``
seconds: a task beside the billing worker's record loop (billing/commands.py), or on its own
(``tokengate billing alerts [--once]``). A pass that fails is logged and the next one tries
again: alerts never stop the worker, and nothing is lost (the outbox is in the ledger).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from billing.alert_delivery import Deliverer, DeliveryReport
from billing.alerts import raise_alerts
from billing.clock import Clock, wall_ms
from billing.service import Billing
from gateway.contract import AccountStore, Settings

log = logging.getLogger("tokengate.billing.alerts")


@dataclass
class PassReport:
    raised: int
    delivery: DeliveryReport

    def line(self) -> str:
        d = self.delivery
        return (
            f"alerts: {self.raised} raised, {d['delivered']} delivered, {d['retrying']} to retry, "
            f"{d['given_up']} given up, {d['unsent']} without a receiver"
        )


class AlertRunner:
    def __init__(
        self,
        engine: AsyncEngine,
        store: AccountStore,
        *,
        clock: Clock = wall_ms,
        allow_private: bool = False,
        interval_s: float = 60.0,
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.interval_s = interval_s
        self.deliverer = Deliverer(engine, clock=clock, allow_private=allow_private)
        self.stopping = asyncio.Event()

    @classmethod
    def of(cls, billing: Billing, settings: Settings) -> AlertRunner:
        return cls(
            billing.engine,
            billing.store,
            clock=billing.clock,
            allow_private=settings.alerts_allow_private,
            interval_s=settings.alert_interval_s,
        )

    async def run_once(self) -> PassReport:
        raised = await raise_alerts(self.engine, self.store, self.clock)
        return PassReport(len(raised), await self.deliverer.deliver_due())

    async def run(self) -> None:
        """A pass every ``interval_s`` until :meth:`stop`; failures logged, never raised."""
        while not self.stopping.is_set():
            try:
                report = await self.run_once()
                if report.raised or report.delivery.counts:
                    log.info("%s", report.line())
            except Exception:
                log.exception("alert pass failed; the next one retries")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.interval_s)

    def stop(self) -> None:
        self.stopping.set()

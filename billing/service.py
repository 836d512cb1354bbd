"""Billing's parts for one process, built from the settings once and closed at the end."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from billing.accounts import AccountService
from billing.adjustments import AdjustmentService
from billing.clock import Clock, wall_ms
from billing.db import migrate
from billing.db.engine import create_engine, is_sqlite
from billing.orders import OrderService
from billing.packages import PackageService
from billing.payments import PaymentProvider
from billing.users import UserService
from gateway.contract import AccountRegistry, AccountStore, RedisClient

log = logging.getLogger("tokengate.billing")


@dataclass
class Billing:
    engine: AsyncEngine
    store: AccountStore
    accounts: AccountService
    packages: PackageService
    orders: OrderService
    adjustments: AdjustmentService  # credits and debits; .withdrawals takes grants back
    users: UserService  # the console's people and sessions
    clock: Clock
    creates_ledger: bool = True  # may create and migrate an embedded SQLite ledger (prepare)

    @classmethod
    def build(
        cls,
        database_url: str,
        redis: RedisClient,
        clock: Clock = wall_ms,
        *,
        provider: PaymentProvider | None = None,
        order_ttl_s: int = 3600,
        create_ledger: bool = True,
    ) -> Billing:
        """Every service over one engine. ``create_ledger=False`` (the billing worker): never
        create an embedded ledger, so a worker started while the SQLite file is away holds
        the usage until it is back instead of writing it into a new, empty ledger."""
        engine = create_engine(database_url, create=create_ledger)
        store = AccountStore(redis)
        packages = PackageService(engine, store, clock)
        adjustments = AdjustmentService(engine, store, clock)
        orders = OrderService(engine, packages, provider, ttl_ms=order_ttl_s * 1000, clock=clock,
                              withdraw=adjustments.withdrawals.withdraw_grant)
        accounts = AccountService(engine, AccountRegistry(redis, store), clock)
        return cls(
            engine=engine,
            store=store,
            accounts=accounts,
            users=UserService(engine, accounts, packages, clock),
            packages=packages,
            orders=orders,
            adjustments=adjustments,
            clock=clock,
            creates_ledger=create_ledger,
        )

    async def prepare(self) -> None:
        """Migrate an embedded SQLite ledger (if this process creates ledgers); check that
        PostgreSQL is migrated (never waits).

        A database that cannot be reached is logged, not fatal: the gateway serves from
        Redis without it, and the control plane answers 503 until it is back.
        """
        try:
            async with asyncio.timeout(30):
                at = await migrate.current(self.engine)
                if at != migrate.HEAD and is_sqlite(self.engine) and self.creates_ledger:
                    await migrate.upgrade(self.engine)
                elif at != migrate.HEAD:
                    log.error("the ledger is not migrated: run `tokengate billing migrate`")
        except Exception as error:
            log.error("the ledger database is unavailable at start (%s)", error.__class__.__name__)

    async def close(self) -> None:
        await self.engine.dispose()

"""The package catalog and purchases: a purchase is a grant in SQL, then credits in Redis.

``purchase`` is idempotent on ``order_id``: the same order again answers the same grant
(and applies it to Redis again, which is a no-op once done: ``credit_v2.lua`` adds a grant
id once); the same order with another account or package is a Conflict. The grant is
committed in SQL before Redis is credited, so a crash in between leaves a grant that Redis
lacks, which the next purchase retry or ``reconcile`` applies, never twice.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing.clock import DAY_MS, Clock, ms_to_iso, wall_ms
from billing.db.engine import transaction
from billing.db.schema import accounts, grants, packages
from billing.errors import Conflict
from billing.ledger import post, purchase_legs
from billing.records import Grant, Offer, Package, Price
from billing.tiers import refresh_tier
from gateway.contract import AccountStore, BadRequest, BalanceUnknown, NotFound, QuotaUnavailable

log = logging.getLogger("tokengate.billing")


@dataclass(frozen=True, slots=True)
class NewPackage:
    name: str
    credits: int
    valid_days: int
    models: list[str] | None = None
    list_price: int | None = None
    id: str | None = None
    price: Price | None = None  # what a customer pays for it (required when for_sale)
    for_sale: bool = False
    trial: bool = False  # granted once to each account made by sign-up; one package at most
    weight: int = 1  # its tier in fair shares at a full model (billing/tiers.py)


MAX_WEIGHT = 100  # the heaviest tier: 100 turns to a weight-1 account's one


@dataclass(frozen=True, slots=True)
class PackageChanges:
    """What an admin may change of a package once it exists: how it is sold and shown. What a
    grant carries (credits, valid days, models) and the trial mark never change: paid orders
    and unredeemed codes grant the package as it is when they are granted, so a new content
    is a new package (and the old one taken off sale)."""

    name: str | None = None
    price: Price | None = None
    for_sale: bool | None = None
    list_price: int | None = None
    weight: int | None = None
    unset_price: bool = False  # the price removed (only off sale)
    unset_list_price: bool = False


_CONTENT = ("name", "credits", "valid_days", "models", "list_price", "price_amount", "price_currency",
            "for_sale", "trial", "weight")  # what makes a package the same package again


def price_of(row: Any) -> Price | None:
    if row.price_amount is None:
        return None
    return {"amount": int(row.price_amount), "currency": row.price_currency}


def package_of(row: Any) -> Package:
    return {
        "id": row.id,
        "name": row.name,
        "credits": row.credits,
        "valid_days": row.valid_days,
        "models": row.models,
        "list_price": row.list_price,
        "price": price_of(row),
        "for_sale": bool(row.for_sale),
        "trial": bool(row.trial),
        "weight": int(row.weight),
        "created_at": ms_to_iso(row.created_at_ms),
    }


def offer_of(row: Any) -> Offer:
    """A package as the public price list shows it."""
    price = price_of(row)
    assert price is not None  # on sale means priced (create_package holds it)
    return {"id": row.id, "name": row.name, "credits": row.credits, "valid_days": row.valid_days,
            "models": row.models, "price": price}


def grant_of(row: Any) -> Grant:
    return {
        "id": row.id,
        "account_id": row.account_id,
        "package_id": row.package_id,
        "order_id": row.order_id,
        "credits": row.credits,
        "remaining": row.remaining,
        "models": row.models,
        "list_price": row.list_price,
        "valid_from": ms_to_iso(row.valid_from_ms),
        "valid_until": ms_to_iso(row.valid_until_ms),
    }


class PackageService:
    def __init__(self, engine: AsyncEngine, store: AccountStore, clock: Clock = wall_ms) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock

    async def create_package(self, new: NewPackage) -> tuple[Package, bool]:
        """(the package, created); the same id again with the same content is not a change.

        A package on sale needs a price (BadRequest); a second trial package is a Conflict."""
        if new.for_sale and new.price is None:
            raise BadRequest("a package for sale needs a price", param="price")
        row = {
            "id": new.id or "pkg_" + secrets.token_hex(6),
            "name": new.name,
            "credits": new.credits,
            "valid_days": new.valid_days,
            "models": new.models,
            "list_price": new.list_price,
            "created_at_ms": self.clock(),
            "price_amount": new.price["amount"] if new.price else None,
            "price_currency": new.price["currency"].upper() if new.price else None,
            "for_sale": new.for_sale,
            "trial": new.trial,
            "weight": new.weight,
        }
        try:
            async with transaction(self.engine) as conn:
                await conn.execute(packages.insert(), row)
            return package_of(_Row(row)), True
        except exc.IntegrityError:
            async with transaction(self.engine) as conn:
                found = (await conn.execute(select(packages).where(packages.c.id == row["id"]))).first()
            if found is None and new.trial:
                raise Conflict("another package is the trial package; there is one at most") from None
            same = found is not None and all(getattr(found, k) == row[k] for k in _CONTENT)
            if not same:
                raise Conflict(f"package {row['id']!r} exists with other content") from None
            return package_of(found), False

    async def update_package(self, package_id: str, changes: PackageChanges) -> Package:
        """Apply ``changes``; the package as it is now. NotFound for an unknown package;
        BadRequest when it would be on sale without a price. A new weight re-tiers the
        accounts holding live grants of it (reconcile does it if Redis cannot now)."""
        values: dict[str, Any] = {}
        if changes.name is not None:
            values["name"] = changes.name
        if changes.for_sale is not None:
            values["for_sale"] = changes.for_sale
        if changes.weight is not None:
            values["weight"] = changes.weight
        if changes.price is not None:
            values["price_amount"] = changes.price["amount"]
            values["price_currency"] = changes.price["currency"].upper()
        elif changes.unset_price:
            values["price_amount"] = values["price_currency"] = None
        if changes.list_price is not None or changes.unset_list_price:
            values["list_price"] = changes.list_price
        locked = select(packages).where(packages.c.id == package_id).with_for_update()
        async with transaction(self.engine) as conn:  # locked: two changes cannot unprice a sale
            row = (await conn.execute(locked)).first()
            if row is None:
                raise NotFound(f"no package {package_id!r}")
            for_sale = values.get("for_sale", row.for_sale)
            priced = values.get("price_amount", row.price_amount) is not None
            if for_sale and not priced:
                raise BadRequest("a package for sale needs a price", param="price")
            if values:
                await conn.execute(packages.update().where(packages.c.id == package_id).values(**values))
            row = (await conn.execute(select(packages).where(packages.c.id == package_id))).one()
        if "weight" in values:
            await self._retier(package_id)
        return package_of(row)

    async def _retier(self, package_id: str) -> None:
        """Refresh the tier of every account with a live grant of the package."""
        now = self.clock()
        query = select(grants.c.account_id).distinct().where(
            grants.c.package_id == package_id, grants.c.valid_until_ms > now
        )
        async with transaction(self.engine) as conn:
            holders = [r.account_id for r in await conn.execute(query)]
        for account_id in holders:
            try:
                await refresh_tier(self.engine, self.store, account_id, now)
            except (BalanceUnknown, QuotaUnavailable) as error:
                log.warning("tier of %s not refreshed (%s): reconcile does it", account_id,
                            error.__class__.__name__)

    async def list_packages(self) -> list[Package]:
        async with transaction(self.engine) as conn:
            rows = await conn.execute(select(packages).order_by(packages.c.created_at_ms, packages.c.id))
        return [package_of(r) for r in rows]

    async def price_list(self) -> list[Offer]:
        """The packages on sale, cheapest first (then by name): what anyone may buy."""
        c = packages.c
        query = select(packages).where(c.for_sale.is_(True)).order_by(c.price_amount, c.name, c.id)
        async with transaction(self.engine) as conn:
            rows = await conn.execute(query)
        return [offer_of(r) for r in rows]

    async def trial_package(self) -> Package | None:
        async with transaction(self.engine) as conn:
            row = (await conn.execute(select(packages).where(packages.c.trial.is_(True)))).first()
        return None if row is None else package_of(row)

    async def grant_trial(self, account_id: str) -> Grant | None:
        """The trial package for a new account, once: its order id is ``trial:<account id>``,
        so a retry or a concurrent call grants nothing more (``purchase`` is idempotent on the
        order). None when no package is the trial."""
        trial = await self.trial_package()
        if trial is None:
            return None
        grant, _ = await self.purchase(account_id, trial["id"], f"trial:{account_id}")
        return grant

    async def purchase(self, account_id: str, package_id: str, order_id: str) -> tuple[Grant, bool]:
        """(the grant, created): record the purchase in SQL, then credit Redis."""
        row, created = await self.record_purchase(account_id, package_id, order_id)
        await self.apply(row)
        return grant_of(row), created

    async def record_purchase(self, account_id: str, package_id: str, order_id: str) -> tuple[Any, bool]:
        """The SQL half of a purchase: the grant and its ledger entry, once per order id."""
        try:
            async with transaction(self.engine) as conn:
                existing = await _grant_for_order(conn, order_id)
                if existing is not None:
                    return _same_order(existing, account_id, package_id), False
                return await insert_grant(conn, account_id, package_id, order_id, self.clock()), True
        except exc.IntegrityError:  # the same order, committed by a concurrent request
            async with transaction(self.engine) as conn:
                existing = await _grant_for_order(conn, order_id)
            if existing is None:
                raise
            return _same_order(existing, account_id, package_id), False

    async def apply(self, grant: Any) -> bool:
        """Credit a grant to the Redis balance (once per grant id); False if not possible now.

        What it holds: its credits less any withdrawn (a refund, a debit adjustment)."""
        holds = int(grant.credits) - int(getattr(grant, "withdrawn", 0) or 0)
        if holds <= 0:
            return True  # all withdrawn: nothing for Redis to hold (reconcile rebuilds its record)
        try:
            await self.store.credit(
                grant.account_id,
                holds,
                grant_id=grant.id,
                expires_ms=int(grant.valid_until_ms),
                models=grant.models,
            )
            await refresh_tier(self.engine, self.store, grant.account_id, self.clock())
            return True
        except (BalanceUnknown, QuotaUnavailable) as error:
            log.warning(
                "grant %s not in Redis yet (%s): reconcile applies it", grant.id, error.__class__.__name__
            )
            return False


async def insert_grant(
    conn: AsyncConnection, account_id: str, package_id: str, order_id: str, now: int
) -> Any:
    """The grant of a package and its purchase entry, in the caller's transaction (so that
    another change, a redemption code's claim, commits or fails with it). NotFound for an
    unknown account or package; an order id used before is the caller's IntegrityError."""
    package = await _package(conn, account_id, package_id)
    row = {
        "id": "gr_" + secrets.token_hex(8),
        "account_id": account_id,
        "package_id": package_id,
        "order_id": order_id,
        "credits": package.credits,
        "remaining": package.credits,
        "models": package.models,
        "valid_from_ms": now,
        "valid_until_ms": now + package.valid_days * DAY_MS,
        "list_price": package.list_price,
    }
    await conn.execute(grants.insert(), row)
    legs = purchase_legs(account_id, row["id"], package.credits)
    await post(conn, [(f"purchase:{order_id}", "purchase", account_id, legs)], now)
    return _Row(row)


class _Row:
    """A dict seen with attribute access, like a result row."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


async def _grant_for_order(conn: AsyncConnection, order_id: str) -> Any:
    return (await conn.execute(select(grants).where(grants.c.order_id == order_id))).first()


def _same_order(existing: Any, account_id: str, package_id: str) -> Any:
    if (existing.account_id, existing.package_id) != (account_id, package_id):
        raise Conflict(f"order {existing.order_id!r} was placed for another account or package")
    return existing


async def _package(conn: AsyncConnection, account_id: str, package_id: str) -> Any:
    if (await conn.execute(select(accounts.c.id).where(accounts.c.id == account_id))).first() is None:
        raise NotFound(f"no account {account_id!r}")
    package = (await conn.execute(select(packages).where(packages.c.id == package_id))).first()
    if package is None:
        raise NotFound(f"no package {package_id!r}")
    return package

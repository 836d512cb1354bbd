"""The database itself guards the ledger (PostgreSQL and SQLite): balance, immutability,
no overdraft; and the migrations go up and down."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from sqlalchemy import exc, insert, text, update

from billing.db import migrate
from billing.db.engine import async_url, create_engine
from billing.db.schema import grants, ledger_entries, ledger_legs
from billing.ledger import Leg, post
from billing.service import Billing

from .helpers import Pack, funded

pytestmark = pytest.mark.timeout(60)


def test_database_urls_pick_the_driver() -> None:
    assert async_url("postgresql://u:p@h:5/db") == "postgresql+asyncpg://u:p@h:5/db"
    assert async_url("postgresql://h/db?sslmode=require") == "postgresql+asyncpg://h/db?ssl=require"
    assert async_url("sqlite:///x/ledger.db") == "sqlite+aiosqlite:///x/ledger.db"
    with pytest.raises(ValueError):
        async_url("mysql://h/db")


async def _legs(billing: Billing, *amounts: int) -> str:
    """Post an entry whose legs have ``amounts`` on a fresh grant; the entry id."""
    who = await funded(billing, [Pack(100)])
    grant_id = who.grants[0]["id"]
    entry_id = "correction:" + secrets.token_hex(4)
    legs = [Leg(who.account_id, grant_id, "grant" if a > 0 else "usage", a) for a in amounts]
    async with billing.engine.begin() as conn:
        await post(conn, [(entry_id, "correction", who.account_id, legs)], billing.clock())
    return entry_id


@pytest.mark.parametrize("amounts", [(5, -4), (5,), (3, 3, -5)])
async def test_an_entry_that_does_not_balance_is_refused(billing: Billing, amounts: tuple[int, ...]) -> None:
    with pytest.raises(exc.IntegrityError, match="does not balance"):
        await _legs(billing, *amounts)


async def test_a_balanced_entry_is_posted_and_then_immutable(billing: Billing) -> None:
    entry_id = await _legs(billing, 7, -3, -4)
    refusals = [
        update(ledger_legs).where(ledger_legs.c.entry_id == entry_id).values(amount=1),
        ledger_legs.delete().where(ledger_legs.c.entry_id == entry_id),
        ledger_entries.delete().where(ledger_entries.c.id == entry_id),
        update(ledger_entries).where(ledger_entries.c.id == entry_id).values(kind="usage"),
    ]
    for statement in refusals:
        with pytest.raises(exc.IntegrityError, match="immutable"):
            async with billing.engine.begin() as conn:
                await conn.execute(statement)


async def test_legs_cannot_be_added_to_a_posted_entry_nor_exist_without_one(billing: Billing) -> None:
    entry_id = await _legs(billing, 2, -2)
    async with billing.engine.connect() as conn:
        row = (await conn.execute(ledger_legs.select().where(ledger_legs.c.entry_id == entry_id))).first()
    assert row is not None
    leg = {"account_id": row.account_id, "grant_id": row.grant_id, "book": "usage", "amount": 1}
    with pytest.raises(exc.IntegrityError, match="already posted"):
        async with billing.engine.begin() as conn:
            await conn.execute(insert(ledger_legs).values(entry_id=entry_id, **leg))
    with pytest.raises(exc.IntegrityError):  # the deferred foreign key, at commit
        async with billing.engine.begin() as conn:
            await conn.execute(insert(ledger_legs).values(entry_id="correction:none", **leg))


async def test_a_grant_cannot_be_overdrawn(billing: Billing) -> None:
    who = await funded(billing, [Pack(100)])
    with pytest.raises(exc.IntegrityError):
        async with billing.engine.begin() as conn:
            await conn.execute(update(grants).where(grants.c.id == who.grants[0]["id"]).values(remaining=-1))


async def test_migrations_go_up_and_down(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert await migrate.current(engine) is None
        await migrate.upgrade(engine)
        await migrate.upgrade(engine)  # again: nothing to do
        assert await migrate.current(engine) == migrate.head() == migrate.HEAD  # HEAD kept current
        await migrate.downgrade(engine, "base")
        async with engine.connect() as conn:
            tables = await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'"))
            assert {row[0] for row in tables} <= {"alembic_version"}
    finally:
        await engine.dispose()

"""The database itself guards the ledger (PostgreSQL and SQLite): balance, immutability,
no overdraft; and the migrations go up and down, on records already there too."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import CheckConstraint, exc, insert, inspect, select, text, update
from sqlalchemy.engine import Connection

from billing.db import migrate
from billing.db.engine import async_url, create_engine
from billing.db.schema import accounts, grants, ledger_entries, ledger_legs, packages, usage_records
from billing.ledger import Leg, post
from billing.service import Billing

from .conftest import PG_ADMIN, _pg
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


@pytest.fixture(params=["sqlite", "postgres"])
async def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each backend (PostgreSQL: created for the test, then dropped)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'blank.db'}"
        return
    name = "tg_blank_" + secrets.token_hex(4)
    try:
        await _pg(f"CREATE DATABASE {name}")
    except (OSError, asyncpg.PostgresError, TimeoutError) as error:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN}: {error}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        await _pg(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _shape(sync: Connection) -> tuple[set[str], set[str | None]]:
    found = inspect(sync)
    columns = {c["name"] for c in found.get_columns("usage_records")}
    return columns, {c["name"] for c in found.get_check_constraints("usage_records")}


async def test_0002_adds_uncollected_to_records_already_there(blank_url: str) -> None:
    engine = create_engine(blank_url)
    try:
        await migrate.upgrade(engine, "0001")
        async with engine.begin() as conn:
            await conn.execute(insert(accounts).values(id="a", name="a", created_at_ms=1))
            await conn.execute(
                text(
                    "INSERT INTO usage_records (request_id, account_id, key_id, model, cluster, endpoint, "
                    "prompt_tokens, completion_tokens, cached_tokens, charge, status, counted_by, stream, "
                    "started_at_ms, finished_at_ms, grants, recorded_at_ms) VALUES ('old', 'a', 'k', 'm', "
                    "'c', 'e', 1, 2, 0, 5, 'ok', 'upstream', false, 1, 2, '', 3)"
                )
            )
        await migrate.upgrade(engine)
        assert await migrate.current(engine) == migrate.HEAD
        async with engine.connect() as conn:
            old = (await conn.execute(select(usage_records.c.uncollected))).scalar_one()
            columns, checks = await conn.run_sync(_shape)
        assert old == 0
        # a fresh schema (billing/db/schema.py) and an upgraded database agree
        assert columns == {c.name for c in usage_records.columns}
        assert checks == {c.name for c in usage_records.constraints if isinstance(c, CheckConstraint)}
        with pytest.raises(exc.IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(
                    update(usage_records).where(usage_records.c.request_id == "old").values(uncollected=-1)
                )
        await migrate.downgrade(engine, "0001")
        async with engine.connect() as conn:
            columns, checks = await conn.run_sync(_shape)
        assert "uncollected" not in columns and "ck_usage_records_uncollected" not in checks
    finally:
        await engine.dispose()


async def test_0006_weighs_packages_one_unless_told(blank_url: str) -> None:
    engine = create_engine(blank_url)
    try:
        await migrate.upgrade(engine, "0005")
        async with engine.begin() as conn:
            await conn.execute(insert(packages).values(id="old", name="o", credits=1, valid_days=1,
                                                       created_at_ms=1))
        await migrate.upgrade(engine, "0006")
        async with engine.connect() as conn:
            assert set((await conn.execute(select(packages.c.weight))).scalars()) == {1}  # all of them
        new = {"name": "n", "credits": 1, "valid_days": 1, "created_at_ms": 2}
        async with engine.begin() as conn:
            await conn.execute(insert(packages).values(id="heavy", weight=100, **new))
        for weight in (0, 101):
            with pytest.raises(exc.IntegrityError):
                async with engine.begin() as conn:
                    await conn.execute(insert(packages).values(id=f"w{weight}", weight=weight, **new))
        await migrate.downgrade(engine, "0005")
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda sync: inspect(sync).get_columns("packages"))
        assert "weight" not in {c["name"] for c in found}
    finally:
        await engine.dispose()


async def test_0003_puts_packages_on_sale_with_one_trial_at_most(blank_url: str) -> None:
    engine = create_engine(blank_url)
    try:
        await migrate.upgrade(engine, "0002")
        async with engine.begin() as conn:
            await conn.execute(insert(packages).values(id="old", name="o", credits=1, valid_days=1,
                                                       created_at_ms=1))
        await migrate.upgrade(engine, "0003")
        async with engine.connect() as conn:
            old = (await conn.execute(select(packages.c.for_sale, packages.c.trial,
                                             packages.c.price_amount))).one()
            found = await conn.run_sync(lambda sync: inspect(sync).get_columns("packages"))
        assert tuple(old) == (False, False, None)
        assert {c["name"] for c in found} == {c.name for c in packages.columns} - {"weight"}  # 0006's
        new = {"name": "t", "credits": 1, "valid_days": 1, "created_at_ms": 2}
        async with engine.begin() as conn:
            await conn.execute(insert(packages).values(id="t1", trial=True, **new))
        for refused in ({"id": "t2", "trial": True}, {"id": "p1", "price_amount": 5},
                        {"id": "p2", "price_amount": -1, "price_currency": "CNY"}):
            with pytest.raises(exc.IntegrityError):
                async with engine.begin() as conn:
                    await conn.execute(insert(packages).values(**refused, **new))
        await migrate.downgrade(engine, "0002")
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda sync: inspect(sync).get_columns("packages"))
        assert "trial" not in {c["name"] for c in found}
    finally:
        await engine.dispose()

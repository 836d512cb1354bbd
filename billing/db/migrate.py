"""Alembic migrations of the ledger, run from Python (``tokengate billing migrate``).

The migration scripts live in ``billing/db/migrations`` and run on the async engine's
connection, so the same code path serves PostgreSQL and SQLite, the CLI and the tests.
"""

from __future__ import annotations

import asyncio
from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("billing.db") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: not migrated)."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision``; concurrent callers (several processes at start) are safe."""
    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            return
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError):
            if await current(engine) == head():
                return  # another process migrated meanwhile
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), revision))

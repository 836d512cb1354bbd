"""Alembic migrations of the ledger, run from Python (``tokengate billing migrate``).

The migration scripts live in ``billing/db/migrations`` and run on the async engine's
connection, so the same code path serves PostgreSQL and SQLite, the CLI and the tests.

alembic is imported only to migrate: a serving process checks its schema against
:data:`HEAD` with one plain query, so it never loads alembic (11 MB per worker).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import TYPE_CHECKING

from sqlalchemy import exc, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0006"  # the newest revision under migrations/versions (a test holds it to alembic's)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("billing.db") / "migrations"))
    config.attributes["connection"] = connection
    return config


def head() -> str | None:
    """The newest revision, as alembic reads it from the migration scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None: not migrated)."""
    async with engine.connect() as conn:
        try:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
        except (exc.OperationalError, exc.ProgrammingError):  # no such table: never migrated
            return None
    return str(rows[0]) if rows else None


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate to ``revision``; concurrent callers (several processes at start) are safe."""
    from alembic import command

    for attempt in range(5):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))
            return
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError):
            if await current(engine) == HEAD:
                return  # another process migrated meanwhile
            if attempt == 4:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    from alembic import command

    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), revision))

"""The ledger's database: ``DATABASE_URL`` -> an async SQLAlchemy engine with the right driver.

``postgresql://...`` runs on asyncpg, ``sqlite:///path`` on aiosqlite. SQLite is set up for
a ledger shared by several processes (gateway workers, billing workers, reconcile):
write-ahead log, foreign keys on, a busy timeout, full fsync, and every transaction
begins IMMEDIATE (it takes the write lock at once, so two writers queue instead of failing
on a lock upgrade). Each SQLite transaction opens its own connection (no pool): cheap for
a file, and a database that went away is noticed at the next transaction.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from billing.errors import LedgerUnavailable

SQLITE_BUSY_MS = 30_000
CONNECT_TIMEOUT_S = 5


def async_url(database_url: str) -> str:
    """The SQLAlchemy URL (with its async driver) for a ``DATABASE_URL``."""
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend in ("postgresql", "postgres"):
        query = dict(url.query)
        if "sslmode" in query:  # libpq's name; asyncpg calls it ssl
            query["ssl"] = query.pop("sslmode")
        url = url.set(drivername="postgresql+asyncpg", query=query)
    elif backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    else:
        raise ValueError(f"DATABASE_URL must be postgresql://... or sqlite:///path, not {backend}")
    return url.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(database_url: str, **kwargs: Any) -> AsyncEngine:
    """An engine for ``DATABASE_URL``; the SQLite file's directory is created if needed."""
    url = make_url(async_url(database_url))
    if url.get_backend_name() != "sqlite":
        return create_async_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=5,
            connect_args={"timeout": CONNECT_TIMEOUT_S},  # a database down fails fast
            **kwargs,
        )
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(
        url, poolclass=NullPool, connect_args={"timeout": SQLITE_BUSY_MS / 1000}, **kwargs
    )
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
    cursor = dbapi_connection.cursor()
    for pragma in (
        "foreign_keys = ON",
        "journal_mode = WAL",
        f"busy_timeout = {SQLITE_BUSY_MS}",
        "synchronous = FULL",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


# Errors that mean "the database cannot answer now" (retry later), as opposed to
# "the database refused this" (IntegrityError, DataError: a poison input).
def is_unavailable(error: BaseException) -> bool:
    if isinstance(error, exc.IntegrityError | exc.DataError):
        return False
    if isinstance(error, exc.DBAPIError):
        return error.connection_invalidated or isinstance(error, exc.OperationalError | exc.InterfaceError)
    return isinstance(error, OSError | TimeoutError | exc.TimeoutError)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction on the ledger; an unreachable database -> LedgerUnavailable (503)."""
    try:
        async with engine.begin() as conn:
            yield conn
    except Exception as error:
        if is_unavailable(error):
            raise LedgerUnavailable(
                "the ledger database is unavailable; retry shortly",
                code="ledger_unavailable",
                headers={"Retry-After": "5"},
            ) from error
        raise

"""The ledger's database: ``DATABASE_URL`` -> an async SQLAlchemy engine with the right driver.

``postgresql://...`` runs on asyncpg, ``sqlite:///path`` on aiosqlite. SQLite is set up for
a ledger shared by several processes (gateway workers, billing workers, reconcile):
write-ahead log, foreign keys on, a busy timeout, full fsync, and every transaction
begins IMMEDIATE (it takes the write lock at once, so two writers queue instead of failing
on a lock upgrade). Each SQLite transaction opens its own connection (no pool): cheap for
a file, and a database that went away is noticed at the next transaction. A busy writer
(the billing worker) keeps its own connection instead (:class:`WriterConnection`).
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


def create_engine(database_url: str, *, create: bool = True, **kwargs: Any) -> AsyncEngine:
    """An engine for ``DATABASE_URL``; the SQLite file's directory is created if needed and
    ``create`` (a process that only writes usage never makes a ledger where none is)."""
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
    if create and url.database and url.database != ":memory:":
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
        "temp_store = MEMORY",
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


class WriterConnection:
    """A busy writer's (the billing worker's) own connection to a SQLite ledger, kept open.

    A connection per transaction cost the worker most of its CPU: a thread, the pragmas,
    the schema parsed again, a cold page cache, and (the last connection to close a WAL
    database) the whole log copied into the database file, synced and deleted, at every
    commit. This one stays open between transactions; SQLite's auto-checkpoint (every
    1000 log pages) copies the log instead. Durability does not change: a commit is
    durable once the log is synced (``synchronous = FULL``). A database that went away is
    still noticed at the next transaction: the connection is dropped when the file at the
    URL's path is not the one it opened (moved, replaced) and when the database is
    unavailable, then opened again like any other. PostgreSQL: the engine's pool, as is.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        database = engine.url.database if is_sqlite(engine) else None
        self.path = Path(database) if database and database != ":memory:" else None
        self.conn: AsyncConnection | None = None
        self.opened: tuple[int, int] | None = None

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A transaction, committed when the block ends without an error (as engine.begin())."""
        if self.path is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        conn = await self._connection()
        try:
            async with conn.begin():
                yield conn
        except Exception as error:
            if is_unavailable(error):
                await self.close()
            raise

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception as error:
                if not is_unavailable(error):
                    raise

    async def _connection(self) -> AsyncConnection:
        if self.conn is not None and self._file() != self.opened:
            await self.close()  # the file went away: never write to one nobody reads
        if self.conn is None:
            before = self._file()
            conn = await self.engine.connect()
            if before is None or self._file() != before:  # created or replaced meanwhile
                await conn.close()
                raise FileNotFoundError(f"the ledger {self.path} is not the file it was")
            self.conn, self.opened = conn, before
        return self.conn

    def _file(self) -> tuple[int, int] | None:
        """Which file the path names (device, inode); None: none."""
        assert self.path is not None
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_dev, found.st_ino


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

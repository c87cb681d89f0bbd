"""The async engine and sessions, with SQLite set up for a queue shared by several processes.

SQLite (the embedded default) gets WAL (readers never block the writer), a busy timeout
(writers wait for each other instead of failing), foreign keys on, and transactions that
really begin: the ``sqlite3`` driver's own transaction handling is switched off and
SQLAlchemy's ``begin`` event emits ``BEGIN IMMEDIATE`` for writes, so a write transaction
takes the write lock up front. Without that, two processes that both read and then write
deadlock on the lock upgrade and one gets ``database is locked`` at once, busy timeout or not.
Reads use a plain deferred ``BEGIN``. PostgreSQL needs none of this.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# Async drivers for URLs given without one (``sqlite:///x.db``, ``postgresql://…``).
_ASYNC_DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg"}
_SUPPORTED = {("sqlite", "aiosqlite"), ("postgresql", "asyncpg"), ("postgresql", "psycopg")}
_BEGIN_OPTION = "latent_painter_begin"


class DatabaseURLError(ValueError):
    """A database URL this project cannot use; the message says which ones it can."""


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and give it an async driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseURLError(
            f"database url {str(url)!r} cannot be parsed; use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://USER@HOST:PORT/DB"
        ) from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if "+" not in parsed.drivername and backend in _ASYNC_DRIVERS:
        parsed = parsed.set(drivername=f"{backend}+{_ASYNC_DRIVERS[backend]}")
        driver = _ASYNC_DRIVERS[backend]
    if (backend, driver) not in _SUPPORTED:
        raise DatabaseURLError(
            f"database url uses {parsed.drivername!r}; supported are sqlite+aiosqlite, "
            "postgresql+asyncpg and postgresql+psycopg"
        )
    return parsed


def sqlite_path(url: str | URL) -> Path | None:
    """The database file of a SQLite URL, or None for PostgreSQL and in-memory SQLite."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _install_sqlite_hooks(engine: AsyncEngine, *, busy_timeout_ms: int, foreign_keys: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from issuing (or skipping) BEGIN itself; the begin hook below does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL never corrupts and survives process crashes (kill -9); only
        # an OS crash or power cut can roll back the last commits. FULL would fsync every
        # claim and heartbeat.
        cursor.execute("PRAGMA synchronous = NORMAL")
        # Off only for migrations: batch mode rebuilds tables, which cascades otherwise.
        cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(_BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def create_engine(
    url: str | URL,
    *,
    busy_timeout_ms: int = 30_000,
    foreign_keys: bool = True,
    **engine_kwargs: Any,
) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, busy timeout, foreign keys and BEGIN IMMEDIATE.

    The directory of a SQLite file is created if missing.
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, **engine_kwargs)
        _install_sqlite_hooks(engine, busy_timeout_ms=busy_timeout_ms, foreign_keys=foreign_keys)
        return engine
    engine_kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(parsed, **engine_kwargs)


class Database:
    """An engine plus the two kinds of session the rest of ``db`` uses.

    ``write()`` is one transaction that takes SQLite's write lock at BEGIN; ``read()`` is
    one transaction that only reads. Both commit on success and roll back on error.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._write = async_sessionmaker(engine, expire_on_commit=False)
        self._read = async_sessionmaker(
            engine.execution_options(**{_BEGIN_OPTION: "DEFERRED"}), expire_on_commit=False
        )

    @classmethod
    def from_url(cls, url: str | URL, **engine_kwargs: Any) -> Database:
        """A database for ``url`` (see :func:`create_engine`)."""
        return cls(create_engine(url, **engine_kwargs))

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session inside one write transaction (``BEGIN IMMEDIATE`` on SQLite)."""
        async with self._write() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session inside one read-only transaction (a deferred ``BEGIN`` on SQLite)."""
        async with self._read() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.dispose()

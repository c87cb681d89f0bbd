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

import importlib
import re
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
# Spellings managed PostgreSQL providers hand out: ``postgres://`` (Heroku, Aiven, Fly)
# names no SQLAlchemy dialect, and ``psycopg2`` is psycopg 3's predecessor, which takes the
# same libpq parameters; the async driver of each is what this project runs.
_BACKEND_ALIASES = {"postgres": "postgresql"}
_DRIVER_ALIASES = {"psycopg2": "psycopg", "psycopg_async": "psycopg"}
_SUPPORTED = {("sqlite", "aiosqlite"), ("postgresql", "asyncpg"), ("postgresql", "psycopg")}
_BEGIN_OPTION = "latent_painter_begin"

# libpq's sslmode values; asyncpg takes the same words as its ``ssl`` connect argument.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# Query parameters asyncpg takes as text through SQLAlchemy (the rest of libpq's are refused:
# asyncpg.connect() fails on them with a TypeError at the first connection).
_ASYNCPG_PARAMS = {"ssl", "target_session_attrs", "prepared_statement_cache_size"}
_URL_FORMS = "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB"


class DatabaseURLError(ValueError):
    """A database URL this project cannot use; the message says which ones it can."""


# libpq (and so psycopg) also takes the password as a query parameter: ?password=….
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)


def mask_password(text: str) -> str:
    """``text`` with what sits between ``//`` and ``@`` after the user name masked, and
    a ``password=`` query parameter's value.

    Works on text that is not a valid URL too (the one we could not parse is exactly the
    one to echo back). Without ``//`` everything before the ``@`` is masked.
    """
    text = _QUERY_PASSWORD.sub(r"\1***", text)
    at = text.rfind("@")
    if at < 0:
        return text
    slashes = text.find("//", 0, at)
    if slashes < 0:
        return "***" + text[at:]
    start = slashes + 2
    user, colon, _ = text[start:at].partition(":")
    return text[:start] + user + (":***" if colon else "") + text[at:]


def _single(parsed: URL, key: str) -> str:
    value = parsed.query[key]
    if isinstance(value, tuple):
        raise DatabaseURLError(f"[database] url gives {key} more than once")
    return value


def _asyncpg_query(parsed: URL) -> URL:
    """libpq's ``sslmode`` as asyncpg's ``ssl``; parameters asyncpg cannot take refused by name."""
    query = dict(parsed.query)
    if "sslmode" in query:
        mode = _single(parsed, "sslmode").lower()
        if mode not in SSL_MODES:
            raise DatabaseURLError(
                f"[database] url: sslmode must be one of {', '.join(SSL_MODES)}; got {mode!r}"
            )
        if "ssl" in query and query["ssl"] != mode:
            raise DatabaseURLError("[database] url gives both sslmode and ssl, differently; keep one")
        del query["sslmode"]
        query["ssl"] = mode
    if "channel_binding" in query:
        # asyncpg cannot bind the channel; "prefer" allows going without, "require" does not.
        if _single(parsed, "channel_binding").lower() == "require":
            raise DatabaseURLError(
                "[database] url asks for channel_binding=require, which asyncpg cannot do; "
                "use postgresql+psycopg://… instead (it takes every libpq parameter)"
            )
        del query["channel_binding"]
    unknown = sorted(set(query) - _ASYNCPG_PARAMS)
    if unknown:
        raise DatabaseURLError(
            f"[database] url has parameter(s) {', '.join(unknown)} that asyncpg does not take; "
            "remove them, or use postgresql+psycopg://… (it takes every libpq parameter)"
        )
    return parsed.set(query=query)


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and give it an async driver (``sqlite+aiosqlite``, ``postgresql+asyncpg``).

    ``postgres://`` and ``postgresql+psycopg2://`` are read as providers mean them, and
    ``sslmode`` becomes asyncpg's ``ssl``. Messages never show the password.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        shown = mask_password(url.render_as_string(hide_password=True) if isinstance(url, URL) else str(url))
        raise DatabaseURLError(f"[database] url {shown!r} cannot be parsed; {_URL_FORMS}") from None
    # Read from the name itself: asking SQLAlchemy loads the dialect, which fails for
    # "postgres" and for names it does not know, before we could say what is supported.
    backend, _, driver = parsed.drivername.lower().partition("+")
    backend = _BACKEND_ALIASES.get(backend, backend)
    driver = _DRIVER_ALIASES.get(driver, driver) or _ASYNC_DRIVERS.get(backend, "")
    if (backend, driver) not in _SUPPORTED:
        raise DatabaseURLError(
            f"[database] url uses {parsed.drivername!r}; supported are sqlite+aiosqlite, "
            "postgresql+asyncpg and postgresql+psycopg"
        )
    if f"{backend}+{driver}" != parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{driver}")
    if (backend, driver) == ("postgresql", "asyncpg"):
        parsed = _asyncpg_query(parsed)
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


def _check_driver_installed(parsed: URL) -> None:
    """Say which package a URL's driver needs, instead of a traceback deep in SQLAlchemy."""
    driver = parsed.get_driver_name()
    try:
        importlib.import_module(driver)
    except ImportError:
        package = "'latent-painter[postgres]' (psycopg[binary])" if driver == "psycopg" else driver
        raise DatabaseURLError(
            f"[database] url uses {parsed.drivername}, whose driver {driver!r} is not installed: "
            f"pip install {package}"
        ) from None


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
    _check_driver_installed(parsed)
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

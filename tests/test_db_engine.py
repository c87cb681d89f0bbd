"""SQLite set up for a shared queue: WAL, busy timeout, foreign keys, and BEGIN IMMEDIATE for writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from db import migrate
from db.engine import Database, DatabaseURLError, mask_password, normalize_url, sqlite_path
from tests.db_fixtures import create_postgres_database, drop_postgres_database, sqlite_url


async def test_sqlite_pragmas_and_database_file_location(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "nested" / "data")
    async with Database.from_url(url) as db, db.read() as session:
        assert (await session.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert (await session.execute(text("PRAGMA foreign_keys"))).scalar() == 1
        assert (await session.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
    assert (tmp_path / "nested" / "data" / "latent-painter.db").is_file()


async def test_writes_begin_immediate_and_reads_begin_deferred(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate.upgrade(url)
    async with Database.from_url(url) as db:
        emitted: list[str] = []
        event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: emitted.append(a[2]))
        async with db.write() as session:
            await session.execute(text("SELECT count(*) FROM jobs"))
            # The write lock is held from BEGIN on, before anything was written:
            # another connection cannot start a write transaction now.
            other = sqlite3.connect(sqlite_path(url), timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            other.close()
        async with db.read() as session:
            await session.execute(text("SELECT count(*) FROM jobs"))
        assert [s for s in emitted if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE", "BEGIN"]


async def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate.upgrade(url)
    async with Database.from_url(url) as db:
        with pytest.raises(Exception, match="FOREIGN KEY"):
            async with db.write() as session:
                await session.execute(
                    text(
                        "INSERT INTO gallery_votes (entry_id, user_id, created_at) "
                        "VALUES (999, 1, '2026-01-01')"
                    )
                )


def test_urls_get_async_drivers_and_unknown_ones_are_refused(tmp_path: Path) -> None:
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert normalize_url("postgresql+psycopg://u@h/db").drivername == "postgresql+psycopg"
    with pytest.raises(DatabaseURLError, match="supported are sqlite\\+aiosqlite"):
        normalize_url("mysql://u@h/db")
    with pytest.raises(DatabaseURLError, match="cannot be parsed"):
        normalize_url("not a url")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"


def test_default_database_lives_in_the_data_dir(tmp_path: Path) -> None:
    from bot.config import load_settings

    settings = load_settings(env={"LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path)})
    assert sqlite_path(settings.database_url) == tmp_path.resolve() / "latent-painter.db"
    settings = load_settings(env={"LATENT_PAINTER_DATABASE_URL": "postgresql+asyncpg://u@h/db"})
    assert settings.database_url == "postgresql+asyncpg://u@h/db"


@pytest.mark.parametrize(
    ("given", "used"),
    [
        # Heroku, Aiven and Fly hand out postgres://; SQLAlchemy knows no such dialect.
        ("postgres://u:pw@db.example:5432/app", "postgresql+asyncpg://u:pw@db.example:5432/app"),
        ("postgres+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        # libpq's sslmode is asyncpg's ssl (asyncpg.connect() refused sslmode with a TypeError).
        ("postgresql+asyncpg://u:pw@h/db?sslmode=require", "postgresql+asyncpg://u:pw@h/db?ssl=require"),
        ("postgresql://u@h/db?sslmode=verify-full", "postgresql+asyncpg://u@h/db?ssl=verify-full"),
        (
            "postgresql://u@h/db?sslmode=require&channel_binding=prefer",
            "postgresql+asyncpg://u@h/db?ssl=require",
        ),
        ("postgresql://u@h/db?ssl=disable", "postgresql+asyncpg://u@h/db?ssl=disable"),
        # libpq drivers take libpq's parameters as they are; psycopg2 URLs run on psycopg 3.
        ("postgresql+psycopg://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
        ("postgresql+psycopg2://u@h/db?sslmode=require", "postgresql+psycopg://u@h/db?sslmode=require"),
    ],
)
def test_provider_urls_are_read_as_meant(given: str, used: str) -> None:
    assert normalize_url(given).render_as_string(hide_password=False) == used
    assert normalize_url(normalize_url(given)) == normalize_url(given)  # alembic normalizes again


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h/db?sslmode=sometimes", r"\[database\] url: sslmode must be one of disable, allow"),
        ("postgresql://u@h/db?sslmode=require&ssl=disable", r"both sslmode and ssl"),
        ("postgresql://u@h/db?channel_binding=require", r"channel_binding=require, which asyncpg cannot do"),
        (
            "postgresql://u@h/db?options=-csearch_path%3Dx",
            r"parameter\(s\) options that asyncpg does not take",
        ),
        ("foo://u:pw@h/db", r"\[database\] url uses 'foo'; supported are"),
    ],
)
def test_urls_asyncpg_cannot_use_are_refused_naming_the_setting(url: str, message: str) -> None:
    with pytest.raises(DatabaseURLError, match=message) as refused:
        normalize_url(url)
    assert "pw" not in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg//u:hunter2@host/db",
        "postgresql://u:hunter2@host:port/db",
        "u:hunter2@host/db",
    ],
)
def test_a_url_that_cannot_be_parsed_is_echoed_without_its_password(url: str) -> None:
    with pytest.raises(DatabaseURLError, match=r"\[database\] url .* cannot be parsed") as refused:
        normalize_url(url)
    assert "hunter2" not in str(refused.value)
    assert mask_password("postgresql://u:hunter2@host/db") == "postgresql://u:***@host/db"
    assert mask_password("sqlite:///no/password/here.db") == "sqlite:///no/password/here.db"
    # libpq takes the password as a query parameter too.
    assert (
        mask_password("postgresql+psycopg://u@host/db?sslmode=require&password=hunter2&x=1")
        == "postgresql+psycopg://u@host/db?sslmode=require&password=***&x=1"
    )


async def test_provider_urls_connect_to_a_real_server() -> None:
    url = await create_postgres_database()
    try:
        server = make_url(url)
        plain = server.set(drivername="postgres").render_as_string(hide_password=False)
        # The test server has no TLS: "disable" connects, "require" is refused by asyncpg
        # itself (before, asyncpg.connect() failed on the unknown keyword sslmode).
        for given in (plain, f"{plain}?sslmode=disable", f"{plain}?sslmode=prefer"):
            async with Database.from_url(given) as db, db.read() as session:
                assert (await session.execute(text("SELECT 1"))).scalar() == 1, given
        psycopg = server.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
        async with Database.from_url(f"{psycopg}?sslmode=disable") as db, db.read() as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
        async with Database.from_url(f"{plain}?sslmode=require") as db:
            with pytest.raises(ConnectionError, match="SSL"):
                async with db.read() as session:
                    await session.execute(text("SELECT 1"))
        await migrate.upgrade(f"{plain}?sslmode=disable")
        assert (await migrate.schema_state(f"{plain}?sslmode=disable")).is_current
    finally:
        await drop_postgres_database(url)


def test_a_driver_that_is_not_installed_is_named_with_its_package(monkeypatch) -> None:
    """postgresql+psycopg:// is documented for libpq parameters; without the package the
    engine said nothing useful (a 40-line ModuleNotFoundError from deep in SQLAlchemy)."""
    import sys

    from db.engine import DatabaseURLError, create_engine

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a machine without it
    with pytest.raises(
        DatabaseURLError, match=r"driver 'psycopg' is not installed: pip install 'latent-painter\[postgres\]'"
    ):
        create_engine("postgresql+psycopg://u:secret@db.example/x?channel_binding=require")

"""SQLite set up for a shared queue: WAL, busy timeout, foreign keys, and BEGIN IMMEDIATE for writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event, text

from db import migrate
from db.engine import Database, DatabaseURLError, normalize_url, sqlite_path
from tests.db_fixtures import sqlite_url


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

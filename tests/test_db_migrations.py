"""The schema comes only from migrations: up from empty, down to nothing, and equal to the models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Index, MetaData

from db import migrate
from db.migrate import SchemaError
from db.models import Base
from tests.db_fixtures import BACKENDS, ROOT, dispose_url, fresh_url, sqlite_url

TABLES = [
    "alembic_version",
    "database_identity",
    "gallery_entries",
    "gallery_votes",
    "guild_settings",
    "jobs",
    "results",
]


@pytest.fixture(params=BACKENDS)
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path):
    url = await fresh_url(request.param, tmp_path, migrated=False)
    try:
        yield url
    finally:
        await dispose_url(request.param, url)


async def test_upgrade_from_empty_to_head_and_down_to_base(empty_url: str) -> None:
    assert (await migrate.schema_state(empty_url)).current is None
    await migrate.upgrade(empty_url)
    state = await migrate.schema_state(empty_url)
    assert state.is_current and state.current == migrate.head_revision()
    assert await migrate.table_names(empty_url) == TABLES
    await migrate.downgrade(empty_url, "base")
    assert await migrate.current(empty_url) is None
    assert await migrate.table_names(empty_url) == ["alembic_version"]
    # And up again: downgrade left nothing behind that blocks a fresh upgrade.
    await migrate.upgrade(empty_url)
    assert await migrate.table_names(empty_url) == TABLES


async def test_models_match_the_migrated_schema(empty_url: str) -> None:
    await migrate.upgrade(empty_url)
    assert await migrate.diff(empty_url) == []
    await migrate.check(empty_url)


async def test_the_comparison_notices_a_model_the_migrations_lack(empty_url: str, monkeypatch) -> None:
    # Proves the no-diff test above can fail: an index only in the models shows up.
    await migrate.upgrade(empty_url)
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    Index("ix_jobs_extra", metadata.tables["jobs"].c.kind)
    monkeypatch.setattr(migrate.Base, "metadata", metadata)
    changes = await migrate.diff(empty_url)
    assert [c[0] for c in changes] == ["add_index"]
    with pytest.raises(SchemaError, match="differs from the models"):
        await migrate.check(empty_url)


async def test_an_old_schema_is_refused_with_a_clear_message(empty_url: str) -> None:
    with pytest.raises(SchemaError, match="no schema yet; run `latent-painter db upgrade`"):
        await migrate.ensure_schema_current(empty_url)
    await migrate.upgrade(empty_url)
    await migrate.ensure_schema_current(empty_url)  # current: fine


async def test_embedded_database_is_upgraded_on_request(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "fresh" / "data")
    state = await migrate.ensure_schema_current(url, upgrade_if_old=True)
    assert state.is_current
    assert (tmp_path / "fresh" / "data" / "latent-painter.db").is_file()


async def test_a_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate.upgrade(url)
    from db.engine import Database

    async with Database.from_url(url) as db, db.write() as session:
        from sqlalchemy import text

        await session.execute(text("UPDATE alembic_version SET version_num = 'ffff9999'"))
    with pytest.raises(SchemaError, match="ffff9999, which this latent-painter does not know"):
        await migrate.ensure_schema_current(url, upgrade_if_old=True)


def test_migrations_are_found_from_any_directory_without_alembic_ini(tmp_path: Path) -> None:
    # As an installed package would be used: another working directory, no alembic.ini.
    assert migrate.script_location() == ROOT / "migrations"
    assert not (ROOT / "alembic.ini").exists()
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LATENT_PAINTER_DATABASE_URL", None)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "bot.cli_queue", "db", *a, "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    current = run("current")
    assert current.returncode == 0, current.stderr
    assert "revision none" in current.stdout
    upgrade = run("upgrade")
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"schema at revision {migrate.head_revision()}" in upgrade.stdout
    check = run("check")
    assert check.returncode == 0 and "matches the models" in check.stdout, check.stderr
    downgrade = run("downgrade", "base")
    assert downgrade.returncode == 0 and "base (empty)" in downgrade.stdout, downgrade.stderr
    failed = run("check")
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines() == [
        "latent-painter db: error: database has no schema yet; run `latent-painter db upgrade` first"
    ]


def test_downgrading_to_base_with_jobs_in_it_asks_first(tmp_path: Path) -> None:
    """`db downgrade base` drops every table: with jobs and results in them it is refused,
    naming what would be lost, until --yes; a step that keeps the tables goes ahead."""
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("LATENT_PAINTER_DATABASE_URL", None)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "bot.cli", *a, "--config", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for prompt in ("a lighthouse", "a forest"):
        assert run("submit", prompt).returncode == 0
    for revision in ("base", f"-{len(list(migrate_versions()))}"):
        refused = run("db", "downgrade", revision)
        assert refused.returncode == 2, refused.stderr
        assert f"downgrading to {revision} drops every table and its rows (2 jobs)" in refused.stderr
        assert "--yes" in refused.stderr
    assert run("jobs").stdout.count("queued") == 2
    stepped = run("db", "downgrade", "-1")
    assert stepped.returncode == 0, stepped.stderr
    assert run("db", "upgrade").returncode == 0
    assert run("jobs").stdout.count("queued") == 2
    emptied = run("db", "downgrade", "base", "--yes")
    assert emptied.returncode == 0 and "base (empty)" in emptied.stdout, emptied.stderr


def migrate_versions() -> list[Path]:
    return sorted((ROOT / "migrations" / "versions").glob("0*.py"))


async def test_the_waiting_time_estimate_reads_an_index_not_every_finished_job(tmp_path: Path) -> None:
    """Members are told how long they wait from the newest finished jobs: on a server with
    months of history that query sorted every finished job (a temporary B-tree) per reply."""
    from sqlalchemy import select, text

    from db.engine import Database
    from db.models import Job

    url = await fresh_url("sqlite", tmp_path)
    query = (
        select(Job.started_at, Job.finished_at)
        .where(Job.status == "done", Job.started_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(20)
    )
    async with Database.from_url(url) as db, db.read() as session:
        compiled = query.compile(dialect=session.bind.dialect, compile_kwargs={"literal_binds": True})
        plan = " ".join(
            str(row[-1]) for row in (await session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
        )
    assert "ix_jobs_status_finished_at" in plan and "TEMP B-TREE" not in plan, plan

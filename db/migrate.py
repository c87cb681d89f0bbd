"""Run the Alembic migrations from code: upgrade, downgrade, current, check, and the start-up guard.

The migrations live in the ``migrations`` package next to this one and are found by
their location on disk, so an installed copy (``pip install latent-painter``) needs no
``alembic.ini`` and works from any directory. Every function opens its own short-lived
engine (SQLite foreign keys off while tables are rebuilt, checked again afterwards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.pool import NullPool

import migrations
from db.engine import create_engine, normalize_url
from db.models import Base, DatabaseIdentity

T = TypeVar("T")


class SchemaError(RuntimeError):
    """The database schema is not the one this version of latent-painter needs."""


class MigrationError(RuntimeError):
    """A migration command that cannot be carried out (unknown revision, broken foreign keys)."""


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``, wherever the package is installed."""
    return Path(migrations.__file__).resolve().parent


def alembic_config(url: str | URL) -> Config:
    """An Alembic ``Config`` built in memory for ``url`` (no ``alembic.ini`` involved)."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    rendered = normalize_url(url).render_as_string(hide_password=False)
    # ConfigParser interpolation would eat a '%' in a password.
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision the shipped migrations know."""
    heads = ScriptDirectory(str(script_location())).get_heads()
    if len(heads) != 1:
        raise MigrationError(f"migrations have {len(heads)} heads {heads}; expected exactly one")
    return heads[0]


async def _on_connection(url: str | URL, work: Callable[[Connection], T]) -> T:
    engine = create_engine(url, foreign_keys=False, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            value = await connection.run_sync(work)
            await connection.commit()
            return value
    finally:
        await engine.dispose()


def _alembic(url: str | URL, action: Callable[[Config], Any]) -> Callable[[Connection], Any]:
    def run(connection: Connection) -> Any:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        try:
            value = action(config)
        except CommandError as exc:
            raise MigrationError(str(exc)) from None
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise MigrationError(f"foreign keys broken after migrating: {broken[:5]}")
        return value

    return run


async def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest)."""
    await _on_connection(url, _alembic(url, lambda cfg: command.upgrade(cfg, revision)))


async def downgrade(url: str | URL, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``base`` empties it)."""
    await _on_connection(url, _alembic(url, lambda cfg: command.downgrade(cfg, revision)))


async def rows_dropped(url: str | URL, revision: str) -> dict[str, int]:
    """Rows a downgrade to ``revision`` would delete, by table: every row when it reaches
    ``base`` (the first migration creates every table); empty when nothing would be lost."""

    def count(connection: Connection) -> dict[str, int]:
        current = _current(connection)
        if current is None:
            return {}
        reaches_base = revision == "base"
        if revision.startswith("-") and revision[1:].isdigit():
            script = ScriptDirectory(str(script_location()))
            depth = len(list(script.iterate_revisions(current, "base")))
            reaches_base = int(revision[1:]) >= depth
        if not reaches_base:
            return {}
        present = set(inspect(connection).get_table_names())
        counts: dict[str, int] = {}
        for table in Base.metadata.sorted_tables:
            # The database's own identity row is made by a migration, not by anyone's work.
            if table.name in present and table.name != DatabaseIdentity.__tablename__:
                rows = connection.execute(select(func.count()).select_from(table)).scalar_one()
                if rows:
                    counts[table.name] = int(rows)
        return counts

    return await _on_connection(url, count)


def _current(connection: Connection) -> str | None:
    heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None


async def current(url: str | URL) -> str | None:
    """The revision the database is at, or None for a database without a schema."""
    return await _on_connection(url, _current)


async def diff(url: str | URL) -> list[Any]:
    """What autogenerate would change to make the database match the models (empty: none)."""

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True, "render_as_batch": True})
        return list(compare_metadata(context, Base.metadata))

    return await _on_connection(url, compare)


async def check(url: str | URL) -> None:
    """Raise :class:`SchemaError` unless the database is at head and matches the models."""
    await ensure_schema_current(url)
    changes = await diff(url)
    if changes:
        raise SchemaError(f"database schema differs from the models: {changes}")


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


async def schema_state(url: str | URL) -> SchemaState:
    """Where the database's schema is, beside where this version needs it."""
    return SchemaState(current=await current(url), head=head_revision())


async def ensure_schema_current(url: str | URL, *, upgrade_if_old: bool = False) -> SchemaState:
    """Refuse to go on with a database whose schema is not this version's; optionally upgrade it.

    ``upgrade_if_old`` suits the embedded SQLite database that only this machine uses; a
    shared PostgreSQL database is better upgraded deliberately with ``latent-painter db upgrade``.
    """
    state = await schema_state(url)
    if state.is_current:
        return state
    script = ScriptDirectory(str(script_location()))
    if state.current is not None:
        try:
            script.get_revision(state.current)
        except CommandError:
            raise SchemaError(
                f"database schema is at revision {state.current}, which this latent-painter does "
                "not know (made by a newer version?); upgrade latent-painter"
            ) from None
    if upgrade_if_old:
        await upgrade(url)
        return await schema_state(url)
    if state.current is None:
        raise SchemaError("database has no schema yet; run `latent-painter db upgrade` first")
    raise SchemaError(
        f"database schema is at revision {state.current} but this latent-painter needs "
        f"{state.head}; run `latent-painter db upgrade` first"
    )


async def table_names(url: str | URL) -> list[str]:
    """The tables in the database, sorted (the Alembic version table included)."""

    def names(connection: Connection) -> list[str]:
        if connection.dialect.name == "sqlite":
            rows = connection.execute(
                text("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            )
        else:
            rows = connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            )
        return sorted(row[0] for row in rows)

    return await _on_connection(url, names)

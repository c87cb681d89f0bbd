"""Alembic environment: runs migrations on a connection it is handed, or opens its own.

``db.migrate`` hands over a connection (``config.attributes["connection"]``) so migrations
can run from inside an event loop and without any ``alembic.ini``. The plain ``alembic``
command works too: it gets an async engine from ``sqlalchemy.url`` and runs it here.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from db.engine import create_engine
from db.models import Base, UTCDateTime

config = context.config
target_metadata = Base.metadata


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations must not import model code (it changes; they must not), so the
    # UTC timestamp type is written as the plain column type it stores as.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
        **kwargs,
    )


def run_migrations_on(connection: Connection) -> None:
    """Run the pending migrations (or the comparison, for ``check``) on one connection."""
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    # Foreign keys off on SQLite: batch mode drops and recreates tables.
    engine = create_engine(url, foreign_keys=False, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations_on)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (shared := config.attributes.get("connection")) is not None:
    run_migrations_on(shared)
else:
    asyncio.run(_run_with_own_engine(config.get_main_option("sqlalchemy.url") or ""))

"""Database identity: one row with a random id, so a data directory can tell its database.

The artifact store and the bot's delivery ledger are kept per database: a data directory
shared with another database (a switch to PostgreSQL, a mistyped SQLite URL, a reset)
must be refused rather than swept or trusted. The id is made here, once per database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "database_identity",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_database_identity")),
    )
    created_at = datetime.now(UTC)
    if op.get_context().dialect.name == "sqlite":
        # As the models' UTCDateTime stores it there: naive UTC text.
        created_at = created_at.replace(tzinfo=None)
    op.bulk_insert(table, [{"id": uuid.uuid4().hex, "created_at": created_at}])


def downgrade() -> None:
    # Upgrading again makes a new id: data directories adopted by this one then refuse it.
    op.drop_table("database_identity")

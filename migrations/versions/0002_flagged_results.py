"""Guild setting: what to do with results the safety checker flagged.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(
            sa.Column("flagged_results", sa.String(length=16), server_default="refuse", nullable=False)
        )
        batch.create_check_constraint("flagged_results", "flagged_results IN ('refuse', 'spoiler')")


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_constraint("flagged_results", type_="check")
        batch.drop_column("flagged_results")

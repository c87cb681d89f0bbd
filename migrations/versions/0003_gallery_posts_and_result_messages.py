"""Where things were posted: gallery and hall-of-fame posts of each entry, each result's message.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # All nullable: rows from before this revision have no known posts or messages.
    with op.batch_alter_table("gallery_entries") as batch:
        batch.add_column(sa.Column("post_channel_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("post_message_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("hall_of_fame_channel_id", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("message_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("message_id")
    with op.batch_alter_table("gallery_entries") as batch:
        batch.drop_column("hall_of_fame_channel_id")
        batch.drop_column("post_message_id")
        batch.drop_column("post_channel_id")

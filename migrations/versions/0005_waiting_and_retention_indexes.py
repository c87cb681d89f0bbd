"""Indexes for the waiting times told to members and for pruning old results.

The estimate of how long a member waits reads the newest finished jobs' durations
(status, finished_at); `latent-painter results prune --older-than` reads results by age
(created_at). Both sorted the whole table on a server with months of history.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_status_finished_at", "jobs", ["status", "finished_at"])
    op.create_index("ix_results_created_at", "results", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_results_created_at", table_name="results")
    op.drop_index("ix_jobs_status_finished_at", table_name="jobs")

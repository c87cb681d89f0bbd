"""Initial schema: jobs, results, gallery entries and votes, guild settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("status IN ('queued', 'running')")


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("allowed_channel_ids", sa.JSON(), nullable=False),
        sa.Column("gallery_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("hall_of_fame_channel_id", sa.BigInteger(), nullable=True),
        sa.Column("hall_of_fame_votes", sa.Integer(), nullable=True),
        sa.Column("per_user_cap", sa.Integer(), nullable=True),
        sa.Column("max_steps", sa.Integer(), nullable=True),
        sa.Column("max_side", sa.Integer(), nullable=True),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("interaction_token", sa.Text(), nullable=True),
        sa.Column("token_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("progress_step", sa.Integer(), nullable=True),
        sa.Column("progress_frame", sa.Integer(), nullable=True),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('paint', 'transition')", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        sa.CheckConstraint("attempts >= 0 AND max_attempts >= 1", name=op.f("ck_jobs_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.create_index("ix_jobs_status_heartbeat_at", ["status", "heartbeat_at"])
        batch_op.create_index("ix_jobs_status_run_at", ["status", "run_at"])
        batch_op.create_index("ix_jobs_user_id_started_at", ["user_id", "started_at"])
        batch_op.create_index("ix_jobs_user_id_status", ["user_id", "status"])
        batch_op.create_index(
            "uq_jobs_dedupe_key_live", ["dedupe_key"], unique=True, sqlite_where=LIVE, postgresql_where=LIVE
        )

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("public_id", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("negative_prompt", sa.Text(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("steps", sa.Integer(), nullable=True),
        sa.Column("guidance", sa.Float(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("scheduler", sa.String(length=32), nullable=True),
        sa.Column("model_id", sa.String(length=255), nullable=True),
        sa.Column("vae_id", sa.String(length=255), nullable=True),
        sa.Column("effect", sa.String(length=16), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("video_key", sa.String(length=512), nullable=True),
        sa.Column("image_key", sa.String(length=512), nullable=True),
        sa.Column("heatmap_key", sa.String(length=512), nullable=True),
        sa.Column("trail_key", sa.String(length=512), nullable=True),
        sa.Column("sizes", sa.JSON(), nullable=False),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "visibility IN ('private', 'guild', 'public')", name=op.f("ck_results_visibility")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_results_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_results_job_id")),
        sa.UniqueConstraint("public_id", name=op.f("uq_results_public_id")),
    )
    with op.batch_alter_table("results") as batch_op:
        batch_op.create_index(batch_op.f("ix_results_guild_id"), ["guild_id"])
        batch_op.create_index("ix_results_owner_id_created_at", ["owner_id", "created_at"])

    op.create_table(
        "gallery_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("submitted_by", sa.BigInteger(), nullable=False),
        sa.Column("votes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("hall_of_fame_message_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_id"],
            ["results.id"],
            name=op.f("fk_gallery_entries_result_id_results"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gallery_entries")),
        sa.UniqueConstraint("guild_id", "result_id", name=op.f("uq_gallery_entries_guild_id_result_id")),
    )
    with op.batch_alter_table("gallery_entries") as batch_op:
        batch_op.create_index("ix_gallery_entries_guild_id_created_at", ["guild_id", "created_at"])
        batch_op.create_index("ix_gallery_entries_guild_id_votes", ["guild_id", "votes"])
        batch_op.create_index(batch_op.f("ix_gallery_entries_result_id"), ["result_id"])

    op.create_table(
        "gallery_votes",
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["gallery_entries.id"],
            name=op.f("fk_gallery_votes_entry_id_gallery_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("entry_id", "user_id", name=op.f("pk_gallery_votes")),
    )


def downgrade() -> None:
    op.drop_table("gallery_votes")
    with op.batch_alter_table("gallery_entries") as batch_op:
        batch_op.drop_index(batch_op.f("ix_gallery_entries_result_id"))
        batch_op.drop_index("ix_gallery_entries_guild_id_votes")
        batch_op.drop_index("ix_gallery_entries_guild_id_created_at")
    op.drop_table("gallery_entries")
    with op.batch_alter_table("results") as batch_op:
        batch_op.drop_index("ix_results_owner_id_created_at")
        batch_op.drop_index(batch_op.f("ix_results_guild_id"))
    op.drop_table("results")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_index("uq_jobs_dedupe_key_live", sqlite_where=LIVE, postgresql_where=LIVE)
        batch_op.drop_index("ix_jobs_user_id_status")
        batch_op.drop_index("ix_jobs_user_id_started_at")
        batch_op.drop_index("ix_jobs_status_run_at")
        batch_op.drop_index("ix_jobs_status_heartbeat_at")
    op.drop_table("jobs")
    op.drop_table("guild_settings")

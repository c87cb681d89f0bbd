"""The schema, as typed SQLAlchemy 2 models.

The tables are only ever created by the Alembic migrations in ``migrations/``; a test
compares these models with the migrated schema so the two cannot drift apart.
Discord ids are 64-bit snowflakes and are stored as plain ``BigInteger`` values.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable, predictable constraint names: batch migrations on SQLite need names to
# find constraints again, and PostgreSQL's own defaults differ from SQLite's.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC (the only kind of time the schema stores)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so the value is stored
    as naive UTC text and given its zone back on the way out. Naive datetimes are refused
    on the way in, because guessing their zone is how queues end up hours late.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware UTC time")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobKind(StrEnum):
    PAINT = "paint"
    TRANSITION = "transition"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


LIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class Visibility(StrEnum):
    PRIVATE = "private"  # the owner only (and the guild's gallery, once submitted there)
    GUILD = "guild"  # members of the guild it was made in
    PUBLIC = "public"  # anyone who knows the id


def _in(column: str, values: Any) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    """One unit of work in the queue: a paint or a transition, and where it stands."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    # The requester, as plain values; the interaction token lets the bot answer in place
    # until it expires (Discord: 15 minutes), after which it posts in the channel.
    user_id: Mapped[int] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    interaction_token: Mapped[str | None] = mapped_column(Text)
    token_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Lower runs first, as in River: 0 is normal, negative jumps ahead, positive waits.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_frame: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    result: Mapped[Result | None] = relationship(back_populates="job", lazy="raise")

    __table_args__ = (
        CheckConstraint(_in("kind", JobKind), name="kind"),
        CheckConstraint(_in("status", JobStatus), name="status"),
        CheckConstraint("attempts >= 0 AND max_attempts >= 1", name="attempts"),
        # Claim order: ready queued jobs by run_at, and stale running jobs by heartbeat.
        Index("ix_jobs_status_run_at", "status", "run_at"),
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        # Per-user cap and round-robin ("when was this user last served").
        Index("ix_jobs_user_id_status", "user_id", "status"),
        Index("ix_jobs_user_id_started_at", "user_id", "started_at"),
        # Waiting times told to members: the newest finished jobs' durations.
        Index("ix_jobs_status_finished_at", "status", "finished_at"),
        # A dedupe key is unique among live jobs only: once a job is finished, the same
        # request may be made again.
        Index(
            "uq_jobs_dedupe_key_live",
            "dedupe_key",
            unique=True,
            sqlite_where=text(_in("status", LIVE_STATUSES)),
            postgresql_where=text(_in("status", LIVE_STATUSES)),
        ),
    )

    @property
    def is_live(self) -> bool:
        return self.status in LIVE_STATUSES


class Result(Base):
    """A finished generation: what was asked for, what produced it, and where its files are."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # What people type (``/transition from:K3F97QXM``): short, case-insensitive, unambiguous.
    public_id: Mapped[str] = mapped_column(String(16), unique=True)
    # One result per job, enforced by the database: a job can never be delivered twice.
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    owner_id: Mapped[int] = mapped_column(BigInteger)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int | None] = mapped_column(BigInteger)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int | None] = mapped_column(BigInteger)
    steps: Mapped[int | None] = mapped_column(Integer)
    guidance: Mapped[float | None] = mapped_column(Float)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    scheduler: Mapped[str | None] = mapped_column(String(32))
    model_id: Mapped[str | None] = mapped_column(String(255))
    vae_id: Mapped[str | None] = mapped_column(String(255))
    effect: Mapped[str | None] = mapped_column(String(16))
    format: Mapped[str | None] = mapped_column(String(8))
    # Every parameter the job ran with, including ones without a column of their own.
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Artifact store keys, never filesystem paths: the store decides where bytes live.
    video_key: Mapped[str | None] = mapped_column(String(512))
    image_key: Mapped[str | None] = mapped_column(String(512))
    heatmap_key: Mapped[str | None] = mapped_column(String(512))
    trail_key: Mapped[str | None] = mapped_column(String(512))
    # Bytes per artifact role, and the animation's length.
    sizes: Mapped[dict[str, int]] = mapped_column(JSON)
    frames: Mapped[int | None] = mapped_column(Integer)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    visibility: Mapped[str] = mapped_column(String(16), default=Visibility.PRIVATE.value)
    # The message that delivered the result (in ``channel_id``), for jump links in /history;
    # None until it is delivered, and for results delivered before the column existed.
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job | None] = relationship(back_populates="result", lazy="raise")

    __table_args__ = (
        CheckConstraint(_in("visibility", Visibility), name="visibility"),
        Index("ix_results_owner_id_created_at", "owner_id", "created_at"),
        # `latent-painter results prune --older-than`.
        Index("ix_results_created_at", "created_at"),
    )

    def artifact_keys(self) -> dict[str, str]:
        """Role -> artifact key for each artifact this result has."""
        keys = {
            "video": self.video_key,
            "image": self.image_key,
            "heatmap": self.heatmap_key,
            "trail": self.trail_key,
        }
        return {role: key for role, key in keys.items() if key}


class GalleryEntry(Base):
    """A result submitted to one guild's community gallery."""

    __tablename__ = "gallery_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    submitted_by: Mapped[int] = mapped_column(BigInteger)
    # Kept equal to the number of vote rows, in the same transaction as each vote,
    # so "top" sorts on an indexed column instead of counting.
    votes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Where the entry was posted in the gallery, so the post can be taken down with the entry.
    post_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    post_message_id: Mapped[int | None] = mapped_column(BigInteger)
    # Set once when the entry is posted to the hall of fame, so it is posted only once.
    hall_of_fame_message_id: Mapped[int | None] = mapped_column(BigInteger)
    # The hall-of-fame channel of that post (the server may pick another channel later).
    hall_of_fame_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    result: Mapped[Result] = relationship(lazy="raise")

    __table_args__ = (
        UniqueConstraint("guild_id", "result_id"),
        Index("ix_gallery_entries_guild_id_created_at", "guild_id", "created_at"),
        Index("ix_gallery_entries_guild_id_votes", "guild_id", "votes"),
    )


class GalleryVote(Base):
    """One member's vote on one gallery entry (the primary key makes it one per member)."""

    __tablename__ = "gallery_votes"

    entry_id: Mapped[int] = mapped_column(
        ForeignKey("gallery_entries.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GuildSettings(Base):
    """Per-guild settings that admins (Manage Server) change from Discord."""

    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # Channel ids where commands are allowed; an empty list means everywhere.
    allowed_channel_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    gallery_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    hall_of_fame_channel_id: Mapped[int | None] = mapped_column(BigInteger)
    hall_of_fame_votes: Mapped[int | None] = mapped_column(Integer)
    # Limits tighter than the bot's own; None means "use the bot's setting".
    per_user_cap: Mapped[int | None] = mapped_column(Integer)
    max_steps: Mapped[int | None] = mapped_column(Integer)
    max_side: Mapped[int | None] = mapped_column(Integer)
    # What the bot does with a result the safety checker flagged: "refuse" it, or show it
    # as spoilers in age-restricted channels only.
    flagged_results: Mapped[str] = mapped_column(String(16), default="refuse", server_default="refuse")
    updated_by: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("flagged_results IN ('refuse', 'spoiler')", name="flagged_results"),)


class DatabaseIdentity(Base):
    """Which database this is: one row, with a random id made by the migration that made the table.

    A data directory remembers the id of the database it belongs to (the artifact store's
    marker, the delivery ledger's file name), so that it is never used with another one:
    job ids of two databases mean different jobs.
    """

    __tablename__ = "database_identity"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

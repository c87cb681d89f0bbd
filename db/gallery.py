"""The community gallery of each guild (entries, one vote per member per entry) and guild settings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from db.engine import Database
from db.models import GalleryEntry, GalleryVote, GuildSettings, Job, Result, utcnow
from db.results import ResultNotFound, normalize_public_id, typed_match


class GalleryError(ValueError):
    """A gallery request that cannot be done; the message is meant for the member who asked."""


class EntryNotFound(GalleryError, LookupError):
    """No such gallery entry in this guild."""


class OwnEntryVote(GalleryError):
    """A vote for an entry the member submitted, or whose result they made."""


@dataclass(frozen=True)
class VoteOutcome:
    """After a vote toggle: whether the member's vote now stands, and the entry's total."""

    voted: bool
    votes: int


@dataclass(frozen=True)
class GalleryItem:
    entry: GalleryEntry
    result: Result


@dataclass(frozen=True)
class GalleryPost:
    """A message the bot posted for an entry: its gallery post or its hall-of-fame post."""

    channel_id: int
    message_id: int


def posts_of(entry: GalleryEntry) -> list[GalleryPost]:
    """The entry's known posts (entries from before posts were recorded may have none)."""
    posts = []
    if entry.post_channel_id is not None and entry.post_message_id is not None:
        posts.append(GalleryPost(entry.post_channel_id, entry.post_message_id))
    if entry.hall_of_fame_channel_id is not None and entry.hall_of_fame_message_id is not None:
        posts.append(GalleryPost(entry.hall_of_fame_channel_id, entry.hall_of_fame_message_id))
    return posts


async def submit(db: Database, guild_id: int, public_id: str, user_id: int) -> GalleryEntry:
    """Put one of the member's own results into the guild's gallery.

    Raises :class:`~db.results.ResultNotFound` if the result is not theirs and
    :class:`GalleryError` if it is already in this gallery.
    """
    canonical = normalize_public_id(public_id)
    async with db.write() as session:
        result = await session.scalar(
            select(Result).where(Result.public_id == canonical, Result.owner_id == user_id)
        )
        if result is None:
            raise ResultNotFound(f"no result of yours with id {canonical}")
        entry = GalleryEntry(guild_id=guild_id, result_id=result.id, submitted_by=user_id, votes=0)
        try:
            async with session.begin_nested():
                session.add(entry)
        except IntegrityError:
            raise GalleryError(f"{canonical} is already in this server's gallery") from None
    return entry


async def remove(
    db: Database, guild_id: int, entry_id: int, user_id: int, *, is_admin: bool = False
) -> GalleryEntry:
    """Take an entry out of the gallery: its submitter may, and so may a guild admin.

    Returns the removed entry, whose posts (:func:`posts_of`) the caller takes down.
    """
    async with db.write() as session:
        entry = await session.scalar(
            select(GalleryEntry).where(GalleryEntry.id == entry_id, GalleryEntry.guild_id == guild_id)
        )
        if entry is None:
            raise EntryNotFound(f"no gallery entry {entry_id} in this server")
        if entry.submitted_by != user_id and not is_admin:
            raise GalleryError("only the member who submitted it, or an admin, can remove this entry")
        await session.delete(entry)
    return entry


async def remove_result(
    db: Database, guild_id: int, public_id: str, user_id: int, *, moderator: bool = False
) -> GalleryItem:
    """Take a result out of the guild's gallery, by its public id.

    Its submitter may, and so may the result's owner and a ``moderator`` (the bot decides
    who that is: Manage Messages or Manage Server). Raises :class:`EntryNotFound` when the
    result is not in this gallery and :class:`GalleryError` when the member may not remove
    it; returns the removed entry with its result, so the caller can take its posts down.
    """
    canonical = normalize_public_id(public_id)
    async with db.write() as session:
        row = (
            await session.execute(
                select(GalleryEntry, Result)
                .join(Result, Result.id == GalleryEntry.result_id)
                .where(GalleryEntry.guild_id == guild_id, Result.public_id == canonical)
                .with_for_update(of=GalleryEntry)
            )
        ).first()
        if row is None:
            raise EntryNotFound(f"{canonical} is not in this server's gallery")
        entry, result = row
        if user_id not in (entry.submitted_by, result.owner_id) and not moderator:
            raise GalleryError(
                f"only the member who submitted {canonical}, the member who made it, or a member "
                "with Manage Messages or Manage Server can take it out of the gallery"
            )
        await session.delete(entry)
    return GalleryItem(entry=entry, result=result)


async def discard_entry(db: Database, entry_id: int) -> None:
    """Delete an entry whose gallery post could not be made, so nothing half-written stays."""
    async with db.write() as session:
        await session.execute(delete(GalleryEntry).where(GalleryEntry.id == entry_id))


async def record_post(db: Database, entry_id: int, channel_id: int, message_id: int) -> bool:
    """Record where an entry was posted in the gallery; False if the entry is gone meanwhile.

    An entry removed (or its result deleted) while its post was being made returns False,
    and the caller takes the new post down again.
    """
    async with db.write() as session:
        changed = await session.execute(
            update(GalleryEntry)
            .where(GalleryEntry.id == entry_id)
            .values(post_channel_id=channel_id, post_message_id=message_id)
        )
    return changed.rowcount == 1


async def get_item(db: Database, guild_id: int, entry_id: int) -> GalleryItem:
    """One entry of the guild's gallery with its result; :class:`EntryNotFound` if there is none."""
    async with db.read() as session:
        row = (
            await session.execute(
                select(GalleryEntry, Result)
                .join(Result, Result.id == GalleryEntry.result_id)
                .where(GalleryEntry.id == entry_id, GalleryEntry.guild_id == guild_id)
            )
        ).first()
    if row is None:
        raise EntryNotFound(f"no gallery entry {entry_id} in this server")
    return GalleryItem(entry=row[0], result=row[1])


async def result_posts(db: Database, result_id: int) -> list[GalleryPost]:
    """Every gallery and hall-of-fame post to take down when a result is deleted, in every guild.

    Called just before the result's row is deleted. Its own entries go with the row (the
    database cascades); entries of other members' results made from it (repaints and
    transitions of it, and what was made from those) show its picture under another name,
    so they are withdrawn here, and their posts are in the list too.
    """
    async with db.write() as session:
        source = await session.get(Result, result_id)
        if source is None:
            return []
        made_from = [r.id for r in await _made_from(session, source) if r.owner_id != source.owner_id]
        entries = (
            await session.scalars(
                select(GalleryEntry).where(GalleryEntry.result_id.in_([result_id, *made_from]))
            )
        ).all()
        withdrawn = [entry.id for entry in entries if entry.result_id != result_id]
        if withdrawn:
            await session.execute(delete(GalleryEntry).where(GalleryEntry.id.in_(withdrawn)))
    return [post for entry in entries for post in posts_of(entry)]


# -- where a result's picture came from ----------------------------------------------------------

# How many results a lineage is followed through, either way (each step is one query; a
# chain of repaints of repaints this long is already far past what members make).
MAX_LINEAGE = 64
# The parameters that name another result (its public id) or its trail (an artifact key).
_SOURCE_IDS = ("from_result", "to_result")
_SOURCE_TRAILS = ("trail_key", "from_trail", "to_trail")


@dataclass(frozen=True)
class Borrowed:
    """A result another member made (or one nobody can tell the maker of) that a result comes from.

    ``relation`` says how: ``repaints``, ``is a transition from``, ``is a transition to``,
    or ``comes from`` when it is further up (a repaint of a repaint of it).
    """

    public_id: str | None  # None: a repaint from before repaints named their source
    owner_id: int | None  # None: deleted, and no job is left that says who made it
    relation: str


def _sources(kind: str, params: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """What a result was painted from: (relation, public id, trail key) of each result it uses."""
    if kind == "transition":
        return [
            ("is a transition from", params.get("from_result"), params.get("from_trail")),
            ("is a transition to", params.get("to_result"), params.get("to_trail")),
        ]
    if params.get("trail_key"):  # "Repaint with…": another effect over a stored trail
        return [("repaints", params.get("from_result"), params.get("trail_key"))]
    return []  # painted from a prompt (or an uploaded picture): nobody else's result


async def borrowed_source(
    db: Database,
    public_id: str,
    user_id: int,
    *,
    job_of_key: Callable[[str], int | None] | None = None,
) -> Borrowed | None:
    """The first result up ``public_id``'s lineage that is not ``user_id``'s; None when all are theirs.

    The lineage is what the result repaints or transitions, what those were made from, and
    so on: a repaint's final picture is its source's picture. A source whose row is gone is
    looked up through the job that stored its trail (``job_of_key`` reads the job id from an
    artifact key: the store's key layout is the bot's business); when nothing tells who made
    it, it counts as someone else's.
    """
    canonical = normalize_public_id(public_id)
    async with db.read() as session:
        result = await session.scalar(select(Result).where(Result.public_id == canonical))
        if result is None:
            return None
        seen: set[str] = {canonical}
        pending: list[tuple[str, dict[str, Any], bool]] = [(result.kind, result.params or {}, True)]
        while pending and len(seen) <= MAX_LINEAGE:
            kind, params, direct = pending.pop()
            for relation, source_id, trail_key in _sources(kind, params):
                mark = source_id or trail_key or ""
                if mark in seen:
                    continue
                seen.add(mark)
                maker = await _maker(session, source_id, trail_key, job_of_key)
                shown_id = maker[0] if maker else source_id
                if maker is None or maker[1] != user_id:
                    return Borrowed(
                        public_id=shown_id,
                        owner_id=maker[1] if maker else None,
                        relation=relation if direct else "comes from",
                    )
                pending.append((maker[2], maker[3], False))
    return None


async def _maker(
    session: AsyncSession,
    public_id: str | None,
    trail_key: str | None,
    job_of_key: Callable[[str], int | None] | None,
) -> tuple[str | None, int, str, dict[str, Any]] | None:
    """(public id, maker, kind, params) of a source result, by its id, its trail, or its trail's job."""
    if public_id:
        row = await session.scalar(select(Result).where(Result.public_id == public_id))
        if row is not None:
            return row.public_id, row.owner_id, row.kind, row.params or {}
    if trail_key:
        row = await session.scalar(select(Result).where(Result.trail_key == trail_key).limit(1))
        if row is not None:
            return row.public_id, row.owner_id, row.kind, row.params or {}
        job_id = job_of_key(trail_key) if job_of_key else None
        job = await session.get(Job, job_id) if job_id is not None else None
        if job is not None:
            return public_id, job.user_id, job.kind, job.params or {}
    return None


async def _made_from(session: AsyncSession, source: Result) -> list[Result]:
    """Every result made from ``source``: its repaints and transitions, theirs, and so on."""
    found: dict[int, Result] = {}
    ids, keys = {source.public_id}, {source.trail_key} - {None}
    for _ in range(MAX_LINEAGE):
        named = [Result.params[name].as_string().in_(ids) for name in _SOURCE_IDS]
        if keys:
            named += [Result.params[name].as_string().in_(keys) for name in _SOURCE_TRAILS]
        rows = (
            await session.scalars(select(Result).where(or_(*named), Result.id.not_in([source.id, *found])))
        ).all()
        if not rows:
            break
        found.update((row.id, row) for row in rows)
        ids = {row.public_id for row in rows}
        keys = {row.trail_key for row in rows} - {None}
    return list(found.values())


async def toggle_vote(db: Database, guild_id: int, entry_id: int, user_id: int) -> VoteOutcome:
    """Vote for an entry, or take the vote back if the member had voted: one vote per member.

    Its submitter and its result's maker cannot vote for it (:class:`OwnEntryVote`); a vote
    of theirs from before that rule can still be taken back.
    """
    async with db.write() as session:
        # Lock the entry row (PostgreSQL) so one member's two quick clicks toggle in turn.
        row = (
            await session.execute(
                select(GalleryEntry.submitted_by, Result.owner_id)
                .join(Result, Result.id == GalleryEntry.result_id)
                .where(GalleryEntry.id == entry_id, GalleryEntry.guild_id == guild_id)
                .with_for_update(of=GalleryEntry)
            )
        ).first()
        if row is None:
            raise EntryNotFound(f"no gallery entry {entry_id} in this server")
        removed = await session.execute(
            delete(GalleryVote).where(GalleryVote.entry_id == entry_id, GalleryVote.user_id == user_id)
        )
        voted = removed.rowcount == 0
        if voted and user_id in tuple(row):
            raise OwnEntryVote("members cannot vote for their own gallery entries")
        if voted:
            session.add(GalleryVote(entry_id=entry_id, user_id=user_id))
            await session.flush()
        votes = await session.scalar(
            update(GalleryEntry)
            .where(GalleryEntry.id == entry_id)
            .values(votes=GalleryEntry.votes + (1 if voted else -1))
            .returning(GalleryEntry.votes)
        )
    return VoteOutcome(voted=voted, votes=int(votes or 0))


async def browse(
    db: Database, guild_id: int, *, order: str = "new", limit: int = 10, offset: int = 0
) -> list[GalleryItem]:
    """Gallery entries with their results: ``new`` (newest first) or ``top`` (most votes first)."""
    if order not in ("new", "top"):
        raise GalleryError(f"order must be new or top, got {order!r}")
    if limit < 1 or offset < 0:
        raise GalleryError("limit must be at least 1 and offset at least 0")
    keys: list[Any] = [GalleryEntry.created_at.desc(), GalleryEntry.id.desc()]
    if order == "top":
        keys.insert(0, GalleryEntry.votes.desc())
    query = (
        select(GalleryEntry, Result)
        .join(Result, Result.id == GalleryEntry.result_id)
        .where(GalleryEntry.guild_id == guild_id)
        .order_by(*keys)
        .limit(limit)
        .offset(offset)
    )
    async with db.read() as session:
        rows = (await session.execute(query)).all()
    return [GalleryItem(entry=entry, result=result) for entry, result in rows]


async def find_entries(
    db: Database, guild_id: int, typed: str, *, user_id: int | None = None, limit: int = 25
) -> list[GalleryItem]:
    """The guild's gallery entries whose result matches what was typed (see
    :func:`db.results.typed_match`), newest entries first.

    With ``user_id``, only entries that member submitted or whose result they made (what
    they may take out without moderating). Filtered in the query, so an old entry is found
    however many newer ones there are.
    """
    if limit < 1:
        raise GalleryError("limit must be at least 1")
    query = (
        select(GalleryEntry, Result)
        .join(Result, Result.id == GalleryEntry.result_id)
        .where(GalleryEntry.guild_id == guild_id)
    )
    if user_id is not None:
        query = query.where(or_(GalleryEntry.submitted_by == user_id, Result.owner_id == user_id))
    matched = typed_match(typed)
    if matched is not None:
        query = query.where(matched)
    query = query.order_by(GalleryEntry.created_at.desc(), GalleryEntry.id.desc()).limit(limit)
    async with db.read() as session:
        rows = (await session.execute(query)).all()
    return [GalleryItem(entry=entry, result=result) for entry, result in rows]


async def count_entries(db: Database, guild_id: int) -> int:
    """How many entries the guild's gallery has."""
    async with db.read() as session:
        total = await session.scalar(
            select(func.count()).select_from(GalleryEntry).where(GalleryEntry.guild_id == guild_id)
        )
    return int(total or 0)


async def claim_hall_of_fame(
    db: Database, entry_id: int, message_id: int, channel_id: int | None = None
) -> bool:
    """Record that the entry was posted to the hall of fame (in ``channel_id``); False if it already was.

    The bot calls this right after posting, so an entry is featured once even when two
    votes cross the threshold at the same moment; False too when the entry is gone.
    """
    async with db.write() as session:
        changed = await session.execute(
            update(GalleryEntry)
            .where(GalleryEntry.id == entry_id, GalleryEntry.hall_of_fame_message_id.is_(None))
            .values(hall_of_fame_message_id=message_id, hall_of_fame_channel_id=channel_id)
        )
    return changed.rowcount == 1


_SETTING_RANGES = {
    "hall_of_fame_votes": (1, 100_000),
    "per_user_cap": (1, 1000),
    "max_steps": (1, 500),
    "max_side": (64, 4096),
}
_CHANNEL_SETTINGS = ("gallery_channel_id", "hall_of_fame_channel_id")


async def get_settings(db: Database, guild_id: int) -> GuildSettings:
    """The guild's settings; a guild that never changed any gets the defaults (not stored)."""
    async with db.read() as session:
        settings = await session.get(GuildSettings, guild_id)
    return settings or GuildSettings(guild_id=guild_id, allowed_channel_ids=[], flagged_results="refuse")


# What the bot does with a result the safety checker flagged.
FLAGGED_POLICIES = ("refuse", "spoiler")


async def update_settings(db: Database, guild_id: int, updated_by: int, **changes: Any) -> GuildSettings:
    """Change some of a guild's settings (None clears one back to the bot's default)."""
    for name, value in changes.items():
        if name == "allowed_channel_ids":
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise GalleryError("allowed_channel_ids must be a list of channel ids")
            changes[name] = sorted(set(value))
        elif name in _CHANNEL_SETTINGS or name in _SETTING_RANGES:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise GalleryError(f"{name} must be a whole number, got {value!r}")
            low, high = _SETTING_RANGES.get(name, (1, 2**63 - 1))
            if not low <= value <= high:
                raise GalleryError(f"{name} must be from {low} to {high}, got {value}")
        elif name == "flagged_results":
            if value not in FLAGGED_POLICIES:
                raise GalleryError(
                    f"flagged_results must be one of {', '.join(FLAGGED_POLICIES)}, got {value!r}"
                )
        else:
            raise GalleryError(f"unknown guild setting {name!r}")
    async with db.write() as session:
        settings = await session.get(GuildSettings, guild_id)
        if settings is None:
            settings = GuildSettings(guild_id=guild_id, allowed_channel_ids=[])
            session.add(settings)
        for name, value in changes.items():
            setattr(settings, name, value)
        settings.updated_by = updated_by
        settings.updated_at = utcnow()
    return settings

"""Results: the public ids people type, building a result row from a finished job, and history.

A public id is 8 characters of Crockford's base 32 (digits and letters without I, L, O, U),
shown in capitals. Typing is forgiving: case, spaces and dashes are ignored and the
look-alikes O, I and L read as 0, 1 and 1, so ``k3f9-7qxm`` finds ``K3F97QXM``.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update

from db.engine import Database
from db.models import LIVE_STATUSES, GalleryEntry, Job, Result, Visibility

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PUBLIC_ID_LENGTH = 8
_LOOKALIKES = str.maketrans({"O": "0", "I": "1", "L": "1"})

ARTIFACT_ROLES = ("video", "image", "heatmap", "trail")
# Keys of a runner's result dict that have a column of their own (everything is also
# kept in the params JSON).
_COLUMN_TYPES: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "negative_prompt": (str,),
    "seed": (int,),
    "steps": (int,),
    "guidance": (int, float),
    "width": (int,),
    "height": (int,),
    "scheduler": (str,),
    "model_id": (str,),
    "vae_id": (str,),
    "effect": (str,),
    "format": (str,),
    "frames": (int,),
    "duration_seconds": (int, float),
}


class ResultNotFound(LookupError):
    """No result with that id (or none the asker may see)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "result not found"


def new_public_id() -> str:
    """A fresh random public id (40 bits; the unique constraint catches the rare repeat)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(PUBLIC_ID_LENGTH))


def normalize_public_id(text: str) -> str:
    """The canonical form of a typed result id, or ``ValueError`` saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"a result id is text like K3F97QXM, got {text!r}")
    cleaned = "".join(ch for ch in text.upper() if ch not in " -_").translate(_LOOKALIKES)
    if len(cleaned) != PUBLIC_ID_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        raise ValueError(
            f"{text.strip()!r} is not a result id; "
            f"ids are {PUBLIC_ID_LENGTH} letters and digits like K3F97QXM"
        )
    return cleaned


@dataclass
class NewResult:
    """What a worker hands over when a job succeeds: the runner's result and the stored artifacts."""

    fields: Mapping[str, Any]  # prompt, seed, steps, model_id, vae_id, effect, format, ...
    artifact_keys: Mapping[str, str]  # role ("video", "image", "heatmap", "trail") -> store key
    sizes: Mapping[str, int] = field(default_factory=dict)  # role -> bytes
    visibility: str = Visibility.PRIVATE.value

    def validate(self) -> None:
        """Raise ``ValueError`` for unknown roles, wrongly typed columns or non-JSON values."""
        for role in self.artifact_keys:
            if role not in ARTIFACT_ROLES:
                raise ValueError(f"unknown artifact role {role!r}; roles are {', '.join(ARTIFACT_ROLES)}")
        for name, types in _COLUMN_TYPES.items():
            value = self.fields.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
                raise ValueError(f"result field {name} has the wrong type: {value!r}")
        if self.visibility not in tuple(Visibility):
            raise ValueError(f"visibility must be one of {', '.join(Visibility)}")
        json.dumps(dict(self.fields))
        json.dumps(dict(self.sizes))

    def row(self, job: Job, public_id: str) -> Result:
        """The result row for ``job``: requester from the job, the rest from the runner."""
        columns = {name: self.fields.get(name) for name in _COLUMN_TYPES}
        columns["prompt"] = columns["prompt"] or job.params.get("prompt", "")
        columns["negative_prompt"] = columns["negative_prompt"] or job.params.get("negative_prompt", "")
        for name in ("guidance", "duration_seconds"):
            if columns[name] is not None:
                columns[name] = float(columns[name])
        return Result(
            public_id=public_id,
            job_id=job.id,
            kind=job.kind,
            owner_id=job.user_id,
            guild_id=job.guild_id,
            channel_id=job.channel_id,
            params={**job.params, **self.fields},
            sizes=dict(self.sizes),
            visibility=self.visibility,
            **{f"{role}_key": self.artifact_keys.get(role) for role in ARTIFACT_ROLES},
            **columns,
        )


def _visible_to(user_id: int, guild_id: int | None) -> Any:
    """Who may see a result: its owner, anyone if public, the guild if shared or in its gallery."""
    conditions = [Result.owner_id == user_id, Result.visibility == Visibility.PUBLIC.value]
    if guild_id is not None:
        conditions.append(and_(Result.visibility == Visibility.GUILD.value, Result.guild_id == guild_id))
        conditions.append(
            exists().where(GalleryEntry.result_id == Result.id, GalleryEntry.guild_id == guild_id)
        )
    return or_(*conditions)


async def get_result(
    db: Database, public_id: str, *, viewer_id: int | None = None, guild_id: int | None = None
) -> Result:
    """The result with this public id; with ``viewer_id``, only if that member may see it.

    Raises ``ValueError`` for text that is not an id and :class:`ResultNotFound` otherwise,
    with the same message whether it does not exist or is not theirs to see.
    """
    canonical = normalize_public_id(public_id)
    query = select(Result).where(Result.public_id == canonical)
    if viewer_id is not None:
        query = query.where(_visible_to(viewer_id, guild_id))
    async with db.read() as session:
        result = await session.scalar(query)
    if result is None:
        raise ResultNotFound(f"no result with id {canonical}")
    return result


async def result_for_job(db: Database, job_id: int) -> Result | None:
    """The result a job produced, if it finished."""
    async with db.read() as session:
        return await session.scalar(select(Result).where(Result.job_id == job_id))


@dataclass(frozen=True)
class Page:
    """One page of results, newest first."""

    items: Sequence[Result]
    page: int
    pages: int
    total: int


async def list_results(
    db: Database,
    *,
    user_id: int | None = None,
    guild_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Result]:
    """Results newest first, optionally only one owner's and/or one guild's."""
    if limit < 1 or offset < 0:
        raise ValueError("limit must be at least 1 and offset at least 0")
    query = select(Result).order_by(Result.created_at.desc(), Result.id.desc())
    if user_id is not None:
        query = query.where(Result.owner_id == user_id)
    if guild_id is not None:
        query = query.where(Result.guild_id == guild_id)
    async with db.read() as session:
        return list((await session.scalars(query.limit(limit).offset(offset))).all())


def typed_match(text: str) -> Any | None:
    """What a member typed into an autocomplete box as a condition on results, or None for nothing typed.

    A result matches when its prompt contains the text in any case (``%`` and ``_`` are
    plain characters here) or its public id starts with it, read as ids are typed: any
    case, spaces and dashes ignored, look-alikes folded (``k3f9-`` finds ``K3F97QXM``).
    """
    needle = text.strip()
    if not needle:
        return None
    conditions = [Result.prompt.icontains(needle, autoescape=True)]
    cleaned = "".join(ch for ch in needle.upper() if ch not in " -_").translate(_LOOKALIKES)
    if cleaned and len(cleaned) <= PUBLIC_ID_LENGTH and all(ch in ALPHABET for ch in cleaned):
        conditions.append(Result.public_id.startswith(cleaned, autoescape=True))
    return or_(*conditions)


async def find_results(
    db: Database,
    typed: str,
    *,
    owner_id: int,
    gallery_guild_id: int | None = None,
    with_trail: bool = False,
    limit: int = 25,
) -> list[Result]:
    """The results a member may pick that match what they typed (:func:`typed_match`), newest first.

    Their own results, and with ``gallery_guild_id`` also those in that server's gallery;
    ``with_trail``: only results that have a trail. The filtering happens in the query, so
    an old result is found however many newer ones there are.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    mine: Any = Result.owner_id == owner_id
    if gallery_guild_id is not None:
        mine = or_(
            mine,
            exists().where(GalleryEntry.result_id == Result.id, GalleryEntry.guild_id == gallery_guild_id),
        )
    query = select(Result).where(mine)
    if with_trail:
        query = query.where(Result.trail_key.is_not(None))
    matched = typed_match(typed)
    if matched is not None:
        query = query.where(matched)
    query = query.order_by(Result.created_at.desc(), Result.id.desc()).limit(limit)
    async with db.read() as session:
        return list((await session.scalars(query)).all())


async def history(db: Database, user_id: int, *, page: int = 1, per_page: int = 5) -> Page:
    """One member's own results, newest first, ``per_page`` at a time (pages count from 1)."""
    if page < 1 or per_page < 1:
        raise ValueError("page and per_page start at 1")
    async with db.read() as session:
        total = await session.scalar(
            select(func.count()).select_from(Result).where(Result.owner_id == user_id)
        )
    items = await list_results(db, user_id=user_id, limit=per_page, offset=(page - 1) * per_page)
    pages = max(1, math.ceil((total or 0) / per_page))
    return Page(items=items, page=page, pages=pages, total=total or 0)


async def set_visibility(db: Database, public_id: str, owner_id: int, visibility: str) -> Result:
    """Change who may see a result; only its owner may."""
    if visibility not in tuple(Visibility):
        raise ValueError(f"visibility must be one of {', '.join(Visibility)}; got {visibility!r}")
    canonical = normalize_public_id(public_id)
    async with db.write() as session:
        result = await session.scalar(
            select(Result).where(Result.public_id == canonical, Result.owner_id == owner_id)
        )
        if result is None:
            raise ResultNotFound(f"no result with id {canonical}")
        result.visibility = visibility
    return result


async def set_result_message(db: Database, result_id: int, message_id: int) -> None:
    """Record the message that delivered a result (a second delivery's message replaces it)."""
    async with db.write() as session:
        await session.execute(update(Result).where(Result.id == result_id).values(message_id=message_id))


async def delete_result(db: Database, public_id: str, owner_id: int) -> list[str]:
    """Delete an owner's result (its gallery entries and votes go with it).

    Returns the artifact keys the result held, for the caller to remove from the store
    once the row is gone. Raises :class:`ResultNotFound` when there is no such result
    or it is not ``owner_id``'s, in one transaction so nothing is half-deleted.
    """
    canonical = normalize_public_id(public_id)
    async with db.write() as session:
        removals = await _removals(
            session, select(Result).where(Result.public_id == canonical, Result.owner_id == owner_id)
        )
        if not removals:
            raise ResultNotFound(f"no result with id {canonical} of yours")
        await _delete_rows(session, removals)
    return removals[0].keys


# -- an operator deleting results (``latent-painter results delete`` / ``prune``) ----------

# Rows per statement (and per transaction when pruning): well under SQLite's and asyncpg's
# bound-parameter limits, and short enough that the bot's own writes wait only briefly.
REMOVAL_BATCH = 500


class ResultInGallery(ValueError):
    """A result an operator asked to delete is in a server gallery (and may not go silently)."""


@dataclass(frozen=True)
class Removal:
    """A result deleted (or, in a dry run, that would be): the row as it was, and what went with it.

    ``entries`` are its gallery entries (they go with the row: the database cascades);
    ``keys`` are the artifact keys to remove from the store once the row is gone, less any
    another result row still points at (a file is only removed when nothing refers to it).
    """

    result: Result
    entries: Sequence[GalleryEntry]
    keys: list[str]


async def _removals(session: Any, query: Any, *, lock: bool = True) -> list[Removal]:
    """The results ``query`` selects, with their gallery entries and the artifact keys no
    other result shares.

    ``lock`` (the rows are about to be deleted): on PostgreSQL the rows are locked, so a
    gallery submission of one of them waits until they are gone and then fails, instead of
    adding an entry this transaction did not see.
    """
    rows = list((await session.scalars(query.with_for_update() if lock else query)).all())
    if not rows:
        return []
    ids = [row.id for row in rows]
    entries = (await session.scalars(select(GalleryEntry).where(GalleryEntry.result_id.in_(ids)))).all()
    keys = {key for row in rows for key in row.artifact_keys().values()}
    keep: set[str] = set()
    if keys:
        columns = [getattr(Result, f"{role}_key") for role in ARTIFACT_ROLES]
        shared = (
            await session.execute(
                select(*columns).where(or_(*(c.in_(keys) for c in columns)), Result.id.not_in(ids))
            )
        ).all()
        # No file another row still points at goes (results keep their own copies today;
        # this guards rows from before a repaint copied its source's trail).
        keep = {key for row in shared for key in row if key}
    return [
        Removal(
            result=row,
            entries=[entry for entry in entries if entry.result_id == row.id],
            keys=[key for key in row.artifact_keys().values() if key not in keep],
        )
        for row in rows
    ]


async def _delete_rows(session: Any, removals: Sequence[Removal]) -> None:
    """Delete the rows of ``removals`` (gallery entries and votes cascade)."""
    await session.execute(delete(Result).where(Result.id.in_([r.result.id for r in removals])))


def _in_gallery_text(removal: Removal) -> str:
    guilds = ", ".join(sorted({str(entry.guild_id) for entry in removal.entries}))
    return f"{removal.result.public_id} (gallery of server {guilds})"


async def delete_results(
    db: Database, public_ids: Sequence[str], *, include_gallery: bool = False, dry_run: bool = False
) -> list[Removal]:
    """Delete these results, whoever made them, in the order given: all of them or none.

    Raises ``ValueError`` for text that is not an id, :class:`ResultNotFound` naming every
    id that does not exist, and :class:`ResultInGallery` naming every result that is in a
    server gallery unless ``include_gallery``. With ``dry_run`` nothing is deleted and the
    removals say what would be. The caller removes each removal's ``keys`` from the store
    after this returns (the rows are gone by then).
    """
    wanted = list(dict.fromkeys(normalize_public_id(text) for text in public_ids))
    if not wanted:
        raise ValueError("name at least one result id")
    found: dict[str, Removal] = {}
    async with db.read() if dry_run else db.write() as session:
        for start in range(0, len(wanted), REMOVAL_BATCH):
            chunk = select(Result).where(Result.public_id.in_(wanted[start : start + REMOVAL_BATCH]))
            for removal in await _removals(session, chunk, lock=not dry_run):
                found[removal.result.public_id] = removal
        missing = [public_id for public_id in wanted if public_id not in found]
        if missing:
            raise ResultNotFound(f"no result with id {', '.join(missing)}; nothing was deleted")
        removals = [found[public_id] for public_id in wanted]
        in_gallery = [r for r in removals if r.entries]
        if in_gallery and not include_gallery:
            raise ResultInGallery(
                f"{', '.join(_in_gallery_text(r) for r in in_gallery)} "
                f"{'is' if len(in_gallery) == 1 else 'are'} in a server gallery, whose Discord posts "
                "this command cannot take down; take them out with /gallery remove first, or pass "
                "--include-gallery (their entries go, their posts stay up). Nothing was deleted"
            )
        if not dry_run:
            for start in range(0, len(removals), REMOVAL_BATCH):
                await _delete_rows(session, removals[start : start + REMOVAL_BATCH])
    return removals


def _prunable(older_than: datetime, owner_id: int | None) -> Any:
    conditions = [Result.created_at < older_than]
    if owner_id is not None:
        conditions.append(Result.owner_id == owner_id)
    return and_(*conditions)


def _in_any_gallery() -> Any:
    return exists().where(GalleryEntry.result_id == Result.id)


async def _used_by_live_jobs(session: Any) -> Any | None:
    """Which results a queued or running job reads (a repaint's source, a transition's ends),
    as a condition on results; None when no live job reads one.

    By public id and by trail key: repaint jobs queued before they carried ``from_result``
    name their source by its trail alone.
    """
    rows = await session.scalars(select(Job.params).where(Job.status.in_(LIVE_STATUSES)))
    ids: set[Any] = set()
    trails: set[Any] = set()
    for params in rows:
        if isinstance(params, dict):
            ids.update(params.get(name) for name in ("from_result", "to_result"))
            trails.update(params.get(name) for name in ("trail_key", "from_trail", "to_trail"))
    ids = {value for value in ids if isinstance(value, str)}
    trails = {value for value in trails if isinstance(value, str)}
    if not ids and not trails:
        return None
    # is_not(None): NOT (x IN …) is NULL, not true, for a result without a trail.
    by_trail = and_(Result.trail_key.is_not(None), Result.trail_key.in_(sorted(trails)))
    return or_(Result.public_id.in_(sorted(ids)), by_trail)


async def count_prunable_in_gallery(
    db: Database, older_than: datetime, *, owner_id: int | None = None
) -> int:
    """How many results made before ``older_than`` (of ``owner_id``) are in some server gallery."""
    async with db.read() as session:
        total = await session.scalar(
            select(func.count()).select_from(Result).where(_prunable(older_than, owner_id), _in_any_gallery())
        )
    return int(total or 0)


async def count_prunable_in_use(
    db: Database, older_than: datetime, *, owner_id: int | None = None, include_gallery: bool = False
) -> int:
    """How many results made before ``older_than`` (of ``owner_id``) a queued or running job
    reads, less those kept for being in a gallery (unless ``include_gallery``)."""
    async with db.read() as session:
        used = await _used_by_live_jobs(session)
        if used is None:
            return 0
        query = select(func.count()).select_from(Result).where(_prunable(older_than, owner_id), used)
        if not include_gallery:
            query = query.where(~_in_any_gallery())
        total = await session.scalar(query)
    return int(total or 0)


async def prune_results(
    db: Database,
    older_than: datetime,
    *,
    owner_id: int | None = None,
    include_gallery: bool = False,
    dry_run: bool = False,
) -> AsyncIterator[list[Removal]]:
    """Delete the results made before ``older_than`` (only ``owner_id``'s, if given), oldest first.

    Results in a server gallery are left alone unless ``include_gallery``, and so are results
    a queued or running job reads (its member asked for a repaint or transition of them; a
    later prune takes them). Yields the
    removals one committed batch at a time (:data:`REMOVAL_BATCH` rows), so the caller
    removes a batch's files while its rows are already gone and a large prune never holds
    the database's write lock for long. With ``dry_run`` nothing is deleted.
    """
    after = 0
    while True:
        query = select(Result).where(_prunable(older_than, owner_id), Result.id > after)
        if not include_gallery:
            # In the statement itself, so an entry submitted meanwhile keeps its result.
            query = query.where(~_in_any_gallery())
        query = query.order_by(Result.id).limit(REMOVAL_BATCH)
        async with db.read() if dry_run else db.write() as session:
            used = await _used_by_live_jobs(session)
            if used is not None:
                query = query.where(~used)
            removals = await _removals(session, query, lock=not dry_run)
            if removals and not dry_run:
                await _delete_rows(session, removals)
        if not removals:
            return
        after = max(r.result.id for r in removals)
        yield removals

"""Results: the public ids people type, building a result row from a finished job, and history.

A public id is 8 characters of Crockford's base 32 (digits and letters without I, L, O, U),
shown in capitals. Typing is forgiving: case, spaces and dashes are ignored and the
look-alikes O, I and L read as 0, 1 and 1, so ``k3f9-7qxm`` finds ``K3F97QXM``.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update

from db.engine import Database
from db.models import GalleryEntry, Job, Result, Visibility

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
    or it is not ``owner_id``'s, in one statement so nothing is half-deleted.
    """
    canonical = normalize_public_id(public_id)
    async with db.write() as session:
        row = (
            await session.execute(
                delete(Result)
                .where(Result.public_id == canonical, Result.owner_id == owner_id)
                .returning(Result.video_key, Result.image_key, Result.heatmap_key, Result.trail_key)
            )
        ).first()
    if row is None:
        raise ResultNotFound(f"no result with id {canonical} of yours")
    return [key for key in row if key]

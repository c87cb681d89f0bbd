"""What the database says about the files kept beside it: whose they are, which may go.

A data directory (artifact store, delivery ledger) is kept for one database. Job ids are
only unique within a database, so the files under ``jobs/<id>/`` mean something only to the
database whose job made them: :func:`database_id` tells the databases apart, and
:func:`ended_jobs` is what the store sweep asks before it deletes a job's files;
:func:`existing_jobs` tells whether a store that names no database yet could be this one's.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from db.engine import Database
from db.models import DatabaseIdentity, Job, JobStatus

ENDED_STATUSES = (JobStatus.DONE.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
# Ids per IN (...) list: well under SQLite's and asyncpg's bound-parameter limits.
_CHUNK = 500


class DatabaseIdentityError(ValueError):
    """The database has no single identity row (migration 0004 makes exactly one)."""


async def database_id(db: Database) -> str:
    """This database's id: the one row of ``database_identity``, made by its migration."""
    async with db.read() as session:
        ids = list(await session.scalars(select(DatabaseIdentity.id).limit(2)))
    if len(ids) != 1:
        found = "no row" if not ids else "more than one row"
        raise DatabaseIdentityError(
            f"the database's table database_identity has {found}; it must hold exactly the one "
            "row migration 0004 made (restore it from a backup of this database)"
        )
    return ids[0]


async def ended_jobs(db: Database, job_ids: Iterable[int]) -> frozenset[int]:
    """Those of ``job_ids`` that are jobs of this database and have ended (done, failed, cancelled).

    Ids this database has no row for are not in the answer: their files, if any, belong to
    another database (or a job whose row was lost) and are nobody's here to delete.
    """
    return await _jobs_among(db, job_ids, ended_only=True)


async def existing_jobs(db: Database, job_ids: Iterable[int]) -> frozenset[int]:
    """Those of ``job_ids`` that this database has a row for, whatever their status."""
    return await _jobs_among(db, job_ids, ended_only=False)


async def _jobs_among(db: Database, job_ids: Iterable[int], *, ended_only: bool) -> frozenset[int]:
    wanted = sorted(set(job_ids))
    found: set[int] = set()
    async with db.read() as session:
        for start in range(0, len(wanted), _CHUNK):
            query = select(Job.id).where(Job.id.in_(wanted[start : start + _CHUNK]))
            if ended_only:
                query = query.where(Job.status.in_(ENDED_STATUSES))
            found.update(await session.scalars(query))
    return frozenset(found)

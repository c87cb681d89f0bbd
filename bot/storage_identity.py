"""Which database a data directory belongs to, and the start-up check that holds them together.

Job ids are only unique within one database. A data directory used with another database
(the README's switch to PostgreSQL with the old directory, a mistyped SQLite URL, which is
created empty, a reset database) would read its files as that database's: the store sweep
deleted every result's files, and the delivery ledger skipped new jobs as "delivered".

So the artifact store remembers its database: a marker file ``.database-id`` in the
store's root holds the id of the database (:func:`db.storage.database_id`) it was first
started with. A store without a marker adopts the database it is started with (existing
deployments upgrade without a step), unless it holds files of jobs that database does not
have; one whose marker names another database is refused
at start-up by the bot and by every worker, with a :class:`ForeignDataDirectory`
(a :class:`~bot.config.ConfigError`: one line, exit 2). The marker's name starts with a dot,
so it is never listed as an artifact key and can never clash with one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

from bot.artifacts import PARTIAL_PREFIX, LocalArtifactStore
from bot.config import ConfigError
from db.engine import Database
from db.storage import database_id, existing_jobs

log = logging.getLogger("latent_painter.storage")

MARKER_NAME = ".database-id"
_ID = re.compile(r"[0-9a-f]{32}")
# A marker made without hard links (see _adopt) is briefly empty while it is written.
_EMPTY_MARKER_PATIENCE_SECONDS = 2.0


class ForeignDataDirectory(ConfigError):
    """The data directory's artifact store belongs to another database than ``[database] url``."""


def marker_path(store_root: Path) -> Path:
    """The marker file naming the database of the artifact store at ``store_root``."""
    return Path(store_root) / MARKER_NAME


def read_marker(store_root: Path) -> str | None:
    """The database id the store at ``store_root`` belongs to, or None when it has no marker yet.

    Raises :class:`ConfigError` for a marker that does not hold an id (edited by hand):
    guessing whose store it is would be how files get deleted.
    """
    path = marker_path(store_root)
    deadline = time.monotonic() + _EMPTY_MARKER_PATIENCE_SECONDS
    while True:
        try:
            text = path.read_text(encoding="utf-8", errors="replace").strip()
        except FileNotFoundError:
            return None
        if text or time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # being written by a worker starting beside us
    if not _ID.fullmatch(text):
        raise ConfigError(
            f"the artifact store's marker {path} does not hold a database id ({text[:40]!r}); "
            "if you know this data directory belongs to [database] url's database, delete the "
            "marker and start again to adopt it"
        )
    return text


def _adopt(store_root: Path, ours: str) -> str:
    """Write ``ours`` as the store's marker unless one appeared first; returns the marker's id.

    Published by hard-linking a complete file, so two workers starting at once against a
    new store agree on one marker (the second link fails) and nobody reads a half-written one.
    """
    store_root.mkdir(parents=True, exist_ok=True)
    marker = marker_path(store_root)
    # A PARTIAL_PREFIX name: the store's sweep_partials removes it if we die right here.
    temporary = store_root / f"{PARTIAL_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(f"{ours}\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, marker)
        except FileExistsError:
            pass  # another process adopted it first: its marker decides
        except OSError:
            # A filesystem without hard links: exclusive create, briefly empty (readers wait).
            with contextlib.suppress(FileExistsError):
                fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                try:
                    os.write(fd, f"{ours}\n".encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
    finally:
        temporary.unlink(missing_ok=True)
    found = read_marker(store_root)
    return found if found is not None else ours


def _short(identity: str) -> str:
    return f"{identity[:12]}…"


def claim_store(store_root: Path, ours: str, *, data_dir: Path | None = None) -> bool:
    """Check that the store at ``store_root`` belongs to database ``ours``, adopting a store
    with no marker; returns whether it was adopted just now.

    Raises :class:`ForeignDataDirectory` when the marker names another database.
    """
    store_root = Path(store_root)
    found = read_marker(store_root)
    adopted = False
    if found is None:
        found = _adopt(store_root, ours)
        adopted = found == ours
    if found != ours:
        directory = data_dir if data_dir is not None else store_root.parent
        raise ForeignDataDirectory(
            f"the data directory {directory} (artifact store {store_root}) belongs to another "
            f"database (id {_short(found)}; [database] url's is {_short(ours)}): point [storage] "
            "data_dir at a new directory for this database, or [database] url back at its own"
        )
    if adopted:
        log.info("artifact store %s now belongs to database %s", store_root, _short(ours))
    return adopted


def _stored_job_ids(store_root: Path) -> set[int]:
    """The job ids with files in the store (its ``jobs/<id>/`` directories)."""
    jobs = store_root / "jobs"
    if not jobs.is_dir():
        return set()
    return {int(entry.name) for entry in jobs.iterdir() if entry.name.isdigit() and entry.is_dir()}


async def check_data_dir(db: Database, store_root: Path, *, data_dir: Path | None = None) -> str:
    """The start-up check of the bot and of every worker: the artifact store at ``store_root``
    belongs to ``db`` (adopted if it has no marker yet). Returns the database's id.

    A store without a marker is adopted only if every job it holds files of is a job of
    ``db`` (job rows are never deleted): one from before this check (no marker) that another
    database filled is refused too, rather than have its files taken for this one's.
    Raises :class:`ForeignDataDirectory` (a ConfigError: one line, exit 2) otherwise.
    """
    store_root = Path(store_root)
    ours = await database_id(db)
    if await asyncio.to_thread(read_marker, store_root) is None:
        stored = await asyncio.to_thread(_stored_job_ids, store_root)
        strangers = sorted(stored - await existing_jobs(db, stored))
        if strangers:
            shown = ", ".join(str(job_id) for job_id in strangers[:3]) + (", …" if len(strangers) > 3 else "")
            directory = data_dir if data_dir is not None else store_root.parent
            raise ForeignDataDirectory(
                f"the data directory {directory} (artifact store {store_root}) holds files of "
                f"{len(strangers)} job(s) that [database] url's database does not have (ids {shown}): "
                "it belongs to another database; point [storage] data_dir at a new directory for "
                "this database, or [database] url back at its own"
            )
    await asyncio.to_thread(claim_store, store_root, ours, data_dir=data_dir)
    return ours


async def open_data(settings: object) -> tuple[Database, LocalArtifactStore]:
    """The database (schema checked; the embedded SQLite one upgraded in place) and the
    artifact store of ``settings``, checked to belong together (:func:`check_data_dir`):
    what the bot and every worker start from."""
    from db.engine import sqlite_path
    from db.migrate import ensure_schema_current

    url = settings.database_url  # type: ignore[attr-defined]
    data_dir = Path(settings.data_dir)  # type: ignore[attr-defined]
    await ensure_schema_current(url, upgrade_if_old=sqlite_path(url) is not None)
    db = Database.from_url(url)
    store = LocalArtifactStore(data_dir / "artifacts")
    try:
        # Before anything is swept, claimed or read: another database's data directory is refused.
        await check_data_dir(db, store.root, data_dir=data_dir)
    except BaseException:
        await db.dispose()
        raise
    return db, store

"""Queue subcommands of ``latent-painter``: db, worker, submit, jobs, results (list, delete,
prune), cancel.

``bot.cli`` calls :func:`add_subcommands`; ``python -m bot.cli_queue`` runs them on their
own. Every command returns an exit code. A user error (a bad flag value, a bad config, an
old schema) prints one line on stderr and exits non-zero without writing anything.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import math
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_settings

EXIT_OK = 0
EXIT_FAILED = 1  # the environment is not right (schema, database)
EXIT_USAGE = 2  # the command line is not right


class UsageError(ValueError):
    """A flag value that is not allowed; the message names the flag."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _int(name: str, text: str | None, *, low: int | None = None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} must be a whole number, got {text!r}") from None
    if low is not None and value < low:
        raise UsageError(f"{name} must be at least {low}, got {value}")
    return value


def _float(name: str, text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {text!r}")
    return value


def _size(text: str | None) -> tuple[int | None, int | None]:
    if text is None:
        return None, None
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--size {text!r} must look like 512x512 (WIDTHxHEIGHT)") from None
    return width, height


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def job_summary(job: Any) -> dict[str, Any]:
    """A job as plain JSON-able values (the interaction token left out: it is a credential)."""
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status,
        "user_id": job.user_id,
        "guild_id": job.guild_id,
        "channel_id": job.channel_id,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker_id": job.worker_id,
        "progress": {"step": job.progress_step, "frame": job.progress_frame, "total": job.progress_total},
        "cancel_requested": job.cancel_requested,
        "dedupe_key": job.dedupe_key,
        "error": job.error,
        "params": job.params,
        "created_at": _iso(job.created_at),
        "run_at": _iso(job.run_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def result_summary(result: Any) -> dict[str, Any]:
    """A result as plain JSON-able values: its public id, job, parameters and artifact keys."""
    keys = result.artifact_keys()
    return {
        "id": result.public_id,
        "job_id": result.job_id,
        "status": "done",
        "kind": result.kind,
        "owner_id": result.owner_id,
        "guild_id": result.guild_id,
        "prompt": result.prompt,
        "negative_prompt": result.negative_prompt,
        "seed": result.seed,
        "steps": result.steps,
        "guidance": result.guidance,
        "width": result.width,
        "height": result.height,
        "scheduler": result.scheduler,
        "model_id": result.model_id,
        "vae_id": result.vae_id,
        "effect": result.effect,
        "format": result.format,
        "artifacts": keys,
        **{f"{role}_key": keys.get(role) for role in ("video", "image", "heatmap", "trail")},
        "sizes": result.sizes,
        "frames": result.frames,
        "duration_seconds": result.duration_seconds,
        "visibility": result.visibility,
        "created_at": _iso(result.created_at),
    }


async def _open(settings: Settings, *, create: bool, store: bool = False) -> Any:
    """The database, schema checked (the embedded SQLite one is upgraded in place).

    With ``create`` False a SQLite file that does not exist yet is not created: there is
    nothing to list, and listing should not write. With ``store`` the command reads or
    writes the artifact store, which must belong to this database (as for the bot and
    the workers: :func:`bot.storage_identity.check_data_dir`).
    """
    from db.engine import Database, sqlite_path
    from db.migrate import ensure_schema_current

    url = settings.database_url
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        return None
    await ensure_schema_current(url, upgrade_if_old=path is not None)
    db = Database.from_url(url)
    if store:
        from bot.storage_identity import check_data_dir

        try:
            await check_data_dir(db, settings.data_dir / "artifacts", data_dir=settings.data_dir)
        except BaseException:
            await db.dispose()
            raise
    return db


def _user_errors() -> tuple[type[BaseException], ...]:
    from bot.artifacts import ArtifactKeyError
    from db.engine import DatabaseURLError
    from db.migrate import MigrationError, SchemaError
    from db.queue import QueueError
    from db.results import ResultNotFound

    return (
        UsageError,
        ConfigError,
        DatabaseURLError,
        SchemaError,
        MigrationError,
        QueueError,
        ResultNotFound,
        ArtifactKeyError,
        ValueError,
    )


def _command(name: str, body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command so a user error is one line on stderr and a non-zero exit code."""

    def run(args: argparse.Namespace) -> int:
        # Alembic logs each plugin and migration at INFO; our commands print their own summary.
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            logging.getLogger("alembic").setLevel(logging.WARNING)
        from db.migrate import MigrationError, SchemaError

        try:
            return body(args)
        except (SchemaError, MigrationError) as exc:
            print(f"latent-painter {name}: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except _user_errors() as exc:
            print(f"latent-painter {name}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            # Database unreachable, data directory not writable, ...
            from bot.cli import os_error_line

            line, _ = os_error_line(exc)
            print(f"latent-painter {name}: error: {line}", file=sys.stderr)
            return EXIT_FAILED
        except Exception as exc:
            from bot.cli import database_error_line

            line = database_error_line(exc)
            if line is None:
                raise
            print(f"latent-painter {name}: error: {line}", file=sys.stderr)
            return EXIT_FAILED

    return run


# -- db -----------------------------------------------------------------------------------


def _db(args: argparse.Namespace) -> int:
    from db import migrate
    from db.engine import normalize_url

    settings = _settings(args)
    url = settings.database_url
    # normalize_url refuses a bad URL in one line (make_url alone raised a traceback).
    shown = normalize_url(url).render_as_string(hide_password=True)
    action = args.db_action
    if action == "upgrade":
        asyncio.run(migrate.upgrade(url, args.revision))
        state = asyncio.run(migrate.schema_state(url))
        print(f"{shown}: schema at revision {state.current} (head {state.head})")
    elif action == "downgrade":
        lost = asyncio.run(migrate.rows_dropped(url, args.revision))
        if lost and not args.yes:
            rows = ", ".join(f"{count} {table}" for table, count in lost.items())
            raise UsageError(
                f"downgrading to {args.revision} drops every table and its rows ({rows}); the "
                "stored files stay on disk. Back the database up, then run it again with --yes"
            )
        asyncio.run(migrate.downgrade(url, args.revision))
        state = asyncio.run(migrate.schema_state(url))
        print(f"{shown}: schema at revision {state.current or 'base (empty)'} (head {state.head})")
    elif action == "current":
        state = asyncio.run(migrate.schema_state(url))
        note = "up to date" if state.is_current else "run `latent-painter db upgrade`"
        print(f"{shown}: schema at revision {state.current or 'none'}, head {state.head} ({note})")
    else:
        asyncio.run(migrate.check(url))
        print(f"{shown}: schema is at head and matches the models")
    return EXIT_OK


# -- worker -------------------------------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    from bot.worker import exit_past_busy_runners, load_runner, run_worker

    settings = _settings(args)
    # Imported before the database is touched, so a wrong --runner fails fast.
    runner = load_runner(args.runner)
    max_jobs = _int("--max-jobs", args.max_jobs, low=1)
    handled = asyncio.run(
        run_worker(
            settings,
            runner=runner,
            worker_id=args.worker_id,
            max_jobs=max_jobs,
            exit_when_idle=args.exit_when_idle,
        )
    )
    logging.getLogger("latent_painter.worker").info("handled %d job(s)", handled)
    exit_past_busy_runners(EXIT_OK)
    return EXIT_OK


# -- submit -------------------------------------------------------------------------------


def _submit(args: argparse.Namespace) -> int:
    from bot.worker import queue_policy
    from db.params import validate_params
    from db.queue import JobQueue

    width, height = _size(args.size)
    if args.strength is not None and args.image is None:
        raise UsageError("--strength needs --image (how much of the picture is repainted)")
    if args.start_from_image and args.image is None:
        raise UsageError("--start-from-image needs --image")
    params = {
        "prompt": args.prompt,
        "negative_prompt": args.negative,
        "seed": _int("--seed", args.seed),
        "steps": _int("--steps", args.steps),
        "guidance": _float("--guidance", args.guidance),
        "width": width,
        "height": height,
        "scheduler": args.scheduler,
        "model": args.model,
        "effect": args.effect,
        "fps": _int("--fps", args.fps),
        "duration": _float("--duration", args.duration),
        "format": args.format,
        "max_bytes": _int("--max-bytes", args.max_bytes),
        "strength": _float("--strength", args.strength),
        "start_from_image": True if args.start_from_image else None,
    }
    user = _int("--user", args.user, low=0) or 0
    guild = _int("--guild", args.guild, low=0)
    priority = _int("--priority", args.priority)
    analytic = (args.model or "").strip() == "analytic"
    if analytic and not args.prompt.strip() and args.image is not None:
        # As `paint` does, the closed form needs no prompt: the picture's name titles it.
        params["prompt"] = args.image.name
    # Everything the user typed is checked before the database is touched.
    params = validate_params("paint", params)
    settings = _settings(args)
    from bot.jobs import job_settings
    from bot.paint_job import check_paint_request
    from painter.capture import CaptureError

    effective = job_settings(settings, params)
    if args.strength is not None and effective.model.id == "analytic":
        raise UsageError("--strength does not apply to the analytic model: it paints the picture itself")
    try:
        # What the worker would refuse (a size over [painter] max_side, no picture for the
        # analytic model, no denoising step) is refused now, not after a claim.
        has_image = args.image is not None
        check_paint_request(effective, has_image=has_image, start_from_image=args.start_from_image)
    except CaptureError as exc:
        raise UsageError(str(exc)) from None
    picture = _read_picture(args.image) if args.image is not None else None

    store = None
    if picture is not None:
        # As /paint does with an attachment: the worker reads the picture from the artifact
        # store (it may run on another machine, sharing only the store and the database).
        from bot.artifacts import LocalArtifactStore

        store = LocalArtifactStore(settings.data_dir / "artifacts")
        params["image_key"] = f"uploads/{user}/cli-{secrets.token_hex(8)}{picture[1]}"

    async def enqueue() -> Any:
        db = await _open(settings, create=True, store=store is not None)
        try:
            if store is not None and picture is not None:
                store.put_bytes(params["image_key"], picture[0])
            return await JobQueue(db, queue_policy(settings)).enqueue(
                "paint",
                params,
                user_id=user,
                guild_id=guild,
                priority=priority or 0,
                dedupe_key=args.dedupe_key,
            )
        finally:
            await db.dispose()

    try:
        outcome = asyncio.run(enqueue())
    except BaseException:
        if store is not None:
            store.delete(params["image_key"])
        raise
    if store is not None and not outcome.created:
        # The job already queued under this dedupe key has its own picture; nothing reads this one.
        store.delete(params["image_key"])
    if args.json:
        print(json.dumps({**job_summary(outcome.job), "created": outcome.created}))
    else:
        print(outcome.job.id)
        if not outcome.created:
            print(
                f"(job {outcome.job.id} with this dedupe key was already {outcome.job.status})",
                file=sys.stderr,
            )
    return EXIT_OK


def _read_picture(path: Path) -> tuple[bytes, str]:
    """The bytes of ``--image`` and its file suffix; refused now if the painter cannot read it."""
    from painter.images import ImageInputError, load_image, probe_image

    try:
        info = probe_image(path)
        # Decoding it once here finds a damaged file before a worker spends a claim on it.
        load_image(path, 64, 64)
    except ImageInputError as exc:
        raise UsageError(f"--image {exc}") from None
    return path.read_bytes(), f".{info.format.lower() or 'img'}"


# -- jobs / results / cancel --------------------------------------------------------------


def _shorten(text: str | None, width: int) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _jobs(args: argparse.Namespace) -> int:
    from db.models import JobStatus
    from db.queue import JobQueue

    if args.status is not None and args.status not in tuple(JobStatus):
        raise UsageError(f"--status must be one of {', '.join(JobStatus)}; got {args.status!r}")
    user = _int("--user", args.user, low=0)
    limit = _int("--limit", args.limit, low=1) or 50
    settings = _settings(args)

    async def fetch() -> list[Any]:
        db = await _open(settings, create=False)
        if db is None:
            return []
        try:
            return await JobQueue(db).list_jobs(status=args.status, user_id=user, limit=limit)
        finally:
            await db.dispose()

    jobs = asyncio.run(fetch())
    if args.json:
        print(json.dumps([job_summary(job) for job in jobs], indent=2))
        return EXIT_OK
    if not jobs:
        print("no jobs")
        return EXIT_OK
    print(
        f"{'ID':>6}  {'STATUS':<9}  {'KIND':<10}  {'USER':>20}  {'TRIES':>5}  {'PROGRESS':>15}  "
        "ERROR / PROMPT"
    )
    for job in jobs:
        # A finished job keeps its last progress in the row; only a running one has progress.
        progress = progress_text(job)
        detail = job.error or job.params.get("prompt") or ""
        print(
            f"{job.id:>6}  {job.status:<9}  {job.kind:<10}  {job.user_id:>20}  "
            f"{job.attempts}/{job.max_attempts:<3}  {progress:>15}  {_shorten(detail, 60)}"
        )
    return EXIT_OK


def progress_text(job: Any) -> str:
    """A running job's progress: ``step 4/30`` while generating, ``frame 65/450`` while painting.

    A finished job keeps its last progress in the row; only a running one shows any.
    """
    if job.status != "running" or not job.progress_total:
        return "-"
    if job.progress_frame:
        return f"frame {job.progress_frame}/{job.progress_total}"
    return f"step {job.progress_step}/{job.progress_total}"


def _results(args: argparse.Namespace) -> int:
    action = getattr(args, "results_action", None)
    if action is not None and (args.json or args.limit is not None):
        raise UsageError(f"--json and --limit go with listing results, not with `results {action}`")
    if action == "delete":
        if args.user is not None:
            raise UsageError("`results delete` takes result ids; --user goes with listing or prune")
        return _results_delete(args)
    if action == "prune":
        return _results_prune(args)
    from db.results import list_results

    user = _int("--user", args.user, low=0)
    limit = _int("--limit", args.limit, low=1) or 50
    settings = _settings(args)

    async def fetch() -> list[Any]:
        db = await _open(settings, create=False)
        if db is None:
            return []
        try:
            return await list_results(db, user_id=user, limit=limit)
        finally:
            await db.dispose()

    results = asyncio.run(fetch())
    if args.json:
        print(json.dumps([result_summary(result) for result in results], indent=2))
        return EXIT_OK
    if not results:
        print("no results")
        return EXIT_OK
    print(f"{'ID':<8}  {'JOB':>6}  {'OWNER':>20}  {'EFFECT':<8}  {'MODEL':<20}  PROMPT")
    for result in results:
        print(
            f"{result.public_id:<8}  {result.job_id or '-':>6}  {result.owner_id:>20}  "
            f"{result.effect or '-':<8}  {_shorten(result.model_id, 20):<20}  {_shorten(result.prompt, 50)}"
        )
    return EXIT_OK


# -- results delete / prune ---------------------------------------------------------------
#
# Order: a result's row is deleted (and committed) first, its files after. A crash in
# between leaves files nothing points at (space to reclaim, never a result whose video is
# gone); the other order could leave /history or /transition offering a result whose
# files were deleted. Gallery entries go with their row (the database cascades), so no
# entry ever points at a deleted result; their Discord posts stay up (they carry their own
# copies of the pictures) until someone takes them down, and the command says where they are.


def _human_size(size: int) -> str:
    """``6.2 MB``, ``293 B``: decimal units, as disks and Discord's upload limits count."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _size_text(size: int) -> str:
    return f"{_human_size(size)} ({size:,} bytes)"


class _Tally:
    """What a delete or prune removed (or, in a dry run, would remove), line by line."""

    def __init__(self, settings: Settings, *, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run
        self.results = self.files = self.size = 0
        self.failed: list[str] = []

    @functools.cached_property
    def store(self) -> Any:
        # Made on first use: a command that finds nothing to delete creates no directory.
        from bot.artifacts import LocalArtifactStore

        return LocalArtifactStore(self.settings.data_dir / "artifacts")

    def take(self, removal: Any) -> None:
        """Remove one deleted result's files (none in a dry run) and print its line."""
        from bot.artifacts import ArtifactKeyError, ArtifactNotFound
        from bot.text import jump_link
        from db.gallery import posts_of

        files = size = 0
        for key in removal.keys:
            try:
                found = self.store.size(key)
                if not self.dry_run and not self.store.delete(key):
                    continue  # gone meanwhile: what was to be freed is
            except ArtifactNotFound:
                continue  # already missing: nothing to free, and not an error
            except (ArtifactKeyError, OSError) as exc:
                # The row is gone; the file stays behind for the operator to remove by hand.
                self.failed.append(f"{removal.result.public_id}: could not remove {key}: {exc}")
                continue
            files += 1
            size += found
        self.results += 1
        self.files += files
        self.size += size
        result = removal.result
        verb = "would delete" if self.dry_run else "deleted"
        print(
            f"{verb} {result.public_id}  owner {result.owner_id}  {result.created_at:%Y-%m-%d}  "
            f"{files} file{'s' if files != 1 else ''}  {_human_size(size)}  "
            f"{_shorten(result.prompt, 50)}"
        )
        for entry in removal.entries:
            posts = posts_of(entry)
            where = ", ".join(jump_link(entry.guild_id, p.channel_id, p.message_id) for p in posts)
            state = "would stay up" if self.dry_run else "stays up"
            print(
                f"  gallery entry {entry.id} in server {entry.guild_id} "
                + (
                    f"goes with it; its Discord post {state} (take it down by hand): {where}"
                    if posts
                    else "goes with it (no Discord post recorded)"
                )
            )

    def summary(self, extra: str = "") -> int:
        """Print the closing line (and any file that could not be removed); the exit code."""
        for line in self.failed:
            print(f"latent-painter results: error: {line}", file=sys.stderr)
        counted = f"{self.results} result{'s' if self.results != 1 else ''} ({self.files} files)"
        if self.dry_run:
            freeing = f"freeing {_size_text(self.size)}"
            print(f"would delete {counted}, {freeing}; nothing was deleted (--dry-run){extra}")
        else:
            print(f"deleted {counted}, freed {_size_text(self.size)}{extra}")
        return EXIT_FAILED if self.failed else EXIT_OK


def _results_delete(args: argparse.Namespace) -> int:
    from db.results import ResultNotFound, delete_results, normalize_public_id

    # Every id is checked before the database is touched.
    wanted = [normalize_public_id(text) for text in args.ids]
    settings = _settings(args)

    async def delete() -> list[Any]:
        db = await _open(settings, create=False, store=True)
        if db is None:
            raise ResultNotFound(f"no result with id {', '.join(wanted)}; nothing was deleted")
        try:
            return await delete_results(
                db, wanted, include_gallery=args.include_gallery, dry_run=args.dry_run
            )
        finally:
            await db.dispose()

    removals = asyncio.run(delete())
    tally = _Tally(settings, dry_run=args.dry_run)
    for removal in removals:
        tally.take(removal)
    return tally.summary()


def _results_prune(args: argparse.Namespace) -> int:
    from datetime import UTC, timedelta

    from db.results import count_prunable_in_gallery, count_prunable_in_use, prune_results

    days = _float("--older-than", args.older_than)
    if days is None or days <= 0:
        raise UsageError(f"--older-than must be a number of days above 0, got {args.older_than!r}")
    user = _int("--user", args.user, low=0)
    settings = _settings(args)
    try:
        cutoff = datetime.now(UTC) - timedelta(days=days)
    except OverflowError:
        raise UsageError(f"--older-than {args.older_than} days reaches back before the year 1") from None
    tally = _Tally(settings, dry_run=args.dry_run)

    async def prune() -> tuple[int, int]:
        db = await _open(settings, create=False, store=True)
        if db is None:
            return 0, 0
        try:
            async for batch in prune_results(
                db, cutoff, owner_id=user, include_gallery=args.include_gallery, dry_run=args.dry_run
            ):
                # This batch's rows are committed as gone (unless a dry run): now their files.
                for removal in batch:
                    tally.take(removal)
            in_gallery = (
                0 if args.include_gallery else await count_prunable_in_gallery(db, cutoff, owner_id=user)
            )
            in_use = await count_prunable_in_use(
                db, cutoff, owner_id=user, include_gallery=args.include_gallery
            )
            return in_gallery, in_use
        finally:
            await db.dispose()

    in_gallery, in_use = asyncio.run(prune())
    extra = ""
    if in_gallery:
        extra += (
            f"; kept {in_gallery} result{'s' if in_gallery != 1 else ''} in a server gallery "
            "(their posts are on Discord, out of this command's reach: /gallery remove them first, "
            "or pass --include-gallery)"
        )
    if in_use:
        extra += (
            f"; kept {in_use} result{'s' if in_use != 1 else ''} that queued jobs still read "
            "(a repaint or transition a member asked for; a later prune takes them)"
        )
    return tally.summary(extra)


def _cancel(args: argparse.Namespace) -> int:
    from db.queue import JobQueue

    job_id = _int("JOB_ID", args.job_id, low=1)
    settings = _settings(args)

    async def cancel() -> Any:
        db = await _open(settings, create=False, store=True)
        if db is None:
            raise UsageError(f"no job {job_id}")
        try:
            return await JobQueue(db).cancel(job_id or 0)
        finally:
            await db.dispose()

    job = asyncio.run(cancel())
    if job.status == "cancelled":  # it never reached a worker, which deletes its picture otherwise
        from bot.artifacts import LocalArtifactStore
        from bot.worker import forget_input

        forget_input(LocalArtifactStore(settings.data_dir / "artifacts"), job)
    state = "cancel requested (it stops at its next step)" if job.status == "running" else job.status
    print(f"job {job.id}: {state}")
    return EXIT_OK


# -- wiring -------------------------------------------------------------------------------


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (see config.toml)")


def add_subcommands(subparsers: Any) -> None:
    """Add db, worker, submit, jobs, results and cancel to the ``latent-painter`` command."""
    db = subparsers.add_parser("db", help="database schema: upgrade, downgrade, check, current")
    actions = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="migrate the schema up (to the newest by default)")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    downgrade = actions.add_parser("downgrade", help="migrate the schema down to REVISION ('base': empty)")
    downgrade.add_argument("revision", help="target revision, e.g. base or -1")
    downgrade.add_argument(
        "--yes", action="store_true", help="go ahead even though the downgrade deletes jobs and results"
    )
    actions.add_parser("check", help="fail unless the schema is at head and matches the models")
    actions.add_parser("current", help="show the schema revision")
    for parser in actions.choices.values():
        _config_option(parser)
    db.set_defaults(func=_command("db", _db))

    worker = subparsers.add_parser("worker", help="run jobs from the queue until stopped (SIGTERM)")
    _config_option(worker)
    worker.add_argument("--runner", default="bot.jobs:run_job", help=argparse.SUPPRESS)
    worker.add_argument("--worker-id", default=None, help=argparse.SUPPRESS)
    worker.add_argument("--max-jobs", default=None, help=argparse.SUPPRESS)
    worker.add_argument("--exit-when-idle", action="store_true", help=argparse.SUPPRESS)
    worker.set_defaults(func=_command("worker", _worker))

    submit = subparsers.add_parser("submit", help="queue a paint job; prints its job id")
    submit.add_argument("prompt", help="what to paint")
    submit.add_argument("--negative", default=None, help="negative prompt")
    submit.add_argument("--seed", help="random seed (default: the worker picks one)")
    submit.add_argument("--steps", help="denoising steps")
    submit.add_argument("--guidance", help="classifier-free guidance scale")
    submit.add_argument("--size", help="WIDTHxHEIGHT, multiples of 8")
    submit.add_argument("--scheduler", help="sampler")
    submit.add_argument("--model", help="model id (default: the worker's [model] id)")
    submit.add_argument("--effect", help="strokes, glow, flip, fade, dissolve or sharpen")
    submit.add_argument("--fps", help="frames per second of the animation")
    submit.add_argument("--duration", help="animation length in seconds")
    submit.add_argument("--format", help="mp4, gif or webp")
    submit.add_argument("--max-bytes", help="size budget of the animation file in bytes")
    submit.add_argument("--image", type=Path, help="paint from this picture (SDEdit, or the analytic model)")
    submit.add_argument("--strength", help="how much of --image is repainted, in (0, 1]")
    submit.add_argument(
        "--start-from-image", action="store_true", help="start the canvas at --image instead of blank paper"
    )
    submit.add_argument("--user", help="requesting user id (default 0, the operator)")
    submit.add_argument("--guild", help="guild id the job belongs to")
    submit.add_argument("--priority", help="lower runs first among one user's jobs (default 0)")
    submit.add_argument("--dedupe-key", help="do not queue again while a job with this key is live")
    submit.add_argument("--json", action="store_true", help="print the job as JSON")
    _config_option(submit)
    submit.set_defaults(func=_command("submit", _submit))

    jobs = subparsers.add_parser("jobs", help="list jobs with status, attempts, progress and errors")
    jobs.add_argument("--status", help="only jobs with this status")
    jobs.add_argument("--user", help="only this user's jobs")
    jobs.add_argument("--limit", help="at most this many (default 50), newest first")
    jobs.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(jobs)
    jobs.set_defaults(func=_command("jobs", _jobs))

    results = subparsers.add_parser(
        "results", help="list results with their artifact keys; delete or prune them (and their files)"
    )
    results.add_argument("--user", help="only this user's results")
    results.add_argument("--limit", help="at most this many (default 50), newest first")
    results.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(results)
    results.set_defaults(func=_command("results", _results))
    removals = results.add_subparsers(dest="results_action", metavar="ACTION")
    delete = removals.add_parser("delete", help="delete results by id, with their stored files")
    delete.add_argument("ids", nargs="+", metavar="ID", help="result ids as members see them (K3F97QXM)")
    prune = removals.add_parser("prune", help="delete results older than DAYS, with their stored files")
    prune.add_argument("--older-than", required=True, metavar="DAYS", help="made more than DAYS days ago")
    # SUPPRESS: a --user or --config given before the action is not reset to None here.
    prune.add_argument("--user", default=argparse.SUPPRESS, metavar="ID", help="only this user's results")
    for parser in (delete, prune):
        parser.add_argument(
            "--include-gallery",
            action="store_true",
            help="also results in a server gallery (their entries go; their Discord posts stay up)",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
        )
        parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="TOML settings file")

    cancel = subparsers.add_parser("cancel", help="cancel a job (a running one stops at its next step)")
    cancel.add_argument("job_id", metavar="JOB_ID")
    _config_option(cancel)
    cancel.set_defaults(func=_command("cancel", _cancel))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the queue subcommands without the rest of the CLI (``python -m bot.cli_queue``)."""
    parser = argparse.ArgumentParser(prog="latent-painter")
    add_subcommands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

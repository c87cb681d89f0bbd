"""The worker loop: claim a job, run it in a thread, keep the lease alive, store what it made.

One loop serves one GPU. It runs as its own process (``latent-painter worker``) or as an
asyncio task inside the bot (``asyncio.create_task(worker.run())``); both are the same
:class:`Worker`. For each job:

1. claim it (``db.queue``), make a private work directory for this attempt;
2. run the job runner in a thread (never on the event loop), while the loop renews the
   lease every ``heartbeat_seconds`` and saves progress at most every ``progress_seconds``;
   a cancel request or a lost lease makes ``ctx.cancelled()`` true so the runner can stop;
3. on success store the files in the artifact store under keys of this job and attempt,
   then write the result row and mark the job done in one transaction; if that fails
   because the lease was lost, the files of this attempt are deleted again;
4. on an exception record the failure (retried with backoff until ``max_attempts``, unless
   the exception says ``retryable = False``);
5. remove the work directory, whatever happened.

The database may be away for a while (a restart, SQLite's write lock held by someone
else). Recording a job's outcome is then tried again, with growing waits, for as long as
the lease can still be ours: the files stay stored, since the result row will point at
them. The worker gives up only when the lease is lost (the database says so) or has
surely expired (no heartbeat confirmed for ``lease_seconds``: another claim may take the
job back and run it again). Claims are retried the same way, and an error in one job never
ends the loop.

Housekeeping: a running worker holds a lock file in its work directory, so another one
on the host removes the directory once its owner is dead (whatever PID it had); jobs the
stale-lease rescue ends are cleaned up by the worker whose claim ended them; and the
artifact store is swept at start and every ``sweep_seconds`` of files no job needs.

On SIGTERM (or :meth:`Worker.stop`) the running job is released back to the queue at once
(its attempt not counted), the runner is told to stop, and the loop exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import importlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bot.artifacts import ArtifactStore, LocalArtifactStore, job_key, job_prefix
from bot.storage_identity import check_data_dir
from db.queue import JobQueue, Lease, LeaseLost, QueuePolicy, database_unavailable
from db.results import ARTIFACT_ROLES, NewResult
from db.storage import ended_jobs

log = logging.getLogger("latent_painter.worker")

DEFAULT_RUNNER = "bot.jobs:run_job"
# The in-process worker of `latent-painter bot` touches this file under [storage] data_dir
# while it runs; `latent-painter health` reads its age, as it reads the bot's own heartbeat.
WORKER_HEARTBEAT_FILE = "bot.worker.heartbeat"


def standalone_heartbeat_file(data_dir: Path) -> Path:
    """Where a ``latent-painter worker`` on this host touches its heartbeat.

    Named by host, not by worker id (which changes with every start): a container's
    health check (``latent-painter health --worker``) finds the file of the worker in its
    own container, and a restarted worker keeps beating into the same file. Workers on one
    host that share a data directory share it too: healthy while any of them runs.
    """
    return data_dir / f"worker.{host_name()}.heartbeat"


# Held locked (flock) by a running worker in its work directory: the kernel lets go when
# the process dies, however it dies, so a free lock means a dead owner, whatever its PID.
WORKDIR_LOCK = ".lock"

T = TypeVar("T")


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (hub and OS errors add background lines), or its type."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class JobCancelled(Exception):
    """Raised by a runner (``ctx.raise_if_cancelled()``) to stop early when asked to."""


class PermanentJobError(Exception):
    """A failure that retrying cannot fix: no retry.

    Its text is for operators (the job's error column, ``latent-painter jobs``, the log);
    a member is told only that it failed on our side. Failures the member caused and can
    fix are :class:`MemberError`.
    """

    retryable = False


class StorageError(Exception):
    """The artifact store could not take a job's file; the text names the store and the key.

    Retried: a full or read-only disk may be fixed before the next attempt.
    """


class WorkDirectoryError(Exception):
    """The job's work directory could not be made or written; the text names the directory."""


# Errors that say "this disk" without naming a file (PIL and ffmpeg writes report a full
# disk so): a runner's error of this kind happened writing its work directory.
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG})


def _in_work_directory(error: BaseException, workdir: Path) -> BaseException:
    """A runner's ``error``, as a :class:`WorkDirectoryError` naming ``workdir`` if it is one.

    That is an OSError about a file inside ``workdir``, or about a full, read-only or
    failing disk with no file named. "No space left on device" alone did not say which disk.
    """
    if not isinstance(error, OSError):
        return error
    name = error.filename
    if name is None:
        ours = error.errno in _DISK_ERRNOS
    else:
        ours = Path(os.fsdecode(name)).is_relative_to(workdir)
    if not ours:
        return error
    located = WorkDirectoryError(f"work directory {workdir}: {type(error).__name__}: {error}")
    located.__cause__ = error
    return located


# Between a MemberError's message for the member and its detail for operators, in the
# job's error column (one line, so ``latent-painter jobs`` shows both).
DETAIL_SEPARATOR = " || for operators: "


class MemberError(PermanentJobError):
    """A permanent failure the member caused (a bad picture, a prompt or parameter problem,
    a result deleted before the job could use it); ``message`` is written for them.

    ``detail`` (a storage key, a path) is for operators only: it is kept in the job's error
    column after :data:`DETAIL_SEPARATOR` and never shown to the member.
    """

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__(f"{message}{DETAIL_SEPARATOR}{detail}" if detail else message)
        self.message = message
        self.detail = detail


def member_message(error: str | None) -> str | None:
    """The member's part of a job's error column when a :class:`MemberError` ended it, else None."""
    kind, _, text = (error or "").partition(": ")
    if kind != MemberError.__name__ or not text:
        return None
    return text.partition(DETAIL_SEPARATOR)[0] or None


@dataclass
class JobOutput:
    """What a runner returns: files in its work directory by role, and the result's fields."""

    files: dict[str, Path]  # "video", "image", "heatmap", "trail"
    result: dict[str, Any] = field(default_factory=dict)  # prompt, seed, model_id, vae_id, effect, ...


class JobContext:
    """What a runner gets: the job, a private work directory, progress and cancel hooks.

    ``progress`` and ``cancelled`` may be called from the runner's thread at any rate: the
    worker saves the latest progress on its own schedule.
    """

    def __init__(
        self,
        *,
        job_id: int,
        kind: str,
        params: dict[str, Any],
        attempt: int,
        workdir: Path,
        user_id: int,
        guild_id: int | None,
        settings: Any = None,
    ) -> None:
        self.job_id = job_id
        self.kind = kind
        self.params = params
        self.attempt = attempt
        self.workdir = workdir
        self.user_id = user_id
        self.guild_id = guild_id
        self.settings = settings  # the worker's bot.config.Settings, for runners that need it
        self._lock = threading.Lock()
        self._progress: tuple[int, int, int] | None = None
        self._stop = threading.Event()
        self.cancel_requested = False  # a user asked (as opposed to shutdown or lost lease)
        self.lease_lost = False
        # When the database last confirmed the lease (the claim, then each heartbeat): the
        # lease is surely gone once lease_seconds have passed since.
        self._lease_confirmed_at = time.monotonic()

    def progress(self, step: int, frame: int, total: int) -> None:
        """Report progress: denoising ``step``, painted ``frame`` of ``total`` frames."""
        with self._lock:
            self._progress = (int(step), int(frame), int(total))

    def cancelled(self) -> bool:
        """True once the job should stop: cancelled, worker shutting down, or lease lost."""
        return self._stop.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`JobCancelled` if the job should stop."""
        if self._stop.is_set():
            raise JobCancelled(f"job {self.job_id} was stopped")

    def _take_progress(self) -> tuple[int, int, int] | None:
        with self._lock:
            progress, self._progress = self._progress, None
        return progress

    def _request_stop(self) -> None:
        self._stop.set()


Runner = Callable[[JobContext], JobOutput]


class WorkerListener:
    """Hooks for the bot, called on the event loop; override what you need. Errors are logged."""

    async def job_started(self, lease: Lease) -> None: ...

    async def job_progress(self, lease: Lease, step: int, frame: int, total: int) -> None: ...

    async def job_finished(self, job_id: int, result: Any) -> None: ...

    async def job_failed(self, job: Any) -> None: ...

    async def job_cancelled(self, job: Any) -> None: ...


def forget_input(store: ArtifactStore, job: Any) -> None:
    """Delete the picture uploaded for a job (``uploads/…``), once the job has ended for good.

    /paint and ``latent-painter submit`` store it only for the runner to read; no retry
    or later job needs it after that. Errors are logged: the result matters more.
    """
    key = (job.params or {}).get("image_key")
    if isinstance(key, str) and key.startswith("uploads/"):
        try:
            store.delete(key)
        except (OSError, ValueError) as exc:
            log.warning("job %s: could not delete upload %s: %s", job.id, key, exc)


def load_runner(spec: str) -> Runner:
    """Import a runner given as ``module:function`` (``bot.jobs:run_job`` by default)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"runner {spec!r} must look like module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"runner module {module_name!r} cannot be imported: {exc}") from None
    runner = getattr(module, attribute, None)
    if not callable(runner):
        raise ValueError(f"runner {spec!r}: {module_name} has no callable {attribute!r}")
    return runner


def host_name() -> str:
    """This machine's (or container's) host name, safe as part of a file name."""
    return "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in socket.gethostname())[:80] or "host"


def make_worker_id() -> str:
    """``host-pid-random``: unique, readable in ``jobs`` output, and safe as a directory name."""
    return f"{host_name()}-{os.getpid()}-{secrets.token_hex(3)}"


def queue_policy(settings: Any) -> QueuePolicy:
    """The queue policy from ``[queue]`` settings."""
    q = settings.queue
    return QueuePolicy(
        lease_seconds=q.lease_seconds,
        max_attempts=q.max_attempts,
        per_user_cap=q.per_user_cap,
        backoff_seconds=q.backoff_seconds,
    )


class OutcomeNotRecorded(Exception):
    """The database stayed unreachable until the lease could no longer be ours (or the worker
    stopped): the outcome of this attempt was not recorded, and the job runs again once
    another claim takes it back."""


class _Outage:
    """Logs a run of failures of one operation: the first with its traceback, then one line each.

    ``failed`` returns how long to wait before trying again: ``first`` seconds, doubling up
    to ``longest``. A database restart used to print a full traceback every second.
    """

    def __init__(self, what: str, first: float, longest: float) -> None:
        self.what = what
        self.first = first
        self.longest = max(first, longest)
        self.failures = 0
        self.since = 0.0
        self.delay = first

    def failed(self, error: BaseException) -> float:
        self.failures += 1
        if self.failures == 1:
            self.since = time.monotonic()
            self.delay = self.first
            log.warning("%s failed; trying again in %.1f s", self.what, self.delay, exc_info=error)
        else:
            self.delay = min(self.longest, self.delay * 2)
            log.warning(
                "%s failed again (%d times in %.0f s): %s; trying again in %.1f s",
                self.what,
                self.failures,
                time.monotonic() - self.since,
                _one_line(error),
                self.delay,
            )
        return self.delay

    def recovered(self) -> None:
        if self.failures:
            log.info(
                "%s works again after %d failure(s) in %.0f s",
                self.what,
                self.failures,
                time.monotonic() - self.since,
            )
        self.failures = 0


def _one_line(error: BaseException) -> str:
    """``Type: message`` without SQLAlchemy's SQL and background lines, for one-line logs."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _job_of_key(key: str) -> int | None:
    """The job id of a ``jobs/<id>/…`` key, else None."""
    parts = key.split("/")
    return int(parts[1]) if len(parts) > 2 and parts[0] == "jobs" and parts[1].isdigit() else None


def _least_free(places: list[Path]) -> tuple[int, Path]:
    """The smallest free space (bytes) among the disks holding ``places``, and that place.

    A place not made yet is measured by its nearest existing parent.
    """
    least: tuple[int, Path] | None = None
    for place in places:
        probe = place.absolute()
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if least is None or free < least[0]:
            least = (free, place)
    assert least is not None
    return least


def _abandoned(directory: Path, pid: int) -> bool:
    """Whether the worker that made ``directory`` is gone: nobody holds its lock file."""
    try:
        fd = os.open(directory / WORKDIR_LOCK, os.O_RDONLY)
    except FileNotFoundError:
        # No lock file: an older worker's directory, or one whose worker is starting
        # (its lock appears once held). Workers sharing this process clean up themselves.
        return pid != os.getpid() and not _pid_alive(pid)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: its worker is alive (or a filesystem without locks: keep it)
    finally:
        os.close(fd)  # also lets go of the lock just taken; the directory goes right after
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    """One job at a time from ``queue``, run by ``runner``, artifacts into ``store``."""

    def __init__(
        self,
        queue: JobQueue,
        store: ArtifactStore,
        runner: Runner,
        *,
        workdir_root: Path,
        worker_id: str | None = None,
        heartbeat_seconds: float = 10.0,
        poll_seconds: float = 1.0,
        progress_seconds: float = 1.0,
        shutdown_grace_seconds: float = 10.0,
        kinds: tuple[str, ...] | None = None,
        settings: Any = None,
        listener: WorkerListener | None = None,
        heartbeat_file: Path | None = None,
        retry_seconds: float = 1.0,
        retry_max_seconds: float = 30.0,
        record_patience_seconds: float = 600.0,
        sweep_seconds: float = 600.0,
        upload_grace_seconds: float = 3600.0,
    ) -> None:
        self.queue = queue
        self.store = store
        self.runner = runner
        self.worker_id = worker_id or make_worker_id()
        self.workdir_root = Path(workdir_root)
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.progress_seconds = progress_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.kinds = kinds
        self.settings = settings
        self.listener = listener or WorkerListener()
        # Touched while run() runs, so a health check can tell a live worker from a dead one.
        self.heartbeat_file = heartbeat_file
        # Waits between tries while the database is unavailable: doubling from the first
        # to the second; recording an outcome stops trying after record_patience_seconds
        # even while heartbeats keep the lease (the database takes heartbeats but refuses
        # the result: SQLite's disk full), and records a failure instead.
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = retry_max_seconds
        self.record_patience_seconds = record_patience_seconds
        # The artifact store sweep (sweep_storage) runs at start and every sweep_seconds;
        # an upload nothing live reads goes once it is upload_grace_seconds old (younger,
        # its job may not be queued yet: /paint stores the picture first).
        self.sweep_seconds = sweep_seconds
        self.upload_grace_seconds = upload_grace_seconds
        self._next_sweep = 0.0
        self._short_of_space = False  # below [storage] min_free_mb: not claiming (logged once)
        self._workdir_lock: int | None = None  # the descriptor holding WORKDIR_LOCK
        self.current: Lease | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()

    # -- control ------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to end: the running job goes back to the queue at once."""
        self._stopping.set()

    def wake(self) -> None:
        """Skip the rest of an idle wait (the bot calls this right after enqueueing)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def wait_stopped(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for :meth:`stop`; returns whether the worker is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def run(self, *, max_jobs: int | None = None, exit_when_idle: bool = False) -> int:
        """Work until stopped (or ``max_jobs`` done, or the queue is empty with ``exit_when_idle``).

        Returns how many jobs it handled. Database errors while claiming are logged (the
        first with its traceback, then one line each) and retried with growing waits, and
        an unexpected error while handling one job is logged and the loop carries on, so
        neither a database restart nor one bad job ends the worker. It raises only when
        it cannot start: its work directory cannot be made.
        """
        handled = 0
        self._hold_workdir()
        beat = asyncio.create_task(self._beat()) if self.heartbeat_file is not None else None
        try:
            self._sweep_workdirs_now()
            await self.warm_up()
            claims = _Outage(
                f"worker {self.worker_id}: claiming a job", self.poll_seconds, self.retry_max_seconds
            )
            was_busy = False
            while not self._stopping.is_set():
                if time.monotonic() >= self._next_sweep:
                    await self._sweep_storage_now()
                if not await self._room_to_work():
                    # Each attempt on a full disk paints and renders, then fails storing:
                    # leave the jobs queued until there is room (or another worker has it).
                    if exit_when_idle:
                        break
                    await self._idle(self.poll_seconds)
                    continue
                try:
                    lease = await self.queue.claim(self.worker_id, kinds=self.kinds)
                except Exception as exc:
                    await self._idle(claims.failed(exc))
                    continue
                claims.recovered()
                await self._clean_up_rescued()
                if lease is None:
                    if exit_when_idle:
                        break
                    if was_busy:
                        self._sweep_workdirs_now()
                        was_busy = False
                    await self._idle(self.poll_seconds)
                    continue
                was_busy = True
                try:
                    await self.process(lease)
                except Exception as exc:
                    # Never the end of the worker (a job that breaks every worker would
                    # stop them all): log it, count it as a failed attempt, carry on.
                    log.exception(
                        "worker %s: job %s attempt %s ended with an unexpected error; carrying on",
                        self.worker_id,
                        lease.job_id,
                        lease.attempt,
                    )
                    with contextlib.suppress(Exception):  # LeaseLost: it was settled after all
                        await self.queue.fail(lease, f"{type(exc).__name__}: {exc}")
                    await self._idle(self.poll_seconds)
                handled += 1
                if max_jobs is not None and handled >= max_jobs:
                    break
        finally:
            if beat is not None:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
            self._let_go_of_workdir()
        return handled

    def _hold_workdir(self) -> None:
        """Make this worker's directory and lock its WORKDIR_LOCK for as long as run() runs."""
        if self._workdir_lock is not None:
            return
        directory = self.workdir_root / self.worker_id
        directory.mkdir(parents=True, exist_ok=True)
        # Locked under a temporary name and renamed: a sweeping worker never finds the lock
        # file of a live worker unlocked.
        temporary = directory / f"{WORKDIR_LOCK}-{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(temporary, directory / WORKDIR_LOCK)
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._workdir_lock = fd

    def _let_go_of_workdir(self) -> None:
        directory = self.workdir_root / self.worker_id
        if self._workdir_lock is not None:
            # Unlinked before unlocking: an unlocked lock file always means a dead worker.
            with contextlib.suppress(OSError):
                (directory / WORKDIR_LOCK).unlink()
            os.close(self._workdir_lock)
            self._workdir_lock = None
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: a runner may still be in it

    async def _beat(self) -> None:
        """Touch ``heartbeat_file`` while the loop runs (its age is what a health check reads)."""
        assert self.heartbeat_file is not None
        interval = max(0.05, min(self.heartbeat_seconds, 10.0))
        while True:
            with contextlib.suppress(OSError):
                self.heartbeat_file.write_text(f"{time.time():.0f} {self.worker_id}\n")
            await asyncio.sleep(interval)

    async def warm_up(self) -> None:
        """Run the runner's ``warm_up(settings)``, if it has one, before the first claim.

        It runs in a daemon thread like a job (loading a model blocks); a stop ends the
        wait at once, and a failure is only logged: the first job will try again.
        """
        hook = getattr(self.runner, "warm_up", None)
        if hook is None or self._stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not done.done():
                done.set_result(None)
            if error is not None:
                # A model that cannot load (a mistyped [model] id) is one line at start-up,
                # not a traceback in every member's failed job later.
                model = getattr(getattr(self.settings, "model", None), "id", None)
                hint = (
                    f" ([model] id {model!r}); paintings fail until [model] id "
                    "(LATENT_PAINTER_MODEL_ID) names a model that loads"
                    if model
                    else "; the first job will try again"
                )
                log.error("worker %s: warm-up failed: %s%s", self.worker_id, first_line(error), hint)

        def target() -> None:
            start = time.monotonic()
            try:
                hook(self.settings)
                error = None
            except Exception as exc:  # noqa: BLE001 - logged; jobs still run
                error = exc
            else:
                log.info("worker %s ready (warmed up in %.1f s)", self.worker_id, time.monotonic() - start)
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:
                pass  # the loop is gone: the worker already exited

        threading.Thread(target=target, name="warm-up", daemon=True).start()
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({done, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()

    async def _idle(self, seconds: float) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    # -- one job ------------------------------------------------------------------

    async def process(self, lease: Lease) -> None:
        """Run one claimed job to its end: done, failed/retried, cancelled or released."""
        job = lease.job
        workdir = self.workdir_root / self.worker_id / f"job-{job.id}-attempt-{lease.attempt}"
        ctx = JobContext(
            job_id=job.id,
            kind=job.kind,
            params=dict(job.params),
            attempt=lease.attempt,
            workdir=workdir,
            user_id=job.user_id,
            guild_id=job.guild_id,
            settings=self.settings,
        )
        try:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
        except OSError as exc:
            problem = WorkDirectoryError(f"work directory {workdir}: {type(exc).__name__}: {exc}")
            problem.__cause__ = exc
            try:
                await self._record_failure(lease, ctx, problem)
            except (LeaseLost, OutcomeNotRecorded) as lost:
                log.warning("worker %s: job %s: %s", self.worker_id, job.id, lost)
            return
        self.current = lease
        log.info("worker %s: job %s (%s) attempt %s started", self.worker_id, job.id, job.kind, lease.attempt)
        await self._notify("job_started", lease)
        keeper = asyncio.create_task(self._keep_lease(lease, ctx))
        outcome = self._start_runner(ctx)
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            try:
                await asyncio.wait({outcome, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The task running the worker was cancelled (the bot is closing) without
                # stop(): still hand the job back rather than leave it to the lease timeout.
                self._stopping.set()
                await asyncio.shield(self._shut_down_during(lease, ctx, outcome))
                raise
            if not outcome.done():
                await self._shut_down_during(lease, ctx, outcome)
                return
            await self._conclude(lease, ctx, outcome)
        finally:
            self.current = None
            stop_wait.cancel()
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            if outcome.done() or not self._stopping.is_set():
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                # The runner ignored the stop; clean up once its thread lets go.
                outcome.add_done_callback(lambda _f: shutil.rmtree(workdir, ignore_errors=True))

    def _start_runner(self, ctx: JobContext) -> asyncio.Future[JobOutput]:
        """Run the runner in a daemon thread and return a future for its outcome.

        Not ``asyncio.to_thread``: its executor threads are joined when the interpreter
        exits, so a runner that ignores ``cancelled()`` would hold a SIGTERM'd worker open.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JobOutput] = loop.create_future()

        def settle(value: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

        def target() -> None:
            try:
                value, error = self.runner(ctx), None
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which decides
                value, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, value, error)
            except RuntimeError:
                pass  # the loop is gone: the worker already exited

        # After a shutdown nobody awaits the outcome; retrieving it here keeps asyncio from
        # reporting "exception was never retrieved" for a runner that stopped by raising.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        threading.Thread(target=target, name=f"job-{ctx.job_id}", daemon=True).start()
        return future

    async def _keep_lease(self, lease: Lease, ctx: JobContext) -> None:
        """Heartbeat and progress while the job is held; flag cancel requests and a lost lease.

        It goes on while the outcome is being recorded, so a database that comes back in
        time renews the lease that recording depends on.
        """
        tick = max(0.01, min(self.progress_seconds, self.heartbeat_seconds))
        last_beat = retry_at = time.monotonic()
        outage = _Outage(
            f"worker {self.worker_id}: heartbeat of job {lease.job_id}",
            min(self.retry_seconds, self.heartbeat_seconds),
            self.heartbeat_seconds,
        )
        while True:
            await asyncio.sleep(tick)
            if time.monotonic() < retry_at:
                continue
            progress = ctx._take_progress()
            due = time.monotonic() - last_beat >= self.heartbeat_seconds
            if progress is None and not due:
                continue
            try:
                if progress is not None:
                    cancel = await self.queue.progress(lease, *progress)
                    await self._notify("job_progress", lease, *progress)
                else:
                    cancel = await self.queue.heartbeat(lease)
            except LeaseLost:
                log.warning("worker %s: lost the lease on job %s; stopping it", self.worker_id, lease.job_id)
                ctx.lease_lost = True
                ctx._request_stop()
                return
            except Exception as exc:
                # A database hiccup: the lease is still ours until it expires; try again.
                retry_at = time.monotonic() + outage.failed(exc)
                continue
            outage.recovered()
            last_beat = ctx._lease_confirmed_at = time.monotonic()
            if cancel and not ctx.cancel_requested:
                log.info("worker %s: job %s cancel requested", self.worker_id, lease.job_id)
                ctx.cancel_requested = True
                ctx._request_stop()

    async def _shut_down_during(self, lease: Lease, ctx: JobContext, outcome: asyncio.Future[Any]) -> None:
        ctx._request_stop()
        try:
            job = await self.queue.release(lease)
            log.info("worker %s: shutting down; job %s released (%s)", self.worker_id, job.id, job.status)
        except LeaseLost:
            log.info("worker %s: shutting down; job %s was no longer ours", self.worker_id, lease.job_id)
        except Exception:
            log.exception(
                "worker %s: could not release job %s; its lease will expire", self.worker_id, lease.job_id
            )
        try:
            await asyncio.wait_for(asyncio.shield(outcome), self.shutdown_grace_seconds)
        except BaseException:  # noqa: BLE001 - the outcome no longer matters
            pass

    async def _conclude(self, lease: Lease, ctx: JobContext, outcome: asyncio.Future[JobOutput]) -> None:
        error = outcome.exception()
        if error is not None:
            error = _in_work_directory(error, ctx.workdir)
        if ctx.lease_lost:
            log.warning(
                "worker %s: job %s attempt %s discarded (lease lost)",
                self.worker_id,
                lease.job_id,
                lease.attempt,
            )
            return
        try:
            if ctx.cancel_requested:
                await self._confirm_cancel(lease, ctx)
            elif error is not None:
                await self._record_failure(lease, ctx, error)
            else:
                await self._deliver(lease, ctx, outcome.result())
        except LeaseLost:
            log.warning(
                "worker %s: lease on job %s lost before the job could be settled",
                self.worker_id,
                lease.job_id,
            )
        except OutcomeNotRecorded as exc:
            log.warning("worker %s: %s", self.worker_id, exc)

    async def _record(
        self, lease: Lease, ctx: JobContext, what: str, statement: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``statement`` (one that records this attempt's outcome), trying again while the
        database is unavailable and the lease can still be ours.

        Raises :class:`LeaseLost` when the job is no longer ours, :class:`OutcomeNotRecorded`
        once the lease has surely expired (or the worker is stopping) with the database still
        away, the database's own error when it keeps refusing for ``record_patience_seconds``
        while taking heartbeats, and any error that trying again cannot fix at once.
        """
        outage = _Outage(
            f"worker {self.worker_id}: {what} job {lease.job_id} attempt {lease.attempt}",
            self.retry_seconds,
            self.retry_max_seconds,
        )
        started = time.monotonic()
        while True:
            try:
                value = await statement()
            except LeaseLost:
                raise
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                if ctx.lease_lost:
                    raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held") from exc
                now = time.monotonic()
                expires_in = ctx._lease_confirmed_at + self.queue.policy.lease_seconds - now
                if expires_in <= 0 or self._stopping.is_set():
                    why = "the worker is stopping" if expires_in > 0 else "its lease has expired"
                    raise OutcomeNotRecorded(
                        f"could not {what} job {lease.job_id} attempt {lease.attempt} before {why}: "
                        f"the database is unavailable ({_one_line(exc)}); the job runs again "
                        "once another claim takes it back"
                    ) from exc
                if now - started >= self.record_patience_seconds:
                    raise
                delay = outage.failed(exc)
                await self.wait_stopped(min(delay, expires_in))
                continue
            outage.recovered()
            return value

    async def _confirm_cancel(self, lease: Lease, ctx: JobContext) -> None:
        job = await self._record(
            lease, ctx, "confirm the cancel of", lambda: self.queue.confirm_cancel(lease)
        )
        await asyncio.to_thread(forget_input, self.store, job)
        await asyncio.to_thread(self.store.delete_prefix, job_prefix(job.id))
        log.info("worker %s: job %s cancelled", self.worker_id, job.id)
        await self._notify("job_cancelled", job)

    async def _record_failure(self, lease: Lease, ctx: JobContext, error: BaseException) -> Any:
        """Record ``error`` as this attempt's failure; returns the job as it now is."""
        text = f"{type(error).__name__}: {error}"
        retry = bool(getattr(error, "retryable", True))
        log.warning(
            "worker %s: job %s attempt %s failed: %s\n%s",
            self.worker_id,
            lease.job_id,
            lease.attempt,
            text,
            "".join(traceback.format_exception(error)),
        )
        job = await self._record(
            lease, ctx, "record the failure of", lambda: self.queue.fail(lease, text, retry=retry)
        )
        if job.status != "queued":
            # Final: no attempt of this job will ever need the files of earlier attempts.
            await asyncio.to_thread(self.store.delete_prefix, job_prefix(job.id))
            await asyncio.to_thread(forget_input, self.store, job)
            await self._notify("job_cancelled" if job.status == "cancelled" else "job_failed", job)
        return job

    async def _deliver(self, lease: Lease, ctx: JobContext, output: JobOutput) -> None:
        try:
            files = self._checked_files(output, lease)
        except PermanentJobError as exc:
            await self._record_failure(lease, ctx, exc)
            return
        stored: list[str] = []
        sizes: dict[str, int] = {}
        keys: dict[str, str] = {}
        try:
            for role, path in files.items():
                key = job_key(lease.job_id, lease.attempt, role, path.suffix)
                try:
                    sizes[role] = await asyncio.to_thread(self.store.put_file, key, path)
                except Exception as exc:
                    # "No space left on device" alone did not say which disk.
                    raise StorageError(
                        f"{self._store_name()}, key {key}: {type(exc).__name__}: {exc}"
                    ) from exc
                stored.append(key)
                keys[role] = key
        except Exception as exc:
            # Nothing points at these files: they go, and the attempt failed.
            await self._delete_keys(stored)
            await self._record_failure(lease, ctx, exc)
            return
        except BaseException:
            await self._delete_keys(stored)
            raise
        new_result = NewResult(fields=output.result, artifact_keys=keys, sizes=sizes)
        try:
            result = await self._record(
                lease, ctx, "record the result of", lambda: self.queue.finish(lease, new_result)
            )
        except LeaseLost:
            # A try whose commit was not confirmed (the connection dropped) may have done it.
            result = await self._result_if_recorded(lease)
            if result is None:
                await self._delete_keys(stored)  # not ours any more: whoever holds the job now stores its own
                raise
        except OutcomeNotRecorded:
            # The files stay: the result row may yet point at them (a commit whose answer was
            # lost). Whatever settles the job deletes those of other attempts.
            raise
        except Exception as exc:
            # The result row was not written; record the failure first, so the database
            # confirms this attempt is not the result before its files go.
            await self._record_failure(lease, ctx, exc)
            await self._delete_keys(stored)
            return
        await self._tidy_after_success(lease)
        log.info("worker %s: job %s done, result %s", self.worker_id, lease.job_id, result.public_id)
        await self._notify("job_finished", lease.job_id, result)

    def _store_name(self) -> str:
        root = getattr(self.store, "root", None)
        return f"artifact store {root}" if root is not None else f"artifact store {type(self.store).__name__}"

    async def _result_if_recorded(self, lease: Lease) -> Any:
        try:
            return await self.queue.result_of(lease)
        except Exception:
            log.exception(
                "worker %s: could not check whether job %s was recorded", self.worker_id, lease.job_id
            )
            return None

    async def _delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            try:
                await asyncio.to_thread(self.store.delete, key)
            except (OSError, ValueError) as exc:
                log.warning("worker %s: could not delete %s: %s", self.worker_id, key, exc)

    async def _tidy_after_success(self, lease: Lease) -> None:
        # The result is recorded: a storage error here costs disk space, never the result.
        try:
            await asyncio.to_thread(self._delete_other_attempts, lease)
            await asyncio.to_thread(forget_input, self.store, lease.job)
        except (OSError, ValueError) as exc:
            log.warning(
                "worker %s: job %s: could not tidy the artifact store: %s", self.worker_id, lease.job_id, exc
            )

    def _checked_files(self, output: JobOutput, lease: Lease) -> dict[str, Path]:
        if not isinstance(output, JobOutput):
            raise PermanentJobError(f"runner returned {type(output).__name__}, not JobOutput")
        files: dict[str, Path] = {}
        for role, path in output.files.items():
            if role not in ARTIFACT_ROLES:
                raise PermanentJobError(f"runner returned unknown artifact role {role!r}")
            path = Path(path)
            if not path.is_file():
                raise PermanentJobError(f"runner's {role} file {path} does not exist")
            files[role] = path
        return files

    def _delete_other_attempts(self, lease: Lease) -> None:
        # Earlier attempts of this job (a crashed worker's) may have stored files; only
        # this attempt's are referenced by the result.
        prefix = job_prefix(lease.job_id)
        mine = f"{prefix}/{lease.attempt}/"
        for key in list(self.store.keys(prefix)):
            if not key.startswith(mine):
                self.store.delete(key)

    async def _notify(self, hook: str, *args: Any) -> None:
        try:
            await getattr(self.listener, hook)(*args)
        except Exception:
            log.exception("worker %s: listener %s failed", self.worker_id, hook)

    # -- housekeeping ---------------------------------------------------------------

    async def _clean_up_rescued(self) -> None:
        """Delete the files and uploads of jobs our claim just ended through the rescue.

        Their worker died (on its last attempt, or with a cancel pending), so no worker
        settled them; nothing else would ever delete what their attempts stored.
        """
        for job in self.queue.take_rescued():
            log.warning(
                "worker %s: job %s ended %s: its worker stopped sending heartbeats; deleting its files",
                self.worker_id,
                job.id,
                job.status,
            )
            try:
                await asyncio.to_thread(self.store.delete_prefix, job_prefix(job.id))
                await asyncio.to_thread(forget_input, self.store, job)
            except (OSError, ValueError) as exc:
                log.warning(
                    "worker %s: could not delete the files of job %s: %s", self.worker_id, job.id, exc
                )
            await self._notify("job_cancelled" if job.status == "cancelled" else "job_failed", job)

    async def _room_to_work(self) -> bool:
        """Whether the disks under ``[storage] data_dir`` have ``[storage] min_free_mb`` free.

        Logs one WARNING when space runs short and one INFO when it is back. Always true
        without settings, with ``min_free_mb = 0``, or when free space cannot be measured.
        """
        storage = getattr(self.settings, "storage", None)
        need_mb = int(getattr(storage, "min_free_mb", 0) or 0)
        if need_mb <= 0:
            return True
        places = [Path(self.settings.data_dir), self.workdir_root]
        if isinstance(self.store, LocalArtifactStore):
            places.append(self.store.root)  # may be a volume of its own (shared by GPU hosts)
        try:
            free, where = await asyncio.to_thread(_least_free, places)
        except OSError as exc:
            log.debug("worker %s: free space unknown (%s); taking jobs", self.worker_id, exc)
            return True
        free_mb = free // (1024 * 1024)
        room = free_mb >= need_mb
        if not room and not self._short_of_space:
            log.warning(
                "worker %s: %d MB free under [storage] data_dir (%s), below [storage] min_free_mb "
                "(%d); not taking jobs until there is room",
                self.worker_id,
                free_mb,
                where,
                need_mb,
            )
        elif room and self._short_of_space:
            log.info(
                "worker %s: %d MB free under [storage] data_dir (%s) again; taking jobs",
                self.worker_id,
                free_mb,
                where,
            )
        self._short_of_space = not room
        return room

    def _sweep_workdirs_now(self) -> None:
        try:
            self.sweep_dead_workdirs()
        except OSError as exc:  # housekeeping: never a reason to stop working
            log.warning("worker %s: work directory sweep failed: %s", self.worker_id, exc)

    async def _sweep_storage_now(self) -> None:
        self._next_sweep = time.monotonic() + self.sweep_seconds
        try:
            await self.sweep_storage()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again
            log.warning(
                "worker %s: artifact store sweep failed: %s: %s", self.worker_id, type(exc).__name__, exc
            )

    async def sweep_storage(self) -> int:
        """Delete what no job will need again; returns how many files went.

        That is, under ``jobs/<id>/``: files of jobs that this database has and that have
        ended (done, failed, cancelled), unless a result points at them (a worker that died
        between storing and recording, or right after recording, before it deleted other
        attempts' files); under ``uploads/``: pictures no live job reads, once
        ``upload_grace_seconds`` old (a job whose worker died right after recording it done
        never deleted its upload). Files of job ids this database has no row for are never
        judged: job ids restart in every database, so they may be another database's work.
        Nothing is swept from a store that belongs to another database
        (:func:`bot.storage_identity.check_data_dir` raises). The store is listed before
        the database is read, so a file stored meanwhile is never judged on old rows.
        """
        if isinstance(self.store, LocalArtifactStore):
            await check_data_dir(self.queue.db, self.store.root)
        jobs, uploads = await asyncio.to_thread(self._sweepable_keys)
        refs = await self.queue.storage_references()
        # Read after the references: a job that ends in between was live in them, so kept.
        ended = await ended_jobs(self.queue.db, {i for key in jobs if (i := _job_of_key(key)) is not None})
        doomed = [
            key
            for key in jobs
            if (job_id := _job_of_key(key)) is not None
            and job_id in ended
            and job_id not in refs.live_jobs
            and key not in refs.result_keys
        ]
        doomed += [
            key for key, age in uploads if key not in refs.live_inputs and age >= self.upload_grace_seconds
        ]
        if doomed:
            await asyncio.to_thread(self._delete_all, doomed)
            log.info("worker %s: swept %d file(s) no job needs any more", self.worker_id, len(doomed))
        return len(doomed)

    def _sweepable_keys(self) -> tuple[list[str], list[tuple[str, float]]]:
        jobs = list(self.store.keys("jobs"))
        uploads: list[tuple[str, float]] = []
        if isinstance(self.store, LocalArtifactStore):  # ages need the file; other stores keep them
            now = time.time()
            for key in self.store.keys("uploads"):
                with contextlib.suppress(FileNotFoundError):
                    uploads.append((key, now - self.store.path(key).stat().st_mtime))
        return jobs, uploads

    def _delete_all(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.store.delete(key)
            except (OSError, ValueError) as exc:
                log.warning("worker %s: could not delete %s: %s", self.worker_id, key, exc)

    def sweep_dead_workdirs(self) -> int:
        """Remove work directories of workers on this host whose process is gone (kill -9).

        A directory whose lock file nobody holds is a dead worker's, even when its name
        carries a live PID: a container's worker has the same PID at every start, and the
        old test (that PID is not running) kept a dead worker's directory forever. A
        directory without a lock file (made by an older version) is judged by its PID.
        Also removes the artifact store's partial files old enough to be a dead writer's.
        """
        removed = 0
        if self.workdir_root.is_dir():
            host = self.worker_id.rsplit("-", 2)[0]
            for directory in self.workdir_root.iterdir():
                parts = directory.name.rsplit("-", 2)
                if directory.name == self.worker_id or len(parts) != 3 or parts[0] != host:
                    continue
                if parts[1].isdigit() and directory.is_dir() and _abandoned(directory, int(parts[1])):
                    shutil.rmtree(directory, ignore_errors=True)
                    removed += 1
        if isinstance(self.store, LocalArtifactStore):
            self.store.sweep_partials()
        return removed


async def run_worker(
    settings: Any,
    *,
    runner: str | Runner = DEFAULT_RUNNER,
    worker_id: str | None = None,
    max_jobs: int | None = None,
    exit_when_idle: bool = False,
    handle_signals: bool = True,
) -> int:
    """The ``latent-painter worker`` process: check the schema, then work until SIGTERM/SIGINT.

    The embedded SQLite database is upgraded in place if it is behind; a PostgreSQL
    database must be upgraded with ``latent-painter db upgrade`` first. A data directory
    whose artifact store belongs to another database is refused
    (:class:`~bot.storage_identity.ForeignDataDirectory`). Returns the number of jobs handled.
    """
    from bot.storage_identity import open_data

    runner_fn = load_runner(runner) if isinstance(runner, str) else runner
    db, store = await open_data(settings)
    worker = Worker(
        JobQueue(db, queue_policy(settings)),
        store,
        runner_fn,
        workdir_root=settings.data_dir / "work",
        worker_id=worker_id,
        heartbeat_seconds=settings.queue.heartbeat_seconds,
        poll_seconds=settings.queue.poll_seconds,
        settings=settings,
        heartbeat_file=standalone_heartbeat_file(settings.data_dir),
    )
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, worker.stop)
    model = getattr(getattr(settings, "model", None), "id", None)
    log.info("worker %s: started on %s, model %s", worker.worker_id, db.dialect, model)
    if model == "tiny":
        # The default: a forgotten LATENT_PAINTER_MODEL_ID shows only as pictures of noise.
        log.warning(
            "worker %s: [model] id is 'tiny', the built-in model with random weights: jobs that name "
            "no model paint noise; set [model] id (LATENT_PAINTER_MODEL_ID) to a Stable Diffusion "
            "checkpoint",
            worker.worker_id,
        )
    try:
        return await worker.run(max_jobs=max_jobs, exit_when_idle=exit_when_idle)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await db.dispose()
        log.info("worker %s: stopped", worker.worker_id)


def exit_past_busy_runners(code: int) -> None:
    """Leave the process at once if a runner thread is still inside native code.

    A runner that cannot stop mid-call (loading a model, one big decode) holds a thread
    inside torch past the shutdown grace; finalising the interpreter under it aborts the
    process in C++. Its job is already back in the queue, so exit without waiting for it.
    Returns normally when no runner is busy.
    """
    busy = [t.name for t in threading.enumerate() if t.name.startswith("job-") and t.is_alive()]
    if not busy:
        return
    log.warning("leaving %s still busy; its job was handed back to the queue", ", ".join(busy))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

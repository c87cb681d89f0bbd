"""The job queue: one table, and one statement per state change.

States: ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled`` (and ``running`` →
``queued`` again on a retry, a graceful release, or a lease that went stale). A worker
holds a job through a :class:`Lease` — job id, worker id and attempt number — and every
statement it makes on that job checks all three, so a worker that lost its lease (it
stalled, another worker took the job back) can no longer change it.

Claiming is a single ``UPDATE … WHERE id IN (SELECT … LIMIT 1 [FOR UPDATE SKIP LOCKED])
RETURNING …``: under SQLite's ``BEGIN IMMEDIATE`` it is serialised by the write lock, on
PostgreSQL concurrent workers skip each other's locked rows. The order is fair: the user
served least recently first (round-robin), then priority (lower first), then age.
"""

from __future__ import annotations

import functools
import heapq
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, func, literal, or_, select, update
from sqlalchemy.exc import DBAPIError, DisconnectionError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from db.engine import Database
from db.models import LIVE_STATUSES, Job, JobStatus, Result, UTCDateTime, utcnow
from db.params import validate_kind, validate_params
from db.results import NewResult, new_public_id

QUEUED, RUNNING, DONE, FAILED, CANCELLED = (s.value for s in JobStatus)
# The error column of a job someone other than its requester cancelled (``cancel(by_moderator=True)``).
MODERATOR_CANCEL = "cancelled by a moderator"
MAX_ERROR_CHARS = 8000
# Ids per ``IN (…)`` when reading many jobs at once: far below every driver's parameter limit.
IDS_PER_QUERY = 500
STALE_ERROR = "the worker stopped sending heartbeats (crashed or stalled); lease expired"
# SQLSTATE classes that mean "not now" rather than "never": connection exceptions (08),
# insufficient resources (53), operator intervention such as a shutdown (57), and a
# serialization failure or deadlock (40001, 40P01), which PostgreSQL asks us to retry.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
_RETRY_SQLSTATES = ("40001", "40P01")


class QueueError(Exception):
    """Base of the queue's own errors."""


class QueueFull(QueueError):
    """The user already has as many live jobs as they may; the message says so."""


class JobNotFound(QueueError, LookupError):
    """No such job (or not one of the asker's)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class LeaseLost(QueueError):
    """The worker no longer holds this job: it was recovered by another worker or cancelled."""


def database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database could not be reached or was too busy, for now.

    True for a refused or dropped connection (asyncpg raises ``ConnectionRefusedError``
    itself), SQLite's ``database is locked`` after its busy timeout, a server shutting
    down, or a timeout; such a statement is worth trying again. False for errors that
    trying again cannot fix (a constraint, a bad value, a programming error).
    """
    if isinstance(error, OSError | TimeoutError | PoolTimeout | DisconnectionError):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
            return True
        error = error.orig
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return isinstance(state, str) and (
        state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or state in _RETRY_SQLSTATES
    )


@dataclass(frozen=True)
class QueuePolicy:
    """The queue's knobs (``[queue]`` in config.toml)."""

    lease_seconds: float = 120.0
    max_attempts: int = 3
    per_user_cap: int = 3
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 3600.0
    # How many recently finished jobs the ETA averages over.
    recent_jobs: int = 20

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``: exponential, with jitter.

        "Equal jitter": half the exponential delay is fixed, half is random, so retries of
        jobs that failed together (a model server hiccup) spread out instead of colliding.
        """
        delay = min(self.backoff_max_seconds, self.backoff_seconds * 2 ** max(0, attempt - 1))
        return delay / 2 + random.uniform(0, delay / 2)


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one attempt of one job; every later call on the job passes it."""

    job: Job
    worker_id: str

    @property
    def job_id(self) -> int:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts


@dataclass(frozen=True)
class Enqueued:
    """The job, and whether this call created it (False: a live job with the dedupe key existed)."""

    job: Job
    created: bool


@dataclass(frozen=True)
class StorageReferences:
    """What the artifact store must keep, as the database sees it at one moment."""

    live_jobs: frozenset[int]  # queued or running: any of their attempts may still store files
    live_inputs: frozenset[str]  # image_key of live jobs (uploads a runner is yet to read)
    result_keys: frozenset[str]  # every artifact key a result row points at


@dataclass(frozen=True)
class QueuePosition:
    """Where a job stands: how many jobs start before it and a rough time until it is done."""

    job_id: int
    status: str
    ahead: int
    running: int
    workers: int
    typical_seconds: float | None
    eta_seconds: float | None


def _held(lease: Lease) -> Any:
    """The WHERE clause every worker-side statement carries: this job, this worker, this attempt."""
    return and_(
        Job.id == lease.job_id,
        Job.status == RUNNING,
        Job.worker_id == lease.worker_id,
        Job.attempts == lease.attempt,
    )


def _at(moment: datetime) -> Any:
    """A time as a bound value of the column type, for use inside CASE (where no column types it)."""
    return literal(moment, UTCDateTime())


def _stale() -> Any:
    return and_(Job.status == RUNNING, Job.heartbeat_at < bindparam("stale_before", type_=UTCDateTime()))


@functools.cache
def _rescue_statement() -> Any:
    """Settle stale jobs that must not run again: out of attempts, or cancelled; returns them."""
    now = bindparam("now", type_=UTCDateTime())
    return (
        update(Job)
        .where(_stale(), or_(Job.attempts >= Job.max_attempts, Job.cancel_requested))
        .values(
            status=case((Job.cancel_requested, CANCELLED), else_=FAILED),
            error=case((Job.cancel_requested, Job.error), else_=STALE_ERROR),
            worker_id=None,
            finished_at=now,
        )
        .returning(Job)
    )


def _claim_order(queued: Sequence[Any], served: dict[int, datetime]) -> dict[int, int]:
    """How many of the ``queued`` jobs (rows of id, user_id, priority) the claim takes before each.

    Replays the claim's order exactly, once for the whole queue: the user whose latest job
    started longest ago (or never) first, then priority, then id — and a user who was just
    served goes to the back.
    """
    per_user: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for row in queued:
        per_user[row.user_id].append((row.priority, row.id))
    heap = []
    for user, jobs in per_user.items():
        jobs.sort(reverse=True)  # popped from the end: best first
        started = served.get(user)
        # Never served sorts first (the claim's NULLS FIRST), then by when they last were.
        turn = (0, 0.0) if started is None else (1, started.timestamp())
        heap.append((turn, jobs[-1], user))
    heapq.heapify(heap)
    order: dict[int, int] = {}
    while heap:
        _, (_, picked), user = heapq.heappop(heap)
        claimed = len(order)
        order[picked] = claimed
        jobs = per_user[user]
        jobs.pop()
        if jobs:
            heapq.heappush(heap, ((2, claimed), jobs[-1], user))
    return order


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as one consistent read saw it, to tell any number of jobs where they stand.

    A progress round of the bot takes one snapshot for every job it watches, instead of a
    :meth:`JobQueue.position` (a read of the whole queue) per job.
    """

    taken_at: datetime
    jobs: dict[int, Job]  # the jobs asked for, as they were in this read
    claim_order: dict[int, int]  # queued job id -> jobs the claim takes before it
    running: tuple[Any, ...]  # rows of worker_id, started_at, progress_frame, progress_total
    typical_seconds: float | None  # median duration of the recently finished jobs

    def position(self, job_id: int) -> QueuePosition:
        """Where the job stands in this snapshot; raises :class:`JobNotFound` if it was not asked for."""
        job = self.jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        typical, running = self.typical_seconds, self.running
        workers = max(1, len({row.worker_id for row in running}))
        if job.status not in LIVE_STATUSES:
            return QueuePosition(job.id, job.status, 0, len(running), workers, typical, 0.0)

        def remaining(started: datetime | None, frame: int | None, total: int | None) -> float:
            assert typical is not None
            if frame is not None and total:
                return typical * max(0.0, 1.0 - frame / total)
            elapsed = (self.taken_at - started).total_seconds() if started else 0.0
            return max(0.0, typical - elapsed)

        ahead = self.claim_order.get(job.id)
        if job.status == RUNNING or ahead is None:
            # A queued job missing from the queued rows was claimed (or ended) between two
            # reads that were not one snapshot: it is no longer waiting, so nobody is ahead.
            eta = None
            if typical is not None:
                eta = remaining(job.started_at, job.progress_frame, job.progress_total)
            return QueuePosition(job.id, RUNNING, 0, len(running), workers, typical, eta)
        eta = None
        if typical is not None:
            busy = sum(remaining(r.started_at, r.progress_frame, r.progress_total) for r in running)
            eta = (busy + ahead * typical) / workers + typical
        return QueuePosition(job.id, job.status, ahead, len(running), workers, typical, eta)


@functools.cache
def _claim_statement(dialect: str, with_kinds: bool) -> Any:
    """THE claim: one UPDATE of the first job in fair order, returning it.

    Built once per dialect (and with or without a kind filter) and reused, since building
    SQLAlchemy statements costs more than running this one on SQLite.
    """
    now = bindparam("now", type_=UTCDateTime())
    served = aliased(Job)
    # Round-robin: the user whose latest job started longest ago (or never) goes first.
    last_served = select(func.max(served.started_at)).where(served.user_id == Job.user_id).scalar_subquery()
    recoverable = and_(_stale(), Job.attempts < Job.max_attempts, Job.cancel_requested.is_(False))
    pick = select(Job.id).where(or_(and_(Job.status == QUEUED, Job.run_at <= now), recoverable))
    if with_kinds:
        pick = pick.where(Job.kind.in_(bindparam("kinds", expanding=True)))
    pick = pick.order_by(last_served.asc().nulls_first(), Job.priority, Job.id).limit(1)
    if dialect == "postgresql":
        pick = pick.with_for_update(skip_locked=True, of=Job)
    return (
        update(Job)
        .where(Job.id.in_(pick))
        .values(
            status=RUNNING,
            worker_id=bindparam("worker_id"),
            attempts=Job.attempts + 1,
            heartbeat_at=now,
            started_at=now,
            progress_step=None,
            progress_frame=None,
            progress_total=None,
            # A job taken back from a dead worker says so; the note is cleared on success.
            error=case((Job.status == RUNNING, STALE_ERROR), else_=Job.error),
        )
        .returning(Job)
    )


class JobQueue:
    """The queue API over one :class:`~db.engine.Database`. Each method is one transaction."""

    def __init__(self, db: Database, policy: QueuePolicy | None = None) -> None:
        self.db = db
        self.policy = policy or QueuePolicy()
        self._next_rescue = 0.0  # time.monotonic() of the next rescue run
        self._rescued: list[Job] = []  # ended by this queue's rescues, not yet taken

    # -- requester side -------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        user_id: int,
        guild_id: int | None = None,
        channel_id: int | None = None,
        interaction_token: str | None = None,
        token_expires_at: datetime | None = None,
        priority: int = 0,
        dedupe_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int | None = None,
        per_user_cap: int | None = None,
    ) -> Enqueued:
        """Add a job, unless a live job has the same ``dedupe_key`` (then that one is returned).

        Raises ``ValueError`` for bad input and :class:`QueueFull` when the user already has
        ``per_user_cap`` live (queued or running) jobs; in both cases nothing is written.
        """
        kind = validate_kind(kind)
        params = validate_params(kind, params)
        for name, value in (("user_id", user_id), ("guild_id", guild_id), ("channel_id", channel_id)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative whole number, got {value!r}")
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1000 <= priority <= 1000:
            raise ValueError(f"priority must be a whole number from -1000 to 1000, got {priority!r}")
        if dedupe_key is not None and not (isinstance(dedupe_key, str) and 0 < len(dedupe_key) <= 255):
            raise ValueError("dedupe_key must be text of 1 to 255 characters")
        attempts = self.policy.max_attempts if max_attempts is None else max_attempts
        if not 1 <= attempts <= 100:
            raise ValueError(f"max_attempts must be from 1 to 100, got {attempts!r}")
        cap = self.policy.per_user_cap if per_user_cap is None else per_user_cap
        now = utcnow()
        job = Job(
            kind=kind,
            status=QUEUED,
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            interaction_token=interaction_token,
            token_expires_at=token_expires_at,
            params=params,
            priority=priority,
            run_at=run_at or now,
            attempts=0,
            max_attempts=attempts,
            dedupe_key=dedupe_key,
            created_at=now,
        )
        async with self.db.write() as session:
            if self.db.dialect == "postgresql":
                # SQLite's BEGIN IMMEDIATE already serialises writers; on PostgreSQL two
                # enqueues of one user could both pass the cap check without this lock.
                await session.execute(select(func.pg_advisory_xact_lock(user_id)))
            if dedupe_key is not None and (existing := await self._live_with_key(session, dedupe_key)):
                return Enqueued(existing, created=False)
            live = await session.scalar(
                select(func.count()).where(Job.user_id == user_id, Job.status.in_(LIVE_STATUSES))
            )
            if live is not None and live >= cap:
                raise QueueFull(
                    f"You already have {live} job{'s' if live != 1 else ''} waiting or running "
                    f"(the limit is {cap}); try again when one has finished."
                )
            try:
                async with session.begin_nested():
                    session.add(job)
            except IntegrityError:
                # Another user's enqueue with the same dedupe key won the race (PostgreSQL).
                existing = await self._live_with_key(session, dedupe_key or "")
                if existing is None:
                    raise
                return Enqueued(existing, created=False)
        return Enqueued(job, created=True)

    @staticmethod
    async def _live_with_key(session: AsyncSession, dedupe_key: str) -> Job | None:
        return await session.scalar(
            select(Job).where(Job.dedupe_key == dedupe_key, Job.status.in_(LIVE_STATUSES))
        )

    async def cancel(self, job_id: int, *, user_id: int | None = None, by_moderator: bool = False) -> Job:
        """Cancel a job: a queued one at once, a running one at the worker's next step.

        With ``user_id``, only that user's job. ``by_moderator``: someone other than its
        requester cancels it; :data:`MODERATOR_CANCEL` goes in the job's error column in
        the same statement as the cancellation (so whoever sees the job cancelled sees who
        did it, after a restart too) and stays there if the attempt fails meanwhile.
        Returns the job as it now is (a finished job is returned unchanged); raises
        :class:`JobNotFound` if there is no such job.
        """
        noted = {"error": MODERATOR_CANCEL} if by_moderator else {}
        mine = Job.id == job_id if user_id is None else and_(Job.id == job_id, Job.user_id == user_id)
        async with self.db.write() as session:
            job = await session.scalar(
                update(Job)
                .where(mine, Job.status == QUEUED)
                .values(status=CANCELLED, finished_at=utcnow(), **noted)
                .returning(Job),
                execution_options={"synchronize_session": False},
            )
            if job is None:
                job = await session.scalar(
                    update(Job)
                    .where(mine, Job.status == RUNNING)
                    .values(cancel_requested=True, **noted)
                    .returning(Job),
                    execution_options={"synchronize_session": False},
                )
            if job is None:
                job = await session.scalar(select(Job).where(mine))
        if job is None:
            raise JobNotFound(f"no job {job_id}" + ("" if user_id is None else " of yours"))
        return job

    # -- worker side ----------------------------------------------------------------

    async def claim(self, worker_id: str, *, kinds: tuple[str, ...] | None = None) -> Lease | None:
        """Take the next job for ``worker_id``, or None if there is nothing to do.

        A running job whose heartbeat is older than the lease (its worker died) is taken
        back like a queued one, with an attempt counted. Stale jobs that may not run again
        (out of attempts, or cancelled) are settled by the rescue statement, which a claim
        runs first when ``lease_seconds / 4`` have passed since its last run, so a job that
        crashes every worker ends ``failed`` instead of going round forever. The jobs it
        ended are handed out by :meth:`take_rescued`, for the caller to clean up after.
        """
        now = utcnow()
        stale_before = now - timedelta(seconds=self.policy.lease_seconds)
        params: dict[str, Any] = {"now": now, "stale_before": stale_before, "worker_id": worker_id}
        if kinds:
            params["kinds"] = list(kinds)
        async with self.db.write() as session:
            if time.monotonic() >= self._next_rescue:
                rescued = await session.scalars(
                    _rescue_statement(),
                    {"now": now, "stale_before": stale_before},
                    execution_options={"synchronize_session": False},
                )
                ended = list(rescued.all())
                self._next_rescue = time.monotonic() + self.policy.lease_seconds / 4
            else:
                ended = []
            job = await session.scalar(
                _claim_statement(self.db.dialect, bool(kinds)),
                params,
                execution_options={"synchronize_session": False},
            )
        self._rescued.extend(ended)  # only once committed
        return None if job is None else Lease(job=job, worker_id=worker_id)

    def take_rescued(self) -> list[Job]:
        """The jobs this queue's claims ended through the rescue (failed or cancelled, their
        worker dead) since the last call. Nobody else will clean up after them: their
        uploads and the files their attempts stored are the caller's to delete."""
        rescued, self._rescued = self._rescued, []
        return rescued

    async def storage_references(self) -> StorageReferences:
        """Which jobs are live, which uploads they read, and which artifact keys results hold."""
        async with self.db.read() as session:
            live = (
                await session.execute(select(Job.id, Job.params).where(Job.status.in_(LIVE_STATUSES)))
            ).all()
            rows = await session.execute(
                select(Result.video_key, Result.image_key, Result.heatmap_key, Result.trail_key)
            )
            result_keys = frozenset(key for row in rows for key in row if key)
        inputs = {(params or {}).get("image_key") for _, params in live if isinstance(params, dict)}
        return StorageReferences(
            live_jobs=frozenset(job_id for job_id, _ in live),
            live_inputs=frozenset(key for key in inputs if isinstance(key, str)),
            result_keys=result_keys,
        )

    async def heartbeat(self, lease: Lease) -> bool:
        """Renew the lease; returns whether a cancel was requested. Raises :class:`LeaseLost`."""
        return await self._touch(lease, {})

    async def progress(self, lease: Lease, step: int, frame: int, total: int) -> bool:
        """Record progress (and renew the lease); returns whether a cancel was requested."""
        return await self._touch(
            lease, {"progress_step": step, "progress_frame": frame, "progress_total": total}
        )

    async def _touch(self, lease: Lease, values: dict[str, Any]) -> bool:
        async with self.db.write() as session:
            cancel = await session.scalar(
                update(Job)
                .where(_held(lease))
                .values(heartbeat_at=utcnow(), **values)
                .returning(Job.cancel_requested)
            )
        if cancel is None:
            raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held")
        return bool(cancel)

    async def finish(self, lease: Lease, new_result: NewResult) -> Result:
        """Mark the job done and write its result row, in one transaction.

        Raises :class:`LeaseLost` (and writes nothing) if the worker no longer holds the job.
        """
        new_result.validate()
        for tries_left in range(4, -1, -1):
            now = utcnow()
            try:
                async with self.db.write() as session:
                    job = await session.scalar(
                        update(Job)
                        .where(_held(lease))
                        .values(status=DONE, finished_at=now, heartbeat_at=now, error=None)
                        .returning(Job),
                        execution_options={"synchronize_session": False},
                    )
                    if job is None:
                        raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held")
                    result = new_result.row(job, new_public_id())
                    session.add(result)
                return result
            except IntegrityError as exc:
                # A public id collision (1 in 2^40 per existing result): draw again. The
                # one-result-per-job constraint cannot fire: the lease proved the job was
                # still running, and only finishing it makes a result.
                if not tries_left or "public_id" not in str(exc.orig):
                    raise
        raise AssertionError("unreachable")

    async def result_of(self, lease: Lease) -> Result | None:
        """The result this lease's attempt recorded, or None if it recorded none.

        For a worker whose ``finish`` failed with the connection lost after the commit may
        have happened: trying again raises :class:`LeaseLost` (the job is done), and this
        tells "done by me" from "taken over by another worker".
        """
        async with self.db.read() as session:
            return await session.scalar(
                select(Result)
                .join(Job, Result.job_id == Job.id)
                .where(
                    Job.id == lease.job_id,
                    Job.status == DONE,
                    Job.worker_id == lease.worker_id,
                    Job.attempts == lease.attempt,
                )
            )

    async def fail(self, lease: Lease, error: str, *, retry: bool = True) -> Job:
        """Record a failed attempt: back to the queue after a backoff, or ``failed`` for good.

        It is final when ``retry`` is False or the job has used ``max_attempts`` attempts;
        the error text is kept either way. Raises :class:`LeaseLost` if no longer held.
        """
        now = utcnow()
        again = retry and lease.attempt < lease.job.max_attempts
        next_status = QUEUED if again else FAILED
        run_at = now + timedelta(seconds=self.policy.backoff(lease.attempt)) if again else None
        async with self.db.write() as session:
            job = await session.scalar(
                update(Job)
                .where(_held(lease))
                .values(
                    status=case((Job.cancel_requested, CANCELLED), else_=next_status),
                    # It ends cancelled: who cancelled it is what its requester is told.
                    error=case(
                        (and_(Job.cancel_requested, Job.error == MODERATOR_CANCEL), Job.error),
                        else_=error[:MAX_ERROR_CHARS],
                    ),
                    worker_id=None,
                    heartbeat_at=None,
                    run_at=run_at or Job.run_at,
                    finished_at=case((Job.cancel_requested, _at(now)), else_=None if again else _at(now)),
                )
                .returning(Job),
                execution_options={"synchronize_session": False},
            )
        if job is None:
            raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held")
        return job

    async def release(self, lease: Lease) -> Job:
        """Give the job back unharmed (the worker is shutting down): queued again at once.

        The attempt is not counted, since the job did not fail. A job whose cancel was
        requested ends ``cancelled`` instead. Raises :class:`LeaseLost` if no longer held.
        """
        now = utcnow()
        async with self.db.write() as session:
            job = await session.scalar(
                update(Job)
                .where(_held(lease))
                .values(
                    status=case((Job.cancel_requested, CANCELLED), else_=QUEUED),
                    attempts=Job.attempts - 1,
                    worker_id=None,
                    heartbeat_at=None,
                    run_at=now,
                    progress_step=None,
                    progress_frame=None,
                    progress_total=None,
                    finished_at=case((Job.cancel_requested, _at(now)), else_=None),
                )
                .returning(Job),
                execution_options={"synchronize_session": False},
            )
        if job is None:
            raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held")
        return job

    async def confirm_cancel(self, lease: Lease) -> Job:
        """The worker stopped a job whose cancel was requested: mark it ``cancelled``."""
        async with self.db.write() as session:
            job = await session.scalar(
                update(Job)
                .where(_held(lease))
                .values(status=CANCELLED, worker_id=None, finished_at=utcnow())
                .returning(Job),
                execution_options={"synchronize_session": False},
            )
        if job is None:
            raise LeaseLost(f"job {lease.job_id} attempt {lease.attempt} is no longer held")
        return job

    # -- queries --------------------------------------------------------------------

    async def get(self, job_id: int) -> Job:
        """The job with this id; raises :class:`JobNotFound`."""
        async with self.db.read() as session:
            job = await session.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        return job

    async def list_jobs(
        self, *, status: str | None = None, user_id: int | None = None, limit: int = 50
    ) -> list[Job]:
        """Jobs newest first, optionally of one status and/or one user."""
        if status is not None and status not in tuple(JobStatus):
            raise ValueError(f"status must be one of {', '.join(JobStatus)}; got {status!r}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(Job).order_by(Job.id.desc()).limit(limit)
        if status is not None:
            query = query.where(Job.status == status)
        if user_id is not None:
            query = query.where(Job.user_id == user_id)
        async with self.db.read() as session:
            return list((await session.scalars(query)).all())

    async def counts(self) -> dict[str, int]:
        """Number of jobs in each status."""
        async with self.db.read() as session:
            rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
        return {status: 0 for status in JobStatus} | {status: n for status, n in rows.all()}

    async def get_many(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The jobs with these ids that exist, by id: one query per :data:`IDS_PER_QUERY` ids."""
        async with self.db.read() as session:
            return await self._jobs_by_id(session, job_ids)

    @staticmethod
    async def _jobs_by_id(session: AsyncSession, job_ids: Iterable[int]) -> dict[int, Job]:
        ids = sorted(set(job_ids))
        found: dict[int, Job] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start : start + IDS_PER_QUERY]
            found.update((job.id, job) for job in await session.scalars(select(Job).where(Job.id.in_(chunk))))
        return found

    async def jobs_after(
        self,
        after_id: int = 0,
        *,
        statuses: Sequence[str] = LIVE_STATUSES,
        finished_since: datetime | None = None,
        limit: int = 500,
    ) -> list[Job]:
        """One page of jobs oldest first: those with an id above ``after_id`` in ``statuses``.

        With ``finished_since``, only jobs that finished at or after it. Page on by passing
        the last id of a page as the next ``after_id``, until a page comes back empty; each
        page is its own short read, so paging through a long queue holds no transaction open.
        """
        unknown = [status for status in statuses if status not in tuple(JobStatus)]
        if unknown:
            raise ValueError(f"status must be one of {', '.join(JobStatus)}; got {unknown[0]!r}")
        if limit < 1:
            raise ValueError("limit must be at least 1")
        query = select(Job).where(Job.id > after_id, Job.status.in_(list(statuses)))
        if finished_since is not None:
            query = query.where(Job.finished_at >= finished_since)
        async with self.db.read() as session:
            return list((await session.scalars(query.order_by(Job.id).limit(limit))).all())

    async def position(self, job_id: int) -> QueuePosition:
        """How many jobs will start before this one, and an ETA from recent job durations.

        The count follows the claim order: each user ahead in the round-robin gets one
        more turn than the jobs this user has ahead of this one. The ETA is None until
        some job has finished, since there is nothing to measure yet. Raises
        :class:`JobNotFound`. To place many jobs, take one :meth:`snapshot` instead.
        """
        return (await self.snapshot([job_id])).position(job_id)

    async def snapshot(self, job_ids: Iterable[int] = ()) -> QueueSnapshot:
        """The jobs ``job_ids`` and the queue around them (claim order, running jobs, recent
        durations), all read in one snapshot, so what it says of a job is consistent.

        PostgreSQL reads each statement of a READ COMMITTED transaction afresh, so a worker
        could claim a job between reading it and reading the queue: the snapshot is read
        under REPEATABLE READ there. SQLite's read transaction is one snapshot already.
        """
        now = utcnow()
        async with self.db.read() as session:
            if self.db.dialect == "postgresql":
                await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            jobs = await self._jobs_by_id(session, job_ids)
            recent = (
                await session.execute(
                    select(Job.started_at, Job.finished_at)
                    .where(Job.status == DONE, Job.started_at.is_not(None))
                    .order_by(Job.finished_at.desc())
                    .limit(self.policy.recent_jobs)
                )
            ).all()
            running = (
                await session.execute(
                    select(Job.worker_id, Job.started_at, Job.progress_frame, Job.progress_total).where(
                        Job.status == RUNNING
                    )
                )
            ).all()
            queued: Sequence[Any] = ()
            served: dict[int, datetime] = {}
            if any(job.status == QUEUED for job in jobs.values()):
                queued = (
                    await session.execute(
                        select(Job.id, Job.user_id, Job.priority).where(Job.status == QUEUED)
                    )
                ).all()
                # Round-robin turns of the users waiting: a subquery, not their ids as
                # parameters, which a queue of thousands of members would run out of.
                waiting = select(Job.user_id).where(Job.status == QUEUED).distinct()
                served = dict(
                    (
                        await session.execute(
                            select(Job.user_id, func.max(Job.started_at))
                            .where(Job.user_id.in_(waiting))
                            .group_by(Job.user_id)
                        )
                    ).all()
                )
        durations = [(f - s).total_seconds() for s, f in recent if s is not None and f is not None]
        return QueueSnapshot(
            taken_at=now,
            jobs=jobs,
            claim_order=_claim_order(queued, served),
            running=tuple(running),
            typical_seconds=statistics.median(durations) if durations else None,
        )

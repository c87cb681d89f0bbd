"""The worker loop as an asyncio task (as the bot runs it): delivery, progress, cancel, lost leases."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.artifacts import LocalArtifactStore
from bot.worker import JobContext, JobOutput, PermanentJobError, Worker, WorkerListener, load_runner
from db.engine import Database, sqlite_path
from db.models import Result
from db.queue import JobQueue, QueuePolicy
from db.results import get_result
from tests import db_fixtures
from tests.job_runners import run_job

db_url, database = db_fixtures.db_url, db_fixtures.database


class Recorder(WorkerListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    async def job_started(self, lease) -> None:
        self.events.append(("started", lease.job_id))

    async def job_progress(self, lease, step, frame, total) -> None:
        self.events.append(("progress", lease.job_id))

    async def job_finished(self, job_id, result) -> None:
        self.events.append(("finished", job_id))

    async def job_failed(self, job) -> None:
        self.events.append(("failed", job.id))

    async def job_cancelled(self, job) -> None:
        self.events.append(("cancelled", job.id))


def make_worker(db: Database, tmp_path: Path, runner=run_job, store=None, **options) -> Worker:
    queue = JobQueue(db, QueuePolicy(lease_seconds=30, max_attempts=3, backoff_seconds=0, per_user_cap=50))
    return Worker(
        queue,
        store or LocalArtifactStore(tmp_path / "artifacts"),
        runner,
        workdir_root=tmp_path / "work",
        heartbeat_seconds=0.1,
        poll_seconds=0.02,
        progress_seconds=0.05,
        shutdown_grace_seconds=2,
        listener=Recorder(),
        **options,
    )


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    url = await db_fixtures.fresh_url("sqlite", tmp_path)
    db = Database.from_url(url)
    try:
        yield db
    finally:
        await db.dispose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def test_worker_task_delivers_a_job_with_progress_and_artifacts(
    database: Database, tmp_path: Path
) -> None:
    worker = make_worker(database, tmp_path)
    job = (await worker.queue.enqueue("paint", {"prompt": "harbour frames=4 sleep=0.6"}, user_id=5)).job
    seen_progress: list[tuple] = []

    async def watch() -> None:
        while True:
            current = await worker.queue.get(job.id)
            if current.progress_total:
                seen_progress.append((current.progress_frame, current.progress_total))
            if current.status == "done":
                return
            await asyncio.sleep(0.02)

    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(watch(), 30)
    worker.stop()
    assert await asyncio.wait_for(task, 10) == 1

    assert seen_progress and seen_progress[-1][1] == 4  # progress was saved while it ran
    async with database.read() as session:
        result = await session.scalar(select(Result).where(Result.job_id == job.id))
    assert result.model_id == "test-runner" and result.prompt == "harbour frames=4 sleep=0.6"
    assert result.artifact_keys() == {
        "video": f"jobs/{job.id}/1/video.mp4",
        "image": f"jobs/{job.id}/1/image.png",
        "heatmap": f"jobs/{job.id}/1/heatmap.png",
        "trail": f"jobs/{job.id}/1/trail.safetensors",
    }
    assert worker.store.read_bytes(result.image_key).startswith(b"\x89PNG")
    assert result.sizes["video"] == worker.store.size(result.video_key)
    assert (await get_result(database, result.public_id.lower())).id == result.id
    assert not (tmp_path / "work" / worker.worker_id).exists()  # work directory removed
    kinds = [kind for kind, _ in worker.listener.events]
    assert kinds[0] == "started" and "progress" in kinds and kinds[-1] == "finished"


async def test_cancel_stops_a_running_job_at_its_next_step(sqlite_db: Database, tmp_path: Path) -> None:
    worker = make_worker(sqlite_db, tmp_path)
    job = (await worker.queue.enqueue("paint", {"prompt": "stall-first=30"}, user_id=5)).job
    task = asyncio.create_task(worker.run())

    async def running() -> bool:
        return (await worker.queue.get(job.id)).status == "running"

    await eventually(running)
    asked = time.monotonic()
    assert (await worker.queue.cancel(job.id, user_id=5)).cancel_requested

    async def cancelled() -> bool:
        return (await worker.queue.get(job.id)).status == "cancelled"

    await eventually(cancelled, timeout=10)
    assert time.monotonic() - asked < 3
    worker.stop()
    await asyncio.wait_for(task, 10)
    assert list(worker.store.keys()) == []
    assert ("cancelled", job.id) in worker.listener.events


async def test_failures_are_retried_and_permanent_ones_are_not(sqlite_db: Database, tmp_path: Path) -> None:
    def runner(ctx: JobContext) -> JobOutput:
        if "permanent" in ctx.params["prompt"]:
            raise PermanentJobError("this model cannot paint at 64x64")
        return run_job(ctx)

    worker = make_worker(sqlite_db, tmp_path, runner=runner)
    flaky = (await worker.queue.enqueue("paint", {"prompt": "fail=1"}, user_id=1)).job
    doomed = (await worker.queue.enqueue("paint", {"prompt": "permanent"}, user_id=2)).job
    await asyncio.wait_for(worker.run(exit_when_idle=True), 30)
    flaky_job = await worker.queue.get(flaky.id)
    assert (flaky_job.status, flaky_job.attempts) == ("done", 2)
    doomed_job = await worker.queue.get(doomed.id)
    assert (doomed_job.status, doomed_job.attempts) == ("failed", 1)
    assert doomed_job.error == "PermanentJobError: this model cannot paint at 64x64"


async def test_bad_runner_output_fails_the_job_with_a_clear_error(
    sqlite_db: Database, tmp_path: Path
) -> None:
    def runner(ctx: JobContext) -> JobOutput:
        path = ctx.workdir / "x.gif"
        path.write_bytes(b"GIF89a")
        return JobOutput(files={"thumbnail": path})

    worker = make_worker(sqlite_db, tmp_path, runner=runner)
    job = (await worker.queue.enqueue("paint", {"prompt": "x"}, user_id=1)).job
    await asyncio.wait_for(worker.run(exit_when_idle=True), 30)
    failed = await worker.queue.get(job.id)
    assert failed.status == "failed" and "unknown artifact role 'thumbnail'" in failed.error
    assert list(worker.store.keys()) == []


class LeaseStealingStore(LocalArtifactStore):
    """A real store whose last write is followed by another worker taking the job over.

    It changes the real SQLite database with its own connection, as a worker on another
    machine would, at the worst moment: after the files are stored, before ``finish``.
    """

    def __init__(self, root: Path, database_file: Path) -> None:
        super().__init__(root)
        self.database_file = database_file
        self.puts = 0

    def put_file(self, key, source) -> int:
        size = super().put_file(key, source)
        self.puts += 1
        if self.puts == 4:
            with sqlite3.connect(self.database_file) as connection:
                connection.execute("UPDATE jobs SET worker_id = 'thief', attempts = attempts + 1")
        return size


async def test_artifacts_of_an_attempt_that_lost_its_lease_are_deleted(
    sqlite_db: Database, tmp_path: Path
) -> None:
    store = LeaseStealingStore(tmp_path / "artifacts", sqlite_path(sqlite_db.engine.url))
    worker = make_worker(sqlite_db, tmp_path, store=store)
    job = (await worker.queue.enqueue("paint", {"prompt": "x"}, user_id=1)).job
    await asyncio.wait_for(worker.run(max_jobs=1), 30)
    assert store.puts == 4
    assert list(store.keys()) == [] and store.partial_files() == []
    async with sqlite_db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Result)) == 0
    stolen = await worker.queue.get(job.id)
    assert (stolen.status, stolen.worker_id) == ("running", "thief")  # left to its new holder


async def test_stop_releases_the_job_even_if_the_runner_ignores_it(
    sqlite_db: Database, tmp_path: Path
) -> None:
    release_runner = threading.Event()

    def stubborn(ctx: JobContext) -> JobOutput:
        ctx.progress(0, 0, 1)
        release_runner.wait(20)
        return run_job(ctx)

    worker = make_worker(sqlite_db, tmp_path, runner=stubborn)
    job = (await worker.queue.enqueue("paint", {"prompt": "x"}, user_id=1)).job
    task = asyncio.create_task(worker.run())

    async def running() -> bool:
        return (await worker.queue.get(job.id)).progress_total == 1

    await eventually(running)
    worker.stop()

    async def released() -> bool:
        return (await worker.queue.get(job.id)).status == "queued"

    await eventually(released, timeout=1)  # at once, not after the runner
    await asyncio.wait_for(task, 10)  # and the loop ends after the grace period
    release_runner.set()
    assert (await worker.queue.get(job.id)).attempts == 0


async def test_cancelling_the_task_hands_the_job_back(sqlite_db: Database, tmp_path: Path) -> None:
    worker = make_worker(sqlite_db, tmp_path)
    job = (await worker.queue.enqueue("paint", {"prompt": "stall-first=30"}, user_id=1)).job
    task = asyncio.create_task(worker.run())

    async def running() -> bool:
        return (await worker.queue.get(job.id)).status == "running"

    await eventually(running)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await worker.queue.get(job.id)).status == "queued"


def test_load_runner_explains_bad_specs() -> None:
    assert load_runner("tests.job_runners:run_job") is run_job
    with pytest.raises(ValueError, match="must look like module:function"):
        load_runner("tests.job_runners.run_job")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_runner("tests.no_such_module:run")
    with pytest.raises(ValueError, match="has no callable 'nope'"):
        load_runner("tests.job_runners:nope")


async def test_heartbeats_keep_a_job_longer_than_its_lease(sqlite_db: Database, tmp_path: Path) -> None:
    worker = make_worker(sqlite_db, tmp_path)
    worker.queue.policy = QueuePolicy(lease_seconds=0.6, backoff_seconds=0)
    # Two seconds without progress: only heartbeats keep the 0.6 s lease.
    job = (await worker.queue.enqueue("paint", {"prompt": "stall-first=2 frames=1"}, user_id=1)).job
    other = JobQueue(sqlite_db, QueuePolicy(lease_seconds=0.6))
    task = asyncio.create_task(worker.run(max_jobs=1))

    async def held() -> bool:
        return (await worker.queue.get(job.id)).worker_id == worker.worker_id

    await eventually(held)
    stolen = []
    while not task.done():
        if (lease := await other.claim("rival")) is not None:
            stolen.append(lease.job_id)
        await asyncio.sleep(0.05)
    await task
    done = await worker.queue.get(job.id)
    assert stolen == [] and (done.status, done.attempts) == ("done", 1)


async def test_warm_up_runs_once_before_the_first_claim_and_never_blocks_jobs(
    sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The runner's warm_up (model load, compile) runs before the first job, in a thread,
    with the worker's settings; a failing one is logged and jobs still run; a stop during
    a long one ends the worker at once."""
    calls: list[tuple[object, str, bool]] = []

    def warming_runner(ctx: JobContext) -> JobOutput:
        return run_job(ctx)

    def warm_up(settings: object) -> None:
        calls.append((settings, threading.current_thread().name, bool(worker.current)))
        raise RuntimeError("no GPU today")

    warming_runner.warm_up = warm_up  # type: ignore[attr-defined]
    worker = make_worker(sqlite_db, tmp_path, runner=warming_runner, settings="the settings")
    job = (await worker.queue.enqueue("paint", {"prompt": "harbour frames=2"}, user_id=5)).job
    assert await asyncio.wait_for(worker.run(max_jobs=1), 30) == 1
    assert (await worker.queue.get(job.id)).status == "done"
    assert calls == [("the settings", "warm-up", False)]  # once, off the event loop, before the job
    assert "warm-up failed: no GPU today; the first job will try again" in caplog.text

    release = threading.Event()

    def slow_runner(ctx: JobContext) -> JobOutput:
        return run_job(ctx)

    slow_runner.warm_up = lambda settings: release.wait(30)  # type: ignore[attr-defined]
    slow = make_worker(sqlite_db, tmp_path, runner=slow_runner)
    task = asyncio.create_task(slow.run())
    await asyncio.sleep(0.3)
    slow.stop()
    started = time.monotonic()
    assert await asyncio.wait_for(task, 10) == 0
    assert time.monotonic() - started < 2
    release.set()

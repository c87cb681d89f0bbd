"""Real worker processes against one database: no job lost or done twice, crashes, SIGTERM, retries.

Each worker is ``python -m bot.cli_queue worker`` (what ``latent-painter worker`` runs) with
the cheap runner from ``tests/job_runners.py``, which logs every attempt it starts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.artifacts import LocalArtifactStore
from bot.worker import JobContext, JobOutput, Worker
from db.engine import Database
from db.models import Job, Result
from db.queue import STALE_ERROR, JobQueue, QueuePolicy
from tests.db_fixtures import BACKENDS, ROOT, dispose_url, fresh_url, worker_command, write_config
from tests.job_runners import run_job, run_log


def crash_while_recording(ctx: JobContext) -> JobOutput:
    """A runner for worker processes: paints as ``run_job`` does, and its process then dies
    (SIGKILL, as the OOM killer does) while recording the result: the files are stored,
    no result row is written. Fault injection: only ever run in a worker process."""
    from db.queue import JobQueue

    async def die(self: JobQueue, lease: object, new_result: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    JobQueue.finish = die  # type: ignore[method-assign]
    return run_job(ctx)


@dataclass
class Setup:
    url: str
    data_dir: Path
    config: Path
    run_log: Path
    db: Database
    queue: JobQueue

    def start_worker(self, *extra: str, runner: str | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LATENT_PAINTER_TEST_RUN_LOG": str(self.run_log)}
        env.pop("LATENT_PAINTER_DATABASE_URL", None)
        log = open(self.data_dir / f"worker-{time.monotonic_ns()}.log", "wb")  # noqa: SIM115
        command = worker_command(self.config, *extra)
        if runner is not None:
            command[command.index("--runner") + 1] = runner
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.data_dir.glob("worker-*.log"))

    async def job(self, job_id: int) -> Job:
        return await self.queue.get(job_id)

    async def result_count(self) -> int:
        async with self.db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(Result)) or 0)


async def _setup(backend: str, tmp_path: Path, **queue_settings: float) -> Setup:
    url = await fresh_url(backend, tmp_path / "db")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    settings = {"poll_seconds": 0.05, "heartbeat_seconds": 0.2, "backoff_seconds": 0, **queue_settings}
    config = write_config(tmp_path / "config.toml", url, data_dir, **settings)
    db = Database.from_url(url)
    queue = JobQueue(db, QueuePolicy(per_user_cap=1000, max_attempts=3, backoff_seconds=0))
    return Setup(url, data_dir, config, tmp_path / "runs.log", db, queue)


@pytest.fixture(params=BACKENDS)
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    state = await _setup(request.param, tmp_path)
    try:
        yield state
    finally:
        await state.db.dispose()
        await dispose_url(request.param, state.url)


@pytest.fixture
async def sqlite_setup(tmp_path: Path) -> AsyncIterator[Setup]:
    state = await _setup("sqlite", tmp_path, lease_seconds=2)
    try:
        yield state
    finally:
        await state.db.dispose()


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str, setup: Setup) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{setup.worker_logs()}")


def finish(process: subprocess.Popen[bytes], timeout: float = 120) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


async def test_several_worker_processes_do_every_job_exactly_once(setup: Setup) -> None:
    jobs = 200
    ids = []
    for n in range(jobs):
        enqueued = await setup.queue.enqueue("paint", {"prompt": f"job {n} frames=1"}, user_id=n % 20)
        ids.append(enqueued.job.id)
    workers = [setup.start_worker("--exit-when-idle") for _ in range(3)]
    codes = [await asyncio.to_thread(finish, w) for w in workers]
    assert codes == [0, 0, 0], setup.worker_logs()

    statuses = Counter([(await setup.job(i)).status for i in ids])
    assert statuses == {"done": jobs}, statuses
    async with setup.db.read() as session:
        result_jobs = (await session.scalars(select(Result.job_id))).all()
    assert sorted(result_jobs) == sorted(ids)  # one result per job, none twice
    starts = Counter(job for job, _attempt, _pid, event in run_log(setup.run_log) if event == "start")
    assert set(starts) == set(ids) and set(starts.values()) == {1}  # each job ran exactly once
    pids = {pid for _job, _attempt, pid, _event in run_log(setup.run_log)}
    assert len(pids) >= 2  # the work really was shared between processes
    store = LocalArtifactStore(setup.data_dir / "artifacts")
    assert len(list(store.keys())) == 4 * jobs and store.partial_files() == []


async def test_a_killed_worker_s_job_is_finished_by_another_exactly_once(sqlite_setup: Setup) -> None:
    setup = sqlite_setup
    job_id = (await setup.queue.enqueue("paint", {"prompt": "stall-first=60"}, user_id=1)).job.id
    first = setup.start_worker()

    async def started() -> bool:
        job = await setup.job(job_id)
        return job.status == "running" and job.progress_total is not None

    await wait_until(started, 60, "the first worker to start the job", setup)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    dead_dirs = list((setup.data_dir / "work").iterdir())
    assert len(dead_dirs) == 1  # the killed worker's work directory, left behind

    second = setup.start_worker()
    try:

        async def done() -> bool:
            return (await setup.job(job_id)).status == "done"

        await wait_until(done, 60, "the second worker to finish the job after the lease expired", setup)
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(finish, second, 30) == 0

    job = await setup.job(job_id)
    assert job.attempts == 2 and job.error is None
    assert await setup.result_count() == 1
    store = LocalArtifactStore(setup.data_dir / "artifacts")
    assert sorted(store.keys()) == [
        f"jobs/{job_id}/2/heatmap.png",
        f"jobs/{job_id}/2/image.png",
        f"jobs/{job_id}/2/trail.safetensors",
        f"jobs/{job_id}/2/video.mp4",
    ]
    assert store.partial_files() == []
    assert not any(d.exists() for d in dead_dirs)  # swept by the second worker
    attempts = [(attempt, event) for job, attempt, _pid, event in run_log(setup.run_log) if job == job_id]
    assert attempts == [(1, "start"), (2, "start"), (2, "end")]


async def test_sigterm_releases_the_running_job_at_once(sqlite_setup: Setup) -> None:
    setup = sqlite_setup
    job_id = (await setup.queue.enqueue("paint", {"prompt": "stall-first=60"}, user_id=1)).job.id
    worker = setup.start_worker()

    async def started() -> bool:
        job = await setup.job(job_id)
        return job.status == "running" and job.progress_total is not None

    await wait_until(started, 60, "the worker to start the job", setup)
    signalled = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(finish, worker, 30)
    elapsed = time.monotonic() - signalled
    assert code == 0, setup.worker_logs()
    assert elapsed < 5, f"worker took {elapsed:.1f}s to stop"
    job = await setup.job(job_id)
    # Back in the queue, at once (not after the 2 s lease), with its attempt given back.
    assert (job.status, job.attempts, job.worker_id, job.heartbeat_at) == ("queued", 0, None, None)
    assert LocalArtifactStore(setup.data_dir / "artifacts").partial_files() == []
    assert not (setup.data_dir / "work").exists() or list((setup.data_dir / "work").iterdir()) == []


async def test_retries_end_done_after_two_failures_and_failed_with_the_last_error(
    sqlite_setup: Setup,
) -> None:
    setup = sqlite_setup
    flaky = (await setup.queue.enqueue("paint", {"prompt": "fail=2"}, user_id=1)).job.id
    broken = (await setup.queue.enqueue("paint", {"prompt": "always-fail"}, user_id=2)).job.id
    worker = setup.start_worker("--exit-when-idle")
    assert await asyncio.to_thread(finish, worker) == 0, setup.worker_logs()

    flaky_job = await setup.job(flaky)
    assert (flaky_job.status, flaky_job.attempts) == ("done", 3)
    broken_job = await setup.job(broken)
    assert (broken_job.status, broken_job.attempts) == ("failed", 3)
    assert broken_job.error == "RuntimeError: planned failure on attempt 3 (always)"
    assert await setup.result_count() == 1
    store = LocalArtifactStore(setup.data_dir / "artifacts")
    assert [k.split("/")[:3] for k in store.keys()] == [["jobs", str(flaky), "3"]] * 4


async def test_jobs_the_rescue_ends_leave_no_files_behind(sqlite_setup: Setup) -> None:
    """A worker killed on a job's last attempt after storing its files, and a job cancelled
    after its worker was killed: the rescue ends both, and the worker whose claim did it
    deletes their stored files and uploaded pictures (they stayed forever)."""
    setup = sqlite_setup
    store = LocalArtifactStore(setup.data_dir / "artifacts")
    store.put_bytes("uploads/1/last.png", b"picture")
    store.put_bytes("uploads/2/cancelled.png", b"picture")
    last = (
        await setup.queue.enqueue(
            "paint", {"prompt": "frames=1", "image_key": "uploads/1/last.png"}, user_id=1, max_attempts=1
        )
    ).job.id
    cancelled = (
        await setup.queue.enqueue(
            "paint", {"prompt": "stall-first=60", "image_key": "uploads/2/cancelled.png"}, user_id=2
        )
    ).job.id

    crashing = setup.start_worker(runner="tests.test_queue_processes:crash_while_recording")
    assert await asyncio.to_thread(finish, crashing, 60) == -signal.SIGKILL
    assert [k.split("/")[:3] for k in store.keys("jobs")] == [["jobs", str(last), "1"]] * 4

    stalling = setup.start_worker()

    async def stalled() -> bool:
        job = await setup.job(cancelled)
        return job.status == "running" and job.progress_total is not None

    await wait_until(stalled, 60, "the second job to start", setup)
    stalling.send_signal(signal.SIGKILL)
    stalling.wait(timeout=10)
    assert (await setup.queue.cancel(cancelled, user_id=2)).cancel_requested

    rescuer = setup.start_worker()
    try:

        async def cleaned() -> bool:
            return list(store.keys()) == []

        await wait_until(cleaned, 60, "the rescued jobs' files to be deleted", setup)
    finally:
        rescuer.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(finish, rescuer, 30) == 0
    assert ((await setup.job(last)).status, (await setup.job(last)).error) == ("failed", STALE_ERROR)
    assert (await setup.job(cancelled)).status == "cancelled"
    assert "deleting its files" in setup.worker_logs()


async def test_a_dead_worker_s_directory_goes_even_when_its_pid_is_taken_again(tmp_path: Path) -> None:
    """In a container the worker is PID 2 at every start: the directory a killed worker
    left, named with the PID the restarted worker has again, was kept forever. The lock
    file a live worker holds tells them apart."""
    setup = await _setup("sqlite", tmp_path, lease_seconds=30)
    stalled = (await setup.queue.enqueue("paint", {"prompt": "stall-first=60"}, user_id=1)).job.id
    first = setup.start_worker()
    idle = setup.start_worker()
    try:

        async def both_up() -> bool:
            job = await setup.job(stalled)
            return job.progress_total is not None and len(list((setup.data_dir / "work").iterdir())) == 2

        await wait_until(both_up, 60, "one worker on the job and one idle", setup)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        [dead] = [d for d in (setup.data_dir / "work").iterdir() if d.name.split("-")[-2] == str(first.pid)]
        [alive] = [d for d in (setup.data_dir / "work").iterdir() if d != dead]
        assert (dead / ".lock").is_file() and (alive / ".lock").is_file()
        # The restarted container's worker: this process, with the PID the dead one had.
        host, _pid, suffix = dead.name.rsplit("-", 2)
        dead = dead.rename(dead.with_name(f"{host}-{os.getpid()}-{suffix}"))
        restarted = Worker(
            setup.queue,
            LocalArtifactStore(setup.data_dir / "artifacts"),
            run_job,
            workdir_root=setup.data_dir / "work",
            worker_id=f"{host}-{os.getpid()}-0a0b0c",
        )
        assert restarted.sweep_dead_workdirs() == 1
        assert not dead.exists() and (alive / ".lock").is_file()  # the live one's stays
    finally:
        for process in (first, idle):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(finish, idle, 30) == 0
        await setup.db.dispose()
    assert list((setup.data_dir / "work").iterdir()) == []  # it removed its own on the way out

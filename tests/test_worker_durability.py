"""The worker survives what goes wrong around a job: the database going away while an outcome
is recorded, a job that breaks the loop, a worker task that dies inside the bot.

The database really goes away: SQLite's write lock is held by another connection (as
``sqlite3`` in a shell would), PostgreSQL's connections are cut at a TCP proxy between the
worker and the server (as a server restart or a network blip does).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bot.artifacts import LocalArtifactStore
from bot.cli import main
from bot.cli_bot import check_health
from bot.config import load_settings
from bot.discord_bot import LatentPainterBot
from bot.worker import WORKER_HEARTBEAT_FILE, JobContext, JobOutput, Worker
from db.engine import Database, sqlite_path
from db.models import Result
from db.queue import JobQueue, QueuePolicy
from tests import db_fixtures
from tests.job_runners import run_job


class TcpProxy:
    """A loopback TCP proxy whose connections can be cut and whose port can be closed for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Drop every connection and refuse new ones (the server is "down")."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@dataclass
class Backend:
    """A migrated database, the URL the worker uses (through the proxy for PostgreSQL), and
    a way to take the database away for a while from any thread."""

    name: str
    url: str
    worker_url: str
    proxy: TcpProxy | None
    loop: asyncio.AbstractEventLoop

    def worker_database(self) -> Database:
        # A short busy timeout: SQLite's "database is locked" after 0.1 s instead of 30 s.
        if self.name == "sqlite":
            return Database.from_url(self.worker_url, busy_timeout_ms=100)
        return Database.from_url(self.worker_url)

    def take_away(self, seconds: float) -> None:
        """From a runner's thread: the database is unavailable to the worker for ``seconds``."""
        if self.proxy is None:
            path = sqlite_path(self.url)
            holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            holder.execute("BEGIN EXCLUSIVE")

            def give_back() -> None:
                holder.execute("ROLLBACK")
                holder.close()

        else:
            proxy = self.proxy
            asyncio.run_coroutine_threadsafe(proxy.cut(), self.loop).result(10)

            def give_back() -> None:
                asyncio.run_coroutine_threadsafe(proxy.open(), self.loop).result(10)

        timer = threading.Timer(seconds, give_back)
        timer.daemon = True
        timer.start()


@pytest.fixture(params=db_fixtures.BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    url = await db_fixtures.fresh_url(request.param, tmp_path)
    proxy = None
    worker_url = url
    if request.param == "postgresql":
        parsed = make_url(url)
        proxy = TcpProxy(parsed.port or 5432)
        await proxy.open()
        worker_url = parsed.set(port=proxy.port).render_as_string(hide_password=False)
    try:
        yield Backend(request.param, url, worker_url, proxy, asyncio.get_running_loop())
    finally:
        if proxy is not None:
            await proxy.cut()
        await db_fixtures.dispose_url(request.param, url)


def make_worker(db: Database, tmp_path: Path, runner, *, lease_seconds: float, **options) -> Worker:
    queue = JobQueue(
        db, QueuePolicy(lease_seconds=lease_seconds, max_attempts=3, backoff_seconds=0, per_user_cap=50)
    )
    options = {
        "heartbeat_seconds": 0.2,
        "poll_seconds": 0.05,
        "progress_seconds": 0.05,
        "shutdown_grace_seconds": 2,
        "retry_seconds": 0.1,
        "retry_max_seconds": 0.4,
        **options,
    }
    return Worker(
        queue, LocalArtifactStore(tmp_path / "artifacts"), runner, workdir_root=tmp_path / "work", **options
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def outage_runner(backend: Backend, seconds: float) -> Callable[[JobContext], JobOutput]:
    """The cheap runner; a first attempt whose prompt says "outage" takes the database away
    as it returns, so the worker records the outcome while the database is unavailable."""

    def runner(ctx: JobContext) -> JobOutput:
        output = run_job(ctx)
        if ctx.attempt == 1 and "outage" in ctx.params["prompt"]:
            backend.take_away(seconds)
        return output

    return runner


async def results_of(db: Database, job_id: int) -> list[Result]:
    async with db.read() as session:
        return list((await session.scalars(select(Result).where(Result.job_id == job_id))).all())


async def test_a_result_is_recorded_once_the_database_is_back_within_the_lease(
    backend: Backend, tmp_path: Path
) -> None:
    """The old worker died with the database error (and deleted the stored files first)."""
    checker = Database.from_url(backend.url)
    worker_db = backend.worker_database()
    worker = make_worker(worker_db, tmp_path, outage_runner(backend, 1.5), lease_seconds=6)
    try:
        job = (await JobQueue(checker).enqueue("paint", {"prompt": "outage at the end"}, user_id=1)).job
        task = asyncio.create_task(worker.run())

        async def done() -> bool:
            return (await JobQueue(checker).get(job.id)).status == "done"

        await eventually(done, "the result to be recorded after the outage")
        finished = await JobQueue(checker).get(job.id)
        assert finished.attempts == 1  # recorded, not painted again
        [result] = await results_of(checker, job.id)
        assert all(worker.store.exists(key) for key in result.artifact_keys().values())
        assert sorted(worker.store.keys()) == sorted(result.artifact_keys().values())

        # The worker is still working: the next job is painted too.
        assert not task.done()
        second = (await JobQueue(checker).enqueue("paint", {"prompt": "after"}, user_id=2)).job

        async def second_done() -> bool:
            return (await JobQueue(checker).get(second.id)).status == "done"

        await eventually(second_done, "the next job")
        worker.stop()
        assert await asyncio.wait_for(task, 10) == 2
    finally:
        worker.stop()
        await worker_db.dispose()
        await checker.dispose()


async def test_an_outage_longer_than_the_lease_gives_the_job_back_and_the_worker_goes_on(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="latent_painter.worker")
    checker = Database.from_url(backend.url)
    worker_db = backend.worker_database()
    worker = make_worker(worker_db, tmp_path, outage_runner(backend, 3.0), lease_seconds=1.0)
    try:
        job = (await JobQueue(checker).enqueue("paint", {"prompt": "outage at the end"}, user_id=1)).job
        task = asyncio.create_task(worker.run())

        async def done() -> bool:
            return (await JobQueue(checker).get(job.id)).status == "done"

        await eventually(done, "the job to be painted again after the outage")
        assert not task.done()
        worker.stop()
        await asyncio.wait_for(task, 10)
    finally:
        worker.stop()
        await worker_db.dispose()
        await checker.dispose()

    finished = await JobQueue(Database.from_url(backend.url)).get(job.id)
    assert finished.attempts == 2  # the first attempt's outcome could not be recorded in time
    [result] = await results_of(Database.from_url(backend.url), job.id)
    # The first attempt's files were deleted once the second one's result was recorded.
    assert sorted(worker.store.keys()) == sorted(result.artifact_keys().values())
    assert all(key.startswith(f"jobs/{job.id}/2/") for key in worker.store.keys())
    gave_up = [r.getMessage() for r in caplog.records if "could not record the result of" in r.getMessage()]
    assert gave_up and "before its lease has expired: the database is unavailable" in gave_up[0]
    # Claiming while the database was away: one traceback, then one line per try.
    claims = [r for r in caplog.records if r.getMessage().startswith(f"worker {worker.worker_id}: claiming")]
    failures = [r for r in claims if "failed" in r.getMessage()]
    assert len(failures) >= 2, [r.getMessage() for r in claims]
    assert failures[0].exc_info is not None and all(r.exc_info is None for r in failures[1:])
    assert "claiming a job failed again (2 times" in failures[1].getMessage()
    assert all("\n" not in r.getMessage() for r in failures[1:]) and "\n" not in gave_up[0]
    assert any("works again after" in r.getMessage() for r in claims)


async def test_a_job_that_breaks_the_loop_fails_and_the_worker_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A job row the worker cannot even start (params that are not an object) used to end
    the worker, and every restarted worker after it."""
    url = await db_fixtures.fresh_url("sqlite", tmp_path)
    db = Database.from_url(url)
    worker = make_worker(db, tmp_path, run_job, lease_seconds=30)
    try:
        broken = (await worker.queue.enqueue("paint", {"prompt": "broken"}, user_id=1)).job
        fine = (await worker.queue.enqueue("paint", {"prompt": "fine"}, user_id=2)).job
        with sqlite3.connect(sqlite_path(url)) as connection:
            connection.execute("UPDATE jobs SET params = '[1, 2]' WHERE id = ?", (broken.id,))
        task = asyncio.create_task(worker.run())

        async def settled() -> bool:
            statuses = {(await worker.queue.get(i)).status for i in (broken.id, fine.id)}
            return statuses == {"failed", "done"}

        await eventually(settled, "both jobs to end")
        assert not task.done()
        worker.stop()
        await asyncio.wait_for(task, 10)
        failed = await worker.queue.get(broken.id)
        assert failed.status == "failed" and failed.attempts == 3
        assert failed.error.startswith("TypeError: ")
        assert (await worker.queue.get(fine.id)).status == "done"
        logged = [
            r for r in caplog.records if "ended with an unexpected error; carrying on" in r.getMessage()
        ]
        assert len(logged) == 3 and all(r.exc_info is not None for r in logged)
    finally:
        worker.stop()
        await db.dispose()


async def test_the_bot_restarts_a_dead_worker_and_health_tells_when_it_is_not_running(
    tmp_path: Path,
) -> None:
    """A worker that cannot start (its work directory is a file on a mis-made volume) is
    logged and started again until it can; meanwhile `latent-painter health` says so."""
    data = tmp_path / "data"
    data.mkdir()
    settings = load_settings(
        env={
            "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
            "LATENT_PAINTER_QUEUE_HEARTBEAT_SECONDS": "0.1",
            "LATENT_PAINTER_QUEUE_POLL_SECONDS": "0.05",
        }
    )
    url = settings.database_url
    await db_fixtures.migrate.upgrade(url)
    db = Database.from_url(url)
    bot = LatentPainterBot(settings, db=db, store=LocalArtifactStore(data / "artifacts"), runner=run_job)
    bot.worker_restart_seconds = (0.1, 0.2)
    (data / "work").write_text("not a directory\n")
    (data / "bot.heartbeat").write_text("1\n")  # the bot itself is connected
    job = (await bot.queue.enqueue("paint", {"prompt": "waits for the worker"}, user_id=1)).job
    try:
        bot.start_worker()
        await asyncio.sleep(0.5)  # several tries, each dying
        assert bot._worker_task is not None and not bot._worker_task.done()
        assert (await bot.queue.get(job.id)).status == "queued"
        problem = await check_health(settings, max_age=60)
        assert problem is not None and problem.startswith("no worker heartbeat yet")

        (data / "work").unlink()  # the volume is fixed: the next restart works

        async def done() -> bool:
            return (await bot.queue.get(job.id)).status == "done"

        await eventually(done, "the restarted worker to paint the job", timeout=20)
        (data / "bot.heartbeat").write_text("1\n")
        assert await check_health(settings, max_age=60) is None

        bot.worker.stop()
        await asyncio.wait_for(bot._worker_task, 10)
        await asyncio.sleep(0.6)
        (data / "bot.heartbeat").write_text("1\n")
        problem = await check_health(settings, max_age=0.5)
        assert problem is not None and problem.startswith("the bot's worker last beat")
        assert problem.endswith("it has stopped, so nothing is painted")
    finally:
        if bot.worker is not None:
            bot.worker.stop()
        await db.dispose()


async def test_heartbeat_failures_log_one_traceback_then_one_line_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = await db_fixtures.fresh_url("sqlite", tmp_path)
    db = Database.from_url(url, busy_timeout_ms=50)
    checker = Database.from_url(url)
    backend = Backend("sqlite", url, url, None, asyncio.get_running_loop())
    release = threading.Event()

    def runner(ctx: JobContext) -> JobOutput:
        ctx.progress(0, 0, 1)
        time.sleep(0.3)
        backend.take_away(1.2)  # while the job runs: only heartbeats meet it
        release.wait(5)
        return run_job(ctx)

    worker = make_worker(db, tmp_path, runner, lease_seconds=10, heartbeat_seconds=0.1)
    try:
        job = (await worker.queue.enqueue("paint", {"prompt": "x"}, user_id=1)).job
        task = asyncio.create_task(worker.run(max_jobs=1))
        await asyncio.sleep(2.0)
        release.set()
        assert await asyncio.wait_for(task, 20) == 1
        assert (await JobQueue(checker).get(job.id)).status == "done"
    finally:
        release.set()
        await db.dispose()
        await checker.dispose()
    beats = [r for r in caplog.records if f"heartbeat of job {job.id} failed" in r.getMessage()]
    assert len(beats) >= 2
    assert beats[0].exc_info is not None and all(r.exc_info is None for r in beats[1:])


async def test_the_store_sweep_deletes_what_no_job_needs_and_keeps_the_rest(
    backend: Backend, tmp_path: Path
) -> None:
    """At start and every sweep_seconds: files of ended jobs that no result points at (a
    worker died between storing and recording) and uploads no live job reads once they are
    old (a worker died right after recording its job done, before deleting the upload) go;
    everything a result or a live job needs stays, and so do files of a job this database
    has no row for (they are not its to judge)."""
    db = Database.from_url(backend.url)
    worker = make_worker(db, tmp_path, run_job, lease_seconds=30, sweep_seconds=0.2, upload_grace_seconds=600)
    store = worker.store
    assert isinstance(store, LocalArtifactStore)
    try:
        queue = worker.queue
        done = (
            await queue.enqueue("paint", {"prompt": "done", "image_key": "uploads/1/done.png"}, user_id=1)
        ).job
        await worker.run(max_jobs=1)  # painted and recorded for real
        [result] = await results_of(db, done.id)
        failed = (await queue.enqueue("paint", {"prompt": "always-fail"}, user_id=2, max_attempts=1)).job
        await worker.run(max_jobs=1)
        assert (await queue.get(failed.id)).status == "failed"
        live = (
            await queue.enqueue("paint", {"prompt": "later", "image_key": "uploads/3/live.png"}, user_id=3)
        ).job

        old = time.time() - 7200
        left_behind = {
            f"jobs/{done.id}/2/video.mp4": False,  # another attempt of a done job: not the result's
            f"jobs/{failed.id}/1/video.mp4": False,  # an ended job without a result
            "jobs/999/1/video.mp4": True,  # a job this database has no row for: not its to delete
            f"jobs/{live.id}/1/video.mp4": True,  # a live job may still need its attempts' files
            "uploads/1/done.png": False,  # its job is done; old enough
            "uploads/3/live.png": True,  # a queued job will read it
            "uploads/9/old.png": False,  # nobody reads it; old enough
            "uploads/9/new.png": True,  # young: its job may not be queued yet
        }
        for key in left_behind:
            store.put_bytes(key, b"left behind")
            if key != "uploads/9/new.png":
                os.utime(store.path(key), (old, old))
        assert await worker.sweep_storage() == 4
        kept = set(result.artifact_keys().values()) | {key for key, keep in left_behind.items() if keep}
        assert set(store.keys()) == kept

        # It runs at start and then every sweep_seconds, on its own.
        store.put_bytes(f"jobs/{failed.id}/1/image.png", b"left behind later")
        await queue.cancel(live.id)
        task = asyncio.create_task(worker.run())

        async def swept() -> bool:
            return not store.exists(f"jobs/{failed.id}/1/image.png") and not store.exists(
                f"jobs/{live.id}/1/video.mp4"
            )

        await eventually(swept, "the periodic sweep")
        worker.stop()
        await asyncio.wait_for(task, 10)
        assert set(result.artifact_keys().values()) <= set(store.keys())
    finally:
        worker.stop()
        await db.dispose()


def beating(data: Path) -> None:
    """The bot and its worker both just beat: only the database decides health."""
    (data / "bot.heartbeat").write_text("1\n")
    (data / WORKER_HEARTBEAT_FILE).write_text("1\n")


async def test_health_never_creates_the_database_and_wants_this_version_s_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A volume mounted in the wrong place used to look healthy: `health` created an empty
    database there and found it answering."""
    data = tmp_path / "data"
    data.mkdir()
    beating(data)
    settings = load_settings(env={"LATENT_PAINTER_STORAGE_DATA_DIR": str(data)})
    database = data / "latent-painter.db"

    problem = await check_health(settings, max_age=60)
    assert problem == f"database file {database} does not exist (is the data volume mounted?)"
    assert not database.exists()
    monkeypatch.setenv("LATENT_PAINTER_STORAGE_DATA_DIR", str(data))
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    assert await asyncio.to_thread(main, ["health"]) == 1
    assert capsys.readouterr().out == f"unhealthy: {problem}\n"
    assert not database.exists()

    database.write_bytes(b"")  # what the old check left behind
    assert (
        await check_health(settings, max_age=60)
        == f"database {database} has no schema (not this bot's database?)"
    )
    assert database.read_bytes() == b""  # read, never written

    await db_fixtures.migrate.upgrade(settings.database_url)
    assert await check_health(settings, max_age=60) is None
    head = db_fixtures.migrate.head_revision()
    await db_fixtures.migrate.downgrade(settings.database_url, "-1")
    older = await db_fixtures.migrate.current(settings.database_url)
    assert await check_health(settings, max_age=60) == (
        f"database {database} is at schema revision {older}, this latent-painter needs {head}; "
        "run `latent-painter db upgrade`"
    )


async def test_health_wants_a_postgresql_database_at_this_version_s_schema(tmp_path: Path) -> None:
    beating(tmp_path)
    empty = await db_fixtures.fresh_url("postgresql", tmp_path, migrated=False)
    migrated = await db_fixtures.fresh_url("postgresql", tmp_path)
    try:

        def settings_for(url: str) -> object:
            env = {"LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path), "LATENT_PAINTER_DATABASE_URL": url}
            return load_settings(env=env)

        problem = await check_health(settings_for(empty), max_age=60)
        assert problem is not None and problem.startswith("database postgresql+asyncpg://")
        assert problem.endswith("has no schema (not this bot's database?)")
        assert await check_health(settings_for(migrated), max_age=60) is None
    finally:
        await db_fixtures.dispose_url("postgresql", empty)
        await db_fixtures.dispose_url("postgresql", migrated)


async def test_storage_and_work_directory_errors_say_which_disk(tmp_path: Path) -> None:
    """ "OSError: [Errno 28] No space left on device" did not say whether the artifact store
    or the work directory (often two volumes) was full."""
    url = await db_fixtures.fresh_url("sqlite", tmp_path)
    db = Database.from_url(url)

    def runner(ctx: JobContext) -> JobOutput:
        prompt = ctx.params["prompt"]
        if prompt == "full disk":
            # A real ENOSPC while writing a file of the work directory, with no file named
            # in the error (as PIL's PNG writer reports it).
            os.symlink("/dev/full", ctx.workdir / "heatmap.png")
            with open(ctx.workdir / "heatmap.png", "wb") as out:
                out.write(b"\x89PNG" * 1024)
        if prompt == "blocked":
            (ctx.workdir / "frames").write_text("a file where the frames directory goes\n")
            (ctx.workdir / "frames" / "0001.png").write_bytes(b"")
        return run_job(ctx)

    worker = make_worker(db, tmp_path, runner, lease_seconds=30, worker_id="host-1-abcdef")
    store = worker.store
    assert isinstance(store, LocalArtifactStore)
    try:
        queue = worker.queue
        jobs = {}
        for user, prompt in enumerate(("full disk", "blocked", "store", "no work directory")):
            jobs[prompt] = (
                await queue.enqueue("paint", {"prompt": prompt}, user_id=user, max_attempts=1)
            ).job
        # The store cannot make the job's directory (a file is in the way, as a read-only or
        # full volume refuses it); the job's work directory cannot be made either.
        (store.root / "jobs").mkdir()
        (store.root / "jobs" / str(jobs["store"].id)).write_text("in the way\n")
        workdir_of = tmp_path / "work" / "host-1-abcdef" / f"job-{jobs['no work directory'].id}-attempt-1"
        workdir_of.parent.mkdir(parents=True)
        workdir_of.write_text("in the way\n")

        assert await asyncio.wait_for(worker.run(exit_when_idle=True), 30) == 4
        errors = {prompt: (await queue.get(job.id)).error for prompt, job in jobs.items()}
        workdir = tmp_path / "work" / "host-1-abcdef"
        assert errors["full disk"] == (
            f"WorkDirectoryError: work directory {workdir}/job-{jobs['full disk'].id}-attempt-1: "
            "OSError: [Errno 28] No space left on device"
        )
        blocked = workdir / f"job-{jobs['blocked'].id}-attempt-1"
        assert errors["blocked"] == (
            f"WorkDirectoryError: work directory {blocked}: "
            f"NotADirectoryError: [Errno 20] Not a directory: '{blocked}/frames/0001.png'"
        )
        assert errors["store"].startswith(
            f"StorageError: artifact store {store.root}, key jobs/{jobs['store'].id}/1/"
        )
        assert errors["no work directory"].startswith(
            f"WorkDirectoryError: work directory {workdir_of}: FileExistsError: "
        )
        assert [(await queue.get(job.id)).status for job in jobs.values()] == ["failed"] * 4
    finally:
        await db.dispose()

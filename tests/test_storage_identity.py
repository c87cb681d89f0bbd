"""A data directory belongs to one database: switching databases never costs its files or deliveries.

Job ids restart in every database. The audit started a worker with the old data directory
on a new PostgreSQL database (the README's "More GPUs" step) and on a SQLite URL with a
one-character typo (created empty): the store sweep deleted every result's files in a
fraction of a second, and a bot on the new database skipped its jobs 1..N as "already
delivered". A full disk cost three full generations per job.

Real SQLite and PostgreSQL databases (each made here with its own identity: copies of the
test template would share one), real worker runs with the cheap test runner.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bot.artifacts import LocalArtifactStore
from bot.config import ConfigError, load_settings
from bot.delivery import DeliveryLedger
from bot.discord_bot import create_bot
from bot.storage_identity import MARKER_NAME, ForeignDataDirectory, claim_store, read_marker
from bot.worker import Worker, run_worker
from db import migrate
from db.engine import Database
from db.models import DatabaseIdentity
from db.queue import JobQueue, QueuePolicy
from db.storage import database_id
from tests import db_fixtures
from tests.job_runners import run_job

RUNNER = "tests.job_runners:run_job"
ID = re.compile(r"[0-9a-f]{32}")


class Databases:
    """New databases of one backend, each migrated on its own (so each has its own id)."""

    def __init__(self, backend: str, root: Path) -> None:
        self.backend = backend
        self.root = root
        self.made: list[str] = []

    async def new(self, *, migrated: bool = True) -> str:
        if self.backend == "sqlite":
            url = db_fixtures.sqlite_url(self.root / f"db{len(self.made)}")
        else:
            url = await db_fixtures.create_postgres_database()
        self.made.append(url)
        if migrated:
            await migrate.upgrade(url)
        return url

    async def close(self) -> None:
        for url in self.made:
            await db_fixtures.dispose_url(self.backend, url)


@pytest.fixture(params=db_fixtures.BACKENDS)
async def databases(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Databases]:
    made = Databases(request.param, tmp_path)
    try:
        yield made
    finally:
        await made.close()


def settings_for(data: Path, url: str = "", **env: str):
    """Settings for ``data`` and database ``url`` (empty: SQLite in the data directory)."""
    return load_settings(
        env={
            "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
            "LATENT_PAINTER_DATABASE_URL": url,
            "LATENT_PAINTER_QUEUE_POLL_SECONDS": "0.05",
            "LATENT_PAINTER_QUEUE_HEARTBEAT_SECONDS": "0.2",
            **env,
        }
    )


async def paint_results(settings, count: int) -> list[str]:
    """Queue ``count`` jobs and let a real `latent-painter worker` run paint them; their keys."""
    await migrate.upgrade(settings.database_url)
    async with Database.from_url(settings.database_url) as db:
        queue = JobQueue(db)
        for n in range(count):
            await queue.enqueue("paint", {"prompt": f"lighthouse {n}"}, user_id=1 + n, channel_id=10)
    handled = await run_worker(settings, runner=RUNNER, exit_when_idle=True, handle_signals=False)
    assert handled == count
    return sorted(LocalArtifactStore(settings.data_dir / "artifacts").keys())


def foreign_line(data: Path, theirs: str, ours: str) -> str:
    return (
        f"the data directory {data} (artifact store {data / 'artifacts'}) belongs to another database "
        f"(id {theirs[:12]}…; [database] url's is {ours[:12]}…): point [storage] data_dir at a new "
        "directory for this database, or [database] url back at its own"
    )


def latent_painter(tmp_path: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`latent-painter ARGS` in its own process, with a config naming ``data`` (SQLite there)."""
    config = db_fixtures.write_config(tmp_path / "config.toml", "", data)
    env = {**os.environ, "PYTHONPATH": str(db_fixtures.ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("LATENT_PAINTER_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def id_of(url: str) -> str:
    async with Database.from_url(url) as db:
        return await database_id(db)


# -- the identity -----------------------------------------------------------------------


async def test_each_database_has_its_own_id_made_by_its_migration_down_and_up(databases: Databases) -> None:
    first, second = await databases.new(), await databases.new()
    one, other = await id_of(first), await id_of(second)
    assert ID.fullmatch(one) and ID.fullmatch(other) and one != other
    async with Database.from_url(first) as db, db.read() as session:
        assert await session.scalar(select(func.count()).select_from(DatabaseIdentity)) == 1

    await migrate.downgrade(first, "0003")
    assert "database_identity" not in await migrate.table_names(first)
    await migrate.upgrade(first)
    assert await migrate.diff(first) == []  # the model matches the migration (`db check`)
    again = await id_of(first)
    assert ID.fullmatch(again) and again != one  # a new database as far as data directories go


# -- the bot and the workers refuse a data directory of another database -------------------


async def test_a_new_database_with_the_old_data_directory_is_refused_and_nothing_is_deleted(
    databases: Databases, tmp_path: Path
) -> None:
    """The README's switch to PostgreSQL with the old data directory, and a mistyped SQLite
    URL (created empty and upgraded in place): the worker and the bot refuse to start, naming
    both ids; every result's files are still there."""
    data = tmp_path / "data"
    old = settings_for(data)
    keys = await paint_results(old, 3)
    assert len(keys) == 12
    old_id = await id_of(old.database_url)
    assert read_marker(data / "artifacts") == old_id  # adopted by its first start

    if databases.backend == "sqlite":
        new_url = f"sqlite+aiosqlite:///{data / 'latent_painter.db'}"  # '_' for '-': a new, empty file
        await migrate.ensure_schema_current(new_url, upgrade_if_old=True)  # as the worker does
    else:
        new_url = await databases.new()
    new = settings_for(data, new_url)
    line = foreign_line(data, old_id, await id_of(new_url))
    with pytest.raises(ForeignDataDirectory) as refused:
        await run_worker(new, runner=RUNNER, exit_when_idle=True, handle_signals=False)
    assert str(refused.value) == line
    with pytest.raises(ForeignDataDirectory) as refused_bot:
        await create_bot(new)
    assert str(refused_bot.value) == line
    assert sorted(LocalArtifactStore(data / "artifacts").keys()) == keys

    # Back on its own database, the same directory works as before.
    assert await run_worker(old, runner=RUNNER, exit_when_idle=True, handle_signals=False) == 0
    assert sorted(LocalArtifactStore(data / "artifacts").keys()) == keys


def test_latent_painter_worker_exits_2_with_one_line_on_another_database_s_data_directory(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = data / "artifacts"
    store.mkdir()
    (store / MARKER_NAME).write_text("ab" * 16 + "\n")
    done = latent_painter(tmp_path, data, "worker", "--runner", RUNNER)
    assert done.returncode == 2, done.stderr
    ours = asyncio.run(id_of(f"sqlite+aiosqlite:///{data / 'latent-painter.db'}"))
    assert (
        done.stderr.strip().splitlines()[-1]
        == f"latent-painter worker: error: {foreign_line(data, 'ab' * 16, ours)}"
    )


async def test_an_unmarked_data_directory_is_adopted_unless_it_holds_jobs_the_database_lacks(
    databases: Databases, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data directory from before databases had ids: an existing deployment upgrades
    without a step (its files are its database's jobs). One that another database filled
    before the upgrade is refused, not adopted: the worker would otherwise take its files
    for the new database's."""
    data = tmp_path / "data"
    url = await databases.new()
    settings = settings_for(data, url)
    keys = await paint_results(settings, 2)
    (data / "artifacts" / MARKER_NAME).unlink()  # as it was before this version

    caplog.set_level(logging.INFO, logger="latent_painter.storage")
    assert await run_worker(settings, runner=RUNNER, exit_when_idle=True, handle_signals=False) == 0
    assert read_marker(data / "artifacts") == await id_of(url)
    assert any("now belongs to database" in r.getMessage() for r in caplog.records)
    assert sorted(LocalArtifactStore(data / "artifacts").keys()) == keys

    (data / "artifacts" / MARKER_NAME).unlink()
    other = settings_for(data, await databases.new())  # empty: none of those jobs are its own
    with pytest.raises(ForeignDataDirectory, match=r"holds files of 2 job\(s\) that \[database\] url's"):
        await run_worker(other, runner=RUNNER, exit_when_idle=True, handle_signals=False)
    assert not (data / "artifacts" / MARKER_NAME).exists()
    assert sorted(LocalArtifactStore(data / "artifacts").keys()) == keys


def test_workers_starting_at_once_on_a_new_store_agree_on_one_database(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    ids = ["a" * 32, "b" * 32]
    outcomes: list[tuple[str, bool]] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim(ours: str) -> None:
        start.wait()
        try:
            claim_store(root, ours)
            accepted = True
        except ForeignDataDirectory:
            accepted = False
        with lock:
            outcomes.append((ours, accepted))

    threads = [threading.Thread(target=claim, args=(ids[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = read_marker(root)
    assert winner in ids
    assert sorted(outcomes) == sorted((ours, ours == winner) for ours, _ in outcomes)
    assert [p.name for p in root.iterdir()] == [MARKER_NAME]  # no temporary file left


def test_a_marker_that_holds_no_id_is_refused_naming_it(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    root.mkdir()
    (root / MARKER_NAME).write_text("somebody's notes\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"marker {root / MARKER_NAME} does not hold a database id")
    ):
        claim_store(root, "c" * 32)


# -- the sweep ----------------------------------------------------------------------------


async def test_the_sweep_deletes_only_files_of_this_database_s_ended_jobs(
    databases: Databases, tmp_path: Path
) -> None:
    url = await databases.new()
    db = Database.from_url(url)
    queue = JobQueue(db, QueuePolicy(lease_seconds=30, max_attempts=1, backoff_seconds=0, per_user_cap=50))
    worker = Worker(
        queue, LocalArtifactStore(tmp_path / "artifacts"), run_job, workdir_root=tmp_path / "work"
    )
    store = worker.store
    assert isinstance(store, LocalArtifactStore)
    try:
        done = (await queue.enqueue("paint", {"prompt": "done"}, user_id=1)).job
        failed = (await queue.enqueue("paint", {"prompt": "always-fail"}, user_id=2)).job
        await worker.run(max_jobs=2)
        assert [(await queue.get(j.id)).status for j in (done, failed)] == ["done", "failed"]
        cancelled = (await queue.enqueue("paint", {"prompt": "cancelled"}, user_id=3)).job
        await queue.cancel(cancelled.id)
        queued = (await queue.enqueue("paint", {"prompt": "later"}, user_id=4)).job
        results = set(store.keys())
        left = {
            f"jobs/{done.id}/7/video.mp4": False,  # another attempt of a done job: no result's
            f"jobs/{failed.id}/1/video.mp4": False,  # an ended job without a result
            f"jobs/{cancelled.id}/1/image.png": False,
            f"jobs/{queued.id}/1/video.mp4": True,  # live: its attempts may still need it
            "jobs/77/1/video.mp4": True,  # no such job here: another database's work
            "jobs/9000/3/trail.safetensors": True,
        }
        for key in left:
            store.put_bytes(key, b"left behind")
        assert await worker.sweep_storage() == 3
        assert set(store.keys()) == results | {key for key, keep in left.items() if keep}
    finally:
        await db.dispose()


# -- the delivery ledger ------------------------------------------------------------------


def test_the_delivery_ledger_is_kept_per_database(tmp_path: Path) -> None:
    directory = tmp_path / "bot"
    first = DeliveryLedger.for_database(directory, "a" * 32)
    first.record(3)
    assert 3 in DeliveryLedger.for_database(directory, "a" * 32)
    other = DeliveryLedger.for_database(directory, "b" * 32)
    assert 3 not in other
    assert sorted(p.name for p in directory.iterdir()) == [
        f"delivered-{'a' * 32}.txt",
        f"delivered-{'b' * 32}.txt",
    ]


def test_an_old_ledger_gives_its_last_delivery_time_once_and_none_of_its_ids(tmp_path: Path) -> None:
    """delivered.txt from before databases had ids may list another database's jobs (the
    data directory was moved before the upgrade): its ids would skip this database's jobs
    forever. Its last delivery time is kept, so jobs that ended during the upgrade are
    delivered; a later database's ledger starts at its own start."""
    directory = tmp_path / "bot"
    directory.mkdir()
    legacy = directory / "delivered.txt"
    legacy.write_text("# since 2026-01-01T00:00:00+00:00\n1\n2\n")
    last_delivery = time.time() - 3600
    os.utime(legacy, (last_delivery, last_delivery))

    ledger = DeliveryLedger.for_database(directory, "a" * 32)
    assert 1 not in ledger and 2 not in ledger
    assert abs(ledger.since.timestamp() - last_delivery) < 1
    assert not legacy.exists() and (directory / "delivered.txt.replaced").is_file()
    assert DeliveryLedger.for_database(directory, "a" * 32).since == ledger.since
    assert time.time() - DeliveryLedger.for_database(directory, "b" * 32).since.timestamp() < 60


async def test_a_bot_on_a_new_database_follows_its_job_1_whatever_the_old_ledger_says(
    databases: Databases, tmp_path: Path
) -> None:
    """The audit's ledger run: a bot moved to a new database with the old data directory
    (here an unmarked one, so it is adopted) used to skip job 1 as delivered, leaving the
    member's reply at 6 % forever."""
    data = tmp_path / "data"
    (data / "bot").mkdir(parents=True)
    (data / "bot" / "delivered.txt").write_text("# since 2026-01-01T00:00:00+00:00\n1\n")
    url = await databases.new()
    async with Database.from_url(url) as db:
        job = (
            await JobQueue(db).enqueue("paint", {"prompt": "second lighthouse"}, user_id=1, channel_id=10)
        ).job
        await JobQueue(db).cancel(job.id)
    assert job.id == 1
    bot = await create_bot(settings_for(data, url))
    try:
        assert 1 not in bot.watcher.ledger
        await bot.watcher.recover()
        assert 1 in bot.watcher.tracked
    finally:
        await bot.close()


# -- a full disk --------------------------------------------------------------------------


async def test_a_worker_takes_no_job_while_free_space_is_below_min_free_mb(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each attempt on a full disk painted, rendered and then failed storing: three
    generations per job. Below [storage] min_free_mb the worker leaves jobs queued (one
    WARNING), and takes them once there is room (one INFO)."""
    data = tmp_path / "data"
    url = db_fixtures.sqlite_url(data)
    await migrate.upgrade(url)
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    short = settings_for(data, url, LATENT_PAINTER_STORAGE_MIN_FREE_MB=str(free_mb * 4 + 1024))
    db = Database.from_url(url)
    queue = JobQueue(db)
    worker = Worker(
        queue,
        LocalArtifactStore(data / "artifacts"),
        run_job,
        workdir_root=data / "work",
        poll_seconds=0.05,
        settings=short,
    )
    caplog.set_level(logging.INFO, logger="latent_painter.worker")
    try:
        job = (await queue.enqueue("paint", {"prompt": "waits for room"}, user_id=1)).job
        assert await worker.run(exit_when_idle=True) == 0  # nothing it can take: it leaves
        task = asyncio.create_task(worker.run())
        await asyncio.sleep(0.6)  # a dozen polls
        waiting = await queue.get(job.id)
        assert (waiting.status, waiting.attempts) == ("queued", 0)

        worker.settings = settings_for(data, url, LATENT_PAINTER_STORAGE_MIN_FREE_MB="1")  # room again

        async def painted() -> bool:
            return (await queue.get(job.id)).status == "done"

        deadline = time.monotonic() + 20
        while not await painted():
            assert time.monotonic() < deadline, "the job was not taken once there was room"
            await asyncio.sleep(0.05)
        worker.stop()
        await asyncio.wait_for(task, 10)
    finally:
        worker.stop()
        await db.dispose()
    messages = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if "min_free_mb" in r.getMessage() or "again; taking jobs" in r.getMessage()
    ]
    warnings = [m for level, m in messages if level == logging.WARNING]
    infos = [m for level, m in messages if level == logging.INFO]
    assert len(warnings) == 1, messages  # once, however long it lasts
    assert "MB free under [storage] data_dir" in warnings[0]
    assert warnings[0].endswith(
        f"below [storage] min_free_mb ({free_mb * 4 + 1024}); not taking jobs until there is room"
    )
    assert len(infos) == 1 and "again; taking jobs" in infos[0]


def test_min_free_mb_is_checked_like_every_other_setting() -> None:
    assert load_settings(env={}).storage.min_free_mb == 1024
    assert load_settings(env={"LATENT_PAINTER_STORAGE_MIN_FREE_MB": "0"}).storage.min_free_mb == 0
    with pytest.raises(ConfigError, match=r"\[storage\] min_free_mb must be in 0\.\.inf; got -1"):
        load_settings(env={"LATENT_PAINTER_STORAGE_MIN_FREE_MB": "-1"})
    with pytest.raises(ConfigError, match=r"\[storage\] min_free_mb must be int"):
        load_settings(env={"LATENT_PAINTER_STORAGE_MIN_FREE_MB": "lots"})


@pytest.mark.parametrize(
    "command",
    [
        ["results", "prune", "--older-than", "1"],
        ["results", "delete", "AAAAAAAA"],
        ["transition", "AAAAAAAA", "BBBBBBBB"],
    ],
)
def test_commands_that_touch_the_store_refuse_another_database_s_data_directory(
    tmp_path: Path, command: list[str]
) -> None:
    """`results prune` deletes files by key: on another database's store it would delete that
    database's results' files (job ids restart at 1 in every database)."""
    data = tmp_path / "data"
    data.mkdir()
    store = data / "artifacts"
    (store / "jobs" / "1" / "1").mkdir(parents=True)
    (store / "jobs" / "1" / "1" / "video.mp4").write_bytes(b"someone else's painting")
    (store / MARKER_NAME).write_text("ab" * 16 + "\n")
    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{data / 'latent-painter.db'}"))
    done = latent_painter(tmp_path, data, *command)
    assert done.returncode == 2, done.stderr
    ours = asyncio.run(id_of(f"sqlite+aiosqlite:///{data / 'latent-painter.db'}"))
    assert foreign_line(data, "ab" * 16, ours) in done.stderr.strip().splitlines()[-1]
    assert (store / "jobs" / "1" / "1" / "video.mp4").read_bytes() == b"someone else's painting"

"""The job watcher at scale: every job after a restart, positions read in one snapshot, and a
cost per tick that does not grow with the queue.

Costs are counted in SQL statements (SQLAlchemy's ``before_cursor_execute``), not timed, so
the tests say the same on a loaded machine.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import create_engine, event, insert, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import load_settings
from bot.discord_bot import LatentPainterBot, create_bot
from db.engine import Database
from db.models import Job, utcnow
from db.queue import JobQueue, QueuePolicy, QueueSnapshot
from db.results import NewResult
from tests import db_fixtures
from tests.discord_standin.world import ALICE_ID, BOB_ID, GENERAL_ID, GUILD_ID, MOD_ID, OWNER_ID
from tests.test_bot_e2e import World, new_data_dir, running_world

on_world = pytest.mark.asyncio(loop_scope="module")
db_url, database, queue = db_fixtures.db_url, db_fixtures.database, db_fixtures.queue

PAINT = {"prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 1}


@contextmanager
def counting_statements(
    engine: AsyncEngine, only: Callable[[str], bool] = lambda s: True
) -> Iterator[list[str]]:
    """The SQL statements ``engine`` runs inside the block (transaction control left out)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not re.match(r"\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE)\b", statement, re.I) and only(
            statement
        ):
            seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def job_rows(count: int, *, first_user: int = 10_000, **values: Any) -> list[dict[str, Any]]:
    """``count`` queued Discord jobs of as many members, as rows for one bulk insert."""
    now = utcnow()
    base = dict(
        kind="paint",
        status="queued",
        guild_id=GUILD_ID,
        channel_id=GENERAL_ID,
        interaction_token=None,
        token_expires_at=None,
        params=PAINT,
        priority=0,
        run_at=now,
        attempts=0,
        max_attempts=3,
        cancel_requested=False,
        created_at=now,
    )
    return [base | {"user_id": first_user + i} | values for i in range(count)]


async def insert_jobs(db: Database, rows: list[dict[str, Any]]) -> list[int]:
    """Insert the rows; returns their ids, oldest first."""
    async with db.write() as session:
        result = await session.execute(insert(Job).returning(Job.id), rows)
        return sorted(result.scalars().all())


# -- position(): one snapshot, never an exception ---------------------------------------


def sync_engine_for(url: str) -> Any:
    """A plain (synchronous) engine on the same database, standing in for another process."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    parsed = parsed.set(drivername="sqlite" if backend == "sqlite" else "postgresql+psycopg")
    return create_engine(parsed)


async def test_a_claim_between_the_reads_of_position_is_no_error(queue: JobQueue, db_url: str) -> None:
    """A worker claims the job while position() reads: it is told from one moment, never an
    IndexError (PostgreSQL's READ COMMITTED showed the job queued, then the queue without it)."""
    job = (await queue.enqueue("paint", PAINT, user_id=1)).job
    other = sync_engine_for(db_url)
    selects = 0

    def claim_between(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        nonlocal selects
        if not statement.lstrip().upper().startswith("SELECT"):
            return
        selects += 1
        if selects == 2:  # after position() has read something, before it read everything
            with other.begin() as connection:
                connection.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(status="running", worker_id="elsewhere", attempts=1, started_at=utcnow())
                )

    event.listen(queue.db.engine.sync_engine, "before_cursor_execute", claim_between)
    try:
        position = await queue.position(job.id)
    finally:
        event.remove(queue.db.engine.sync_engine, "before_cursor_execute", claim_between)
        other.dispose()
    assert selects >= 2, "the claim happened in the middle of position()"
    # As it was when position() started reading: first in line, and nobody running yet.
    assert (position.status, position.ahead, position.running) == ("queued", 0, 0)
    assert (await queue.position(job.id)).status == "running"


async def test_positions_asked_while_a_worker_empties_the_queue_never_fail(queue: JobQueue) -> None:
    queue.policy = QueuePolicy(per_user_cap=1000)
    ids = [(await queue.enqueue("paint", PAINT, user_id=i % 4)).job.id for i in range(40)]
    errors: list[BaseException] = []
    told: list[tuple[str, int]] = []
    done = False

    async def worker() -> None:
        nonlocal done
        while (lease := await queue.claim("w")) is not None:
            await queue.finish(lease, NewResult(fields={}, artifact_keys={}))
        done = True

    async def watcher() -> None:
        while not done:
            for job_id in ids:
                try:
                    position = await queue.position(job_id)
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    errors.append(exc)
                else:
                    told.append((position.status, position.ahead))

    await asyncio.gather(worker(), watcher(), watcher())
    assert errors == []
    assert told and all(ahead == 0 for status, ahead in told if status != "queued")


async def test_one_snapshot_places_every_job_as_position_does(queue: JobQueue) -> None:
    """The numbers a progress round tells (one snapshot) are position()'s, job by job."""
    queue.policy = QueuePolicy(per_user_cap=10)
    first = (await queue.enqueue("paint", PAINT, user_id=5)).job.id
    await queue.finish(await queue.claim("w"), NewResult(fields={}, artifact_keys={}))
    running = (await queue.enqueue("paint", PAINT, user_id=7)).job.id
    assert (await queue.claim("w")).job_id == running
    ids = [first, running]
    for user, priority in ((9, 0), (2, 0), (9, -1), (5, 0), (2, 3), (9, 0), (5, 0)):
        ids.append((await queue.enqueue("paint", PAINT, user_id=user, priority=priority)).job.id)
    snapshot = await queue.snapshot(ids)
    assert isinstance(snapshot, QueueSnapshot) and set(snapshot.jobs) == set(ids)
    for job_id in ids:
        assert snapshot.position(job_id).ahead == (await queue.position(job_id)).ahead
    assert sorted(snapshot.claim_order.values()) == list(range(7))


def test_a_queued_job_missing_from_the_queued_rows_is_no_longer_waiting() -> None:
    """Rows read apart (not one snapshot) may show the job queued and the queue without it:
    that is a job just claimed, told as nobody ahead of it, never an exception."""
    now = utcnow()
    job = Job(id=7, kind="paint", status="queued", user_id=1, params=PAINT, attempts=0, max_attempts=3)
    snapshot = QueueSnapshot(taken_at=now, jobs={7: job}, claim_order={}, running=(), typical_seconds=20.0)
    position = snapshot.position(7)
    assert (position.status, position.ahead, position.eta_seconds) == ("running", 0, 20.0)
    with pytest.raises(LookupError):
        snapshot.position(8)


# -- the watcher: recover and tick -------------------------------------------------------


@pytest_asyncio.fixture
async def idle_bot(tmp_path: Path) -> AsyncIterator[LatentPainterBot]:
    """A real bot, never connected: its watcher is driven by hand, and nothing reaches Discord."""
    settings = load_settings(
        env={"LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path), "LATENT_PAINTER_DISCORD_RUN_WORKER": "false"}
    )
    bot = await create_bot(settings)
    try:
        yield bot
    finally:
        await bot.db.dispose()


async def test_recover_follows_every_live_job_oldest_first_with_no_cap(idle_bot: LatentPainterBot) -> None:
    """A restart with 1,100 jobs waiting: the oldest (the next to run) are followed too."""
    db, watcher = idle_bot.db, idle_bot.watcher
    queued = await insert_jobs(db, job_rows(1100))
    now = utcnow()
    running = await insert_jobs(
        db, job_rows(1, status="running", worker_id="w", attempts=1, started_at=now, heartbeat_at=now)
    )
    ended = dict(attempts=1, started_at=now, finished_at=now)
    owed = await insert_jobs(
        db, job_rows(2, status="done", **ended) + job_rows(1, status="cancelled", **ended)
    )
    delivered = await insert_jobs(db, job_rows(1, status="done", **ended))
    watcher.ledger.record(delivered[0])
    long_ago = dict(attempts=1, started_at=now - timedelta(days=2), finished_at=now - timedelta(days=2))
    await insert_jobs(db, job_rows(1, status="failed", **long_ago))  # ended before this bot's time
    await insert_jobs(db, job_rows(1, channel_id=None))  # not made from Discord

    await watcher.recover()
    assert list(watcher.tracked) == sorted(queued + running) + owed


async def test_a_tick_reads_the_tracked_jobs_together(idle_bot: LatentPainterBot) -> None:
    """1,100 waiting jobs whose replies can no longer be edited cost a few reads a tick, not 1,100."""
    watcher = idle_bot.watcher
    ids = await insert_jobs(idle_bot.db, job_rows(1100))
    for job_id in ids:
        watcher.track(job_id)
    async with idle_bot.db.write() as session:
        await session.execute(Job.__table__.delete().where(Job.id == ids[1]))
    with counting_statements(idle_bot.db.engine) as statements:
        await watcher.tick()
    assert len(statements) <= 3, statements[:5]
    assert ids[1] not in watcher.tracked  # gone from the database: nothing to follow
    assert len(watcher.tracked) == 1099


# -- progress rounds on a live bot ----------------------------------------------------------

MEMBERS = (OWNER_ID, ALICE_ID, BOB_ID, MOD_ID)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("watcher-scale"), data_dir)
    async with running_world(
        data,
        LATENT_PAINTER_DISCORD_RUN_WORKER="false",
        LATENT_PAINTER_DISCORD_PROGRESS_SECONDS="1",
        LATENT_PAINTER_QUEUE_PER_USER_CAP="3",
    ) as world:
        yield world


async def reply_says(handle: Any, words: str, timeout: float = 15.0) -> None:
    """Wait until the reply's status line (below its heading) reads ``words``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        original = handle.original
        lines = (original.content or "").split("\n") if original is not None else []
        if len(lines) > 1 and lines[1] == words:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the reply says {lines!r}, not {words!r}")
        await asyncio.sleep(0.05)


@on_world
async def test_a_progress_round_reads_the_queue_once_for_every_reply(world: World) -> None:
    """12 members' replies waiting: a round is a handful of statements, and each reply says
    what position() says; between rounds an unchanged queue costs one read."""
    bot, standin = world.bot, world.standin
    handles = {}
    for k in range(3):
        for member in MEMBERS:
            handle = await standin.send_slash("paint", {"prompt": f"painting {k}"}, user=member)
            assert (await handle.response(timeout=10)).callback_type == 5
            handles[(member, k)] = handle
    jobs = sorted(await bot.queue.list_jobs(status="queued", limit=100), key=lambda j: j.id)
    assert len(jobs) == 12
    by_prompt = {(job.user_id, job.params["prompt"]): job.id for job in jobs}
    job_of = {key: by_prompt[(key[0], f"painting {key[1]}")] for key in handles}

    async def replies_match_positions() -> None:
        for key, handle in handles.items():
            position = await bot.queue.position(job_of[key])
            ahead = position.ahead
            words = f"Queued: {ahead} job{'s' * (ahead != 1)} ahead of yours."
            if position.status == "running":
                words = "Starting…"
            elif ahead == 0:
                words = "Queued: yours is next."
            await reply_says(handle, words)

    await replies_match_positions()
    await bot.watcher.stop()  # from here on, ticks are run by hand and counted

    jobs_table = lambda s: " jobs" in s  # noqa: E731 - the queue's reads only
    await asyncio.sleep(bot.watcher.progress.every)
    with counting_statements(bot.db.engine, jobs_table) as round_statements:
        await bot.watcher.tick()
    with counting_statements(bot.db.engine, jobs_table) as quiet_statements:
        await bot.watcher.tick()  # the round is not due again yet, and no job changed
    assert 1 < len(round_statements) <= 7, round_statements
    assert len(quiet_statements) == 1, quiet_statements

    # A worker takes the first job: the next round moves everyone up, and the counts hold.
    lease = await bot.queue.claim("elsewhere")
    assert lease is not None
    try:
        await asyncio.sleep(bot.watcher.progress.every)
        with counting_statements(bot.db.engine, jobs_table) as round_statements:
            await bot.watcher.tick()
        assert len(round_statements) <= 7, round_statements
        await replies_match_positions()
    finally:
        await bot.queue.release(lease)

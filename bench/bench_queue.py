"""How fast can workers claim jobs? Claims per second with 1 and 4 worker processes.

Each figure is printed beside a plain loop on the same database — one transaction with an
INSERT and a SELECT, through the same engine — as a ratio, so the numbers mean something
on any machine: the claim is one statement in one transaction, so it should cost about
one plain round trip. The goal: the queue never limits a GPU (at least 200 claims/s on
SQLite on a 2-core machine; a painting takes seconds).

    python bench/bench_queue.py                 # SQLite, and PostgreSQL if it can be had
    python bench/bench_queue.py --jobs 4000 --no-postgres

PostgreSQL comes from LATENT_PAINTER_TEST_POSTGRES_URL, or a throwaway server started
with .ci/postgres.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from db import migrate  # noqa: E402
from db.engine import Database  # noqa: E402
from db.models import Job, utcnow  # noqa: E402
from db.queue import JobQueue, QueuePolicy  # noqa: E402
from db.results import NewResult  # noqa: E402

RESULT = NewResult(
    fields={"prompt": "bench", "seed": 1, "model_id": "bench", "vae_id": "bench"},
    artifact_keys={"video": "jobs/1/1/video.mp4"},
    sizes={"video": 1},
)


async def plain_loop(url: str, seconds: float) -> float:
    """Transactions per second of INSERT + SELECT, the floor any queue statement stands on."""
    async with Database.from_url(url) as db:
        async with db.write() as session:
            await session.execute(
                text("CREATE TABLE IF NOT EXISTS bench_plain (id INTEGER PRIMARY KEY, v TEXT)")
            )
        done = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            async with db.write() as session:
                await session.execute(
                    text("INSERT INTO bench_plain (id, v) VALUES (:i, 'x')"), {"i": done + 1}
                )
                await session.execute(text("SELECT v FROM bench_plain WHERE id = :i"), {"i": done + 1})
            done += 1
        return done / (time.perf_counter() - start)


async def fill(url: str, jobs: int, users: int) -> None:
    """Queue ``jobs`` jobs from ``users`` users in one transaction (enqueue speed is not measured)."""
    now = utcnow()
    async with Database.from_url(url) as db, db.write() as session:
        session.add_all(
            Job(
                kind="paint",
                status="queued",
                user_id=n % users,
                params={"prompt": f"job {n}"},
                priority=0,
                run_at=now,
                attempts=0,
                max_attempts=3,
                created_at=now,
            )
            for n in range(jobs)
        )


async def _claim_all(url: str, worker_id: str, finish: bool, start_at: float) -> tuple[int, float]:
    async with Database.from_url(url) as db:
        queue = JobQueue(db, QueuePolicy(lease_seconds=600))
        async with db.read() as session:
            await session.execute(text("SELECT 1"))  # connect before the clock starts
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        claimed = 0
        while (lease := await queue.claim(worker_id)) is not None:
            claimed += 1
            if finish:
                await queue.finish(lease, RESULT)
        return claimed, time.time()


def _worker(url: str, worker_id: str, finish: bool, start_at: float, out: mp.Queue) -> None:
    out.put(asyncio.run(_claim_all(url, worker_id, finish, start_at)))


def claims_per_second(url: str, processes: int, finish: bool) -> tuple[float, int]:
    """Run ``processes`` claiming processes until the queue is empty; (claims/s, claims)."""
    context = mp.get_context("spawn")
    out: mp.Queue = context.Queue()
    start_at = time.time() + 3.0  # every process connected and waiting before the start
    workers = [
        context.Process(target=_worker, args=(url, f"bench-{i}", finish, start_at, out))
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    total = sum(n for n, _ in results)
    end = max(t for _, t in results)
    return total / (end - start_at), total


async def fresh_database(backend: str, server_url: str | None, scratch: Path) -> str:
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{scratch / f'bench-{uuid.uuid4().hex[:8]}.db'}"
    else:
        import asyncpg

        assert server_url is not None
        name = f"lp_bench_{uuid.uuid4().hex[:8]}"
        dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
        connection = await asyncpg.connect(dsn)
        await connection.execute(f'CREATE DATABASE "{name}"')
        await connection.close()
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    await migrate.upgrade(url)
    return url


def postgres_url() -> tuple[str | None, str | None]:
    """A PostgreSQL server URL (and a data dir to stop afterwards, if we started it)."""
    url = os.environ.get("LATENT_PAINTER_TEST_POSTGRES_URL")
    if url:
        return url, None
    done = subprocess.run(["bash", str(ROOT / ".ci" / "postgres.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        print(f"PostgreSQL not available: {done.stderr.strip()[-300:]}", file=sys.stderr)
        return None, None
    values = dict(line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines())
    return values["LATENT_PAINTER_TEST_POSTGRES_URL"], values["LATENT_PAINTER_TEST_POSTGRES_DATA"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs queued at the start of each measurement")
    parser.add_argument("--users", type=int, default=50, help="distinct users the jobs come from")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the plain loop")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    backends = ["sqlite"]
    server, started = (None, None) if args.no_postgres else postgres_url()
    if server:
        backends.append("postgresql")
    print(f"{args.jobs} jobs from {args.users} users per run; {os.cpu_count()} CPUs")
    print(f"{'database':<11} {'what':<14} {'procs':>5} {'per second':>11} {'plain ops/s':>12} {'ratio':>6}")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for backend in backends:
                url = asyncio.run(fresh_database(backend, server, Path(scratch)))
                plain = asyncio.run(plain_loop(url, args.seconds))
                for what, processes, finish in (
                    ("claim", 1, False),
                    ("claim", 4, False),
                    ("claim+finish", 1, True),
                    ("claim+finish", 4, True),
                ):
                    url = asyncio.run(fresh_database(backend, server, Path(scratch)))
                    asyncio.run(fill(url, args.jobs, args.users))
                    rate, total = claims_per_second(url, processes, finish)
                    assert total == args.jobs, f"{total} claims for {args.jobs} jobs"
                    row = f"{backend:<11} {what:<14} {processes:>5} {rate:>11.0f}"
                    print(f"{row} {plain:>12.0f} {rate / plain:>6.2f}")
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / ".ci" / "postgres.sh"), "stop", started], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

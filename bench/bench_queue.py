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


async def create_plain_table(url: str) -> None:
    async with Database.from_url(url) as db, db.write() as session:
        await session.execute(text("CREATE TABLE IF NOT EXISTS bench_plain (id BIGINT PRIMARY KEY, v TEXT)"))


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


async def _work(url: str, what: str, index: int, count: int, start_at: float) -> tuple[int, float]:
    """One process's share: ``count`` plain transactions, or claims until the queue is empty."""
    async with Database.from_url(url) as db:
        queue = JobQueue(db, QueuePolicy(lease_seconds=600))
        async with db.read() as session:
            await session.execute(text("SELECT 1"))  # connect before the clock starts
        while time.time() < start_at:
            await asyncio.sleep(0.001)
        done = 0
        if what == "plain":
            for i in range(count):
                key = index * 10_000_000 + i
                async with db.write() as session:
                    await session.execute(
                        text("INSERT INTO bench_plain (id, v) VALUES (:i, 'x')"), {"i": key}
                    )
                    await session.execute(text("SELECT v FROM bench_plain WHERE id = :i"), {"i": key})
                done += 1
        else:
            while (lease := await queue.claim(f"bench-{index}")) is not None:
                done += 1
                if what == "claim+finish":
                    await queue.finish(lease, RESULT)
        return done, time.time()


def _process(url: str, what: str, index: int, count: int, start_at: float, out: mp.Queue) -> None:
    out.put(asyncio.run(_work(url, what, index, count, start_at)))


def per_second(url: str, what: str, processes: int, count: int) -> tuple[float, int]:
    """Run ``processes`` processes doing ``what`` (``count`` operations in all); (ops/s, ops)."""
    context = mp.get_context("spawn")
    out: mp.Queue = context.Queue()
    start_at = time.time() + 3.0  # every process connected and waiting before the start
    share = count // processes
    workers = [
        context.Process(target=_process, args=(url, what, i, share, start_at, out)) for i in range(processes)
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
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()

    backends = ["sqlite"]
    server, started = (None, None) if args.no_postgres else postgres_url()
    if server:
        backends.append("postgresql")
    print(f"{args.jobs} jobs from {args.users} users per run; {os.cpu_count()} CPUs")
    print("plain = one transaction of INSERT + SELECT through the same engine, same process count")
    print(f"{'database':<11} {'what':<13} {'procs':>5} {'per second':>11} {'plain/s':>8} {'ratio':>6}")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for backend in backends:
                for processes in (1, 4):
                    url = asyncio.run(fresh_database(backend, server, Path(scratch)))
                    asyncio.run(create_plain_table(url))
                    plain, _ = per_second(url, "plain", processes, args.jobs)
                    for what in ("claim", "claim+finish"):
                        url = asyncio.run(fresh_database(backend, server, Path(scratch)))
                        asyncio.run(fill(url, args.jobs, args.users))
                        rate, total = per_second(url, what, processes, args.jobs)
                        assert total == args.jobs, f"{total} claims for {args.jobs} jobs"
                        row = f"{backend:<11} {what:<13} {processes:>5} {rate:>11.0f}"
                        print(f"{row} {plain:>8.0f} {rate / plain:>6.2f}", flush=True)
    finally:
        if started:
            subprocess.run(["bash", str(ROOT / ".ci" / "postgres.sh"), "stop", started], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Real databases for the db/queue/worker tests: a SQLite file, or a fresh PostgreSQL database.

PostgreSQL comes from ``LATENT_PAINTER_TEST_POSTGRES_URL`` (CI sets it via
``.ci/postgres.sh``). Without it, the first test that needs PostgreSQL starts a throwaway
server with that same script, once per test process, and stops it at exit; if the script
fails, the test fails with the script's message (never a skip).

Test modules import the fixtures they use by name (``from tests.db_fixtures import db_url``).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from db import migrate
from db.engine import Database
from db.queue import JobQueue, QueuePolicy

ROOT = Path(__file__).resolve().parents[1]
POSTGRES_ENV = "LATENT_PAINTER_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")

_server: dict[str, str] = {}


def postgres_server_url() -> str:
    """The URL of a PostgreSQL database to work beside (its server creates per-test databases)."""
    url = os.environ.get(POSTGRES_ENV)
    if url:
        return url
    if "url" in _server:
        return _server["url"]
    script = ROOT / ".ci" / "postgres.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(
            f"{POSTGRES_ENV} is not set and `bash .ci/postgres.sh` could not start PostgreSQL "
            f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}\n"
            f'Run `eval "$(bash .ci/postgres.sh)"` and try again.',
            pytrace=False,
        )
    values = dict(
        line.removeprefix("export ").split("=", 1) for line in done.stdout.splitlines() if "=" in line
    )
    _server["url"] = values[POSTGRES_ENV]
    data = values["LATENT_PAINTER_TEST_POSTGRES_DATA"]
    atexit.register(subprocess.run, ["bash", str(script), "stop", data], capture_output=True)
    # Worker processes started by tests read the same variable.
    os.environ[POSTGRES_ENV] = _server["url"]
    return _server["url"]


def _plain_dsn(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def create_postgres_database(template: str | None = None) -> str:
    """A new, empty (or ``template``-copied) database on the test server; returns its URL."""
    server = postgres_server_url()
    name = f"lp_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_plain_dsn(server))
    try:
        suffix = f" TEMPLATE {template}" if template else ""
        await connection.execute(f'CREATE DATABASE "{name}"{suffix}')
    finally:
        await connection.close()
    return make_url(server).set(database=name).render_as_string(hide_password=False)


async def drop_postgres_database(url: str) -> None:
    """Drop a database made by :func:`create_postgres_database`, closing its connections."""
    server = postgres_server_url()
    name = make_url(url).database
    connection = await asyncpg.connect(_plain_dsn(server))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


_migrated_template: dict[str, str] = {}


async def migrated_postgres_database() -> str:
    """A fresh database already at the head revision (copied from a template made once)."""
    if "name" not in _migrated_template:
        url = await create_postgres_database()
        await migrate.upgrade(url)
        _migrated_template["name"] = make_url(url).database or ""
    return await create_postgres_database(template=_migrated_template["name"])


def sqlite_url(directory: Path) -> str:
    """The URL of the SQLite file ``latent-painter.db`` in ``directory``."""
    return f"sqlite+aiosqlite:///{directory / 'latent-painter.db'}"


async def fresh_url(backend: str, directory: Path, *, migrated: bool = True) -> str:
    """A database of ``backend`` for one test: empty, or at head when ``migrated``."""
    if backend == "sqlite":
        url = sqlite_url(directory)
        if migrated:
            await migrate.upgrade(url)
        return url
    if migrated:
        return await migrated_postgres_database()
    return await create_postgres_database()


async def dispose_url(backend: str, url: str) -> None:
    if backend == "postgresql":
        await drop_postgres_database(url)


def write_config(path: Path, url: str, data_dir: Path, **queue: float) -> Path:
    """A config.toml for worker processes: this database, this data dir, these [queue] values."""
    lines = [f"{key} = {value}" for key, value in queue.items()]
    path.write_text(
        textwrap.dedent(
            f"""\
            [storage]
            data_dir = "{data_dir}"

            [database]
            url = "{url}"

            [queue]
            """
        )
        + "\n".join(lines)
        + "\n"
    )
    return path


def worker_command(config: Path, *extra: str) -> list[str]:
    """The command line of a real worker process using the cheap test runner."""
    return [
        sys.executable,
        "-m",
        "bot.cli_queue",
        "worker",
        "--config",
        str(config),
        "--runner",
        "tests.job_runners:run_job",
        *extra,
    ]


# -- fixtures (import them by name in a test module) ------------------------------------


@pytest.fixture(params=BACKENDS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database URL, once for SQLite and once for PostgreSQL."""
    url = await fresh_url(request.param, tmp_path)
    try:
        yield url
    finally:
        await dispose_url(request.param, url)


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """An open :class:`Database` on ``db_url``."""
    db = Database.from_url(db_url)
    try:
        yield db
    finally:
        await db.dispose()


@pytest.fixture
def queue(database: Database) -> JobQueue:
    """A queue with a short lease and no backoff, as the tests want."""
    return JobQueue(
        database, QueuePolicy(lease_seconds=30, max_attempts=3, per_user_cap=5, backoff_seconds=0)
    )

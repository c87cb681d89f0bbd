"""What an operator sees when the bot starts: the real bot and discord.py client against the stand-in.

Each test starts its own bot the way ``latent-painter bot`` does (:func:`create_bot`, then
``start``) in a fresh data directory sharing the session's tiny model, and reads the log
records an operator would read at the default verbosity.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import discord.gateway
import discord.http
import pytest
import torch

from bot.artifacts import LocalArtifactStore
from bot.config import Settings, load_settings
from bot.discord_bot import LatentPainterBot, create_bot
from db.engine import Database
from tests.discord_standin import DiscordStandIn
from tests.discord_standin.world import GUILD_ID, OTHER_GUILD_ID
from tests.job_runners import run_job

TOKEN = "startup-test-token.not-a-real-one"


@pytest.fixture(autouse=True)
def endpoints() -> Iterator[None]:
    """discord.py's class-level endpoints, put back after each test (the bot repoints them)."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
def data(tmp_path: Path, data_dir: Path) -> Path:
    """A fresh data directory (own database) that finds the session's tiny model."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "models").symlink_to(data_dir / "models", target_is_directory=True)
    return root


def settings_for(data: Path, standin: DiscordStandIn, **env: str) -> Settings:
    return load_settings(
        env={
            "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
            "LATENT_PAINTER_MODEL_ID": "tiny",
            "LATENT_PAINTER_QUEUE_POLL_SECONDS": "0.2",
            **standin.env(),
            **env,
        }
    )


@asynccontextmanager
async def running_bot(standin: DiscordStandIn, settings: Settings) -> AsyncIterator[LatentPainterBot]:
    """A bot started as ``latent-painter bot`` starts it, connected to ``standin``; closed after."""
    bot = await create_bot(settings, guild_ready_timeout=0.05)
    task = asyncio.create_task(bot.start(TOKEN))
    try:
        await standin.wait_until_ready(timeout=60)
        # Closed before its own on_ready, discord.py would dispatch it on a closed client.
        await asyncio.wait_for(bot.wait_until_ready(), 30)
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, 60)


async def logged(
    caplog: pytest.LogCaptureFixture, found: Callable[[logging.LogRecord], bool], timeout: float = 60
) -> logging.LogRecord:
    """The first log record ``found`` accepts, waiting up to ``timeout`` seconds for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for record in caplog.records:
            if found(record):
                return record
        if loop.time() > deadline:
            raise AssertionError(f"nothing matching logged within {timeout:g} s:\n{caplog.text}")
        await asyncio.sleep(0.05)


def says(text: str) -> Callable[[logging.LogRecord], bool]:
    return lambda record: text in record.getMessage()


async def test_the_bots_worker_warms_up_before_the_first_job(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The model is loaded at start, not by the first member to /paint, and the log says when."""
    caplog.set_level(logging.INFO)
    async with DiscordStandIn(token=TOKEN) as standin:
        async with running_bot(standin, settings_for(data, standin)):
            ready = await logged(caplog, says(" ready (warmed up in "))
    assert ready.name == "latent_painter.worker" and ready.levelno == logging.INFO
    assert ready.getMessage().endswith(" s)")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_model_that_cannot_load_is_one_error_line_at_start_up(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A mistyped [model] id is noticed when the bot starts, not when members' jobs fail."""
    caplog.set_level(logging.INFO)
    missing = data / "no-such-model"
    async with DiscordStandIn(token=TOKEN) as standin:
        async with running_bot(standin, settings_for(data, standin, LATENT_PAINTER_MODEL_ID=str(missing))):
            await logged(caplog, says("warm-up failed"))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, caplog.text
    line = errors[0].getMessage()
    assert errors[0].name == "latent_painter.worker" and errors[0].exc_info is None
    assert "\n" not in line
    assert "warm-up failed: " in line and line.endswith(
        f"([model] id '{missing}'); paintings fail until [model] id (LATENT_PAINTER_MODEL_ID) "
        "names a model that loads"
    )
    assert not [r for r in caplog.records if " ready (warmed up" in r.getMessage()]
    assert not [r for r in caplog.records if "paints noise" in r.getMessage()]  # not 'tiny'


async def test_start_up_says_what_the_bot_runs_and_where(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """At the default verbosity: model, device, database, data directory, then the guilds it is in."""
    caplog.set_level(logging.INFO)
    async with DiscordStandIn(token=TOKEN) as standin:
        settings = settings_for(data, standin)
        async with running_bot(standin, settings):
            connected = await logged(caplog, says("connected as "))
    start = next(r for r in caplog.records if r.getMessage().startswith("starting: "))
    assert start.name == "latent_painter.bot" and start.levelno == logging.INFO
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert start.getMessage() == (
        f"starting: model tiny on device auto ({device}), database {settings.database_url}, "
        f"data directory {data.resolve()}, a worker in this process"
    )
    assert f"Paint Club ({GUILD_ID}), Elsewhere ({OTHER_GUILD_ID})" in connected.getMessage()
    assert "to 2 guild(s)" in connected.getMessage()
    noise = [r for r in caplog.records if "paints noise" in r.getMessage()]
    assert len(noise) == 1 and noise[0].levelno == logging.WARNING
    assert noise[0].getMessage().startswith("[model] id is 'tiny', the built-in model with random weights")
    assert "LATENT_PAINTER_MODEL_ID" in noise[0].getMessage()


async def test_the_start_up_line_hides_the_database_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The line is logged before the database is tried, so it also says which one could not be reached."""
    caplog.set_level(logging.INFO)
    url = "postgresql+asyncpg://painter:s3cret-pw@127.0.0.1:9/paintings"
    settings = load_settings(
        env={
            "LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path),
            "LATENT_PAINTER_DATABASE_URL": url,
            "LATENT_PAINTER_DISCORD_RUN_WORKER": "false",
        }
    )
    with pytest.raises(OSError):  # nothing listens on port 9
        await create_bot(settings)
    start = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("starting: "))
    # Masked by the bot ("***"), or already by the log redaction `latent-painter` installs.
    assert re.search(
        r"database postgresql\+asyncpg://painter:(\*\*\*|<redacted>)@127\.0\.0\.1:9/paintings,", start
    )
    assert "s3cret-pw" not in caplog.text
    assert start.endswith("no worker ([discord] run_worker = false)")


def command_names(commands: list[dict]) -> list[str]:
    return sorted(c["name"] for c in commands)


async def test_changing_sync_guild_takes_the_commands_off_the_guild_named_before(data: Path) -> None:
    """Every command is listed once wherever it is used: guild → other guild → global."""
    async with DiscordStandIn(token=TOKEN) as standin:

        async def start_with(sync_guild: int, *, then_ask: str | None = None) -> None:
            settings = settings_for(
                data,
                standin,
                LATENT_PAINTER_DISCORD_SYNC_GUILD=str(sync_guild),
                LATENT_PAINTER_DISCORD_RUN_WORKER="false",
            )
            async with running_bot(standin, settings):  # commands are synced before it connects
                if then_ask is not None:  # a member uses a command in GUILD_ID: it must answer
                    await standin.wait_until_ready()
                    handle = await standin.send_slash(then_ask, {}, guild=GUILD_ID)
                    assert (await handle.response(timeout=5)).callback_type == 4

        await start_with(GUILD_ID)
        names = command_names(standin.guild_commands[GUILD_ID])
        assert "paint" in names and standin.global_commands == []
        # A data directory with no record of an earlier sync leaves global commands alone:
        # they may be another deployment's of the same application.
        assert not [r for r in standin.requests if r.method == "PUT" and "/guilds/" not in r.path]

        await start_with(OTHER_GUILD_ID)
        assert standin.guild_commands[GUILD_ID] == []
        assert command_names(standin.guild_commands[OTHER_GUILD_ID]) == names

        await start_with(0)
        assert standin.guild_commands[GUILD_ID] == standin.guild_commands[OTHER_GUILD_ID] == []
        assert command_names(standin.global_commands) == names

        await start_with(0)  # nothing to take off any more: one global sync only
        puts = [r for r in standin.requests if r.method == "PUT"]
        assert [r.path.count("/guilds/") for r in puts[-2:]] == [0, 0]

        # Global back to one guild: the global ones come off; the guild's copies answer.
        await start_with(GUILD_ID, then_ask="history")
        assert command_names(standin.guild_commands[GUILD_ID]) == names
        assert standin.global_commands == []
        standin.assert_clean()


async def test_a_guild_the_bot_has_left_since_is_noted_and_the_bot_starts(
    data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with DiscordStandIn(token=TOKEN) as standin:
        env = {"LATENT_PAINTER_DISCORD_RUN_WORKER": "false"}
        settings = settings_for(data, standin, LATENT_PAINTER_DISCORD_SYNC_GUILD=str(OTHER_GUILD_ID), **env)
        async with running_bot(standin, settings):
            pass
        standin.guilds[:] = [g for g in standin.guilds if g.id != OTHER_GUILD_ID]  # kicked out
        async with running_bot(standin, settings_for(data, standin, **env)):
            pass
        assert command_names(standin.global_commands)
    [noted] = [r for r in caplog.records if "could not take the commands off" in r.getMessage()]
    assert noted.levelno == logging.WARNING and str(OTHER_GUILD_ID) in noted.getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def test_a_bot_closed_before_its_setup_finished_starts_no_worker(data: Path) -> None:
    """SIGTERM while commands are being synced: the worker must not start after the close,
    where nothing would stop it or give its job back."""
    from db import migrate

    settings = load_settings(env={"LATENT_PAINTER_STORAGE_DATA_DIR": str(data)})
    await migrate.upgrade(settings.database_url)
    bot = LatentPainterBot(
        settings,
        db=Database.from_url(settings.database_url),
        store=LocalArtifactStore(data / "artifacts"),
        runner=run_job,
    )
    await bot.close()
    bot.start_worker()  # what setup_hook does once the sync is done
    assert bot._worker_task is None

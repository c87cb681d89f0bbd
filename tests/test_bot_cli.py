"""`latent-painter bot` and `latent-painter health` on the command line: errors and the container check."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from pathlib import Path

import discord.gateway
import discord.http
import pytest

from bot.cli import main
from tests.discord_standin import DiscordStandIn
from tests.test_bot_e2e import start_bot_process

TOKEN = "cli-test-token.not-a-real-one"


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LATENT_PAINTER_STORAGE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    return tmp_path


def test_bot_without_a_token_says_so(data: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)
    assert main(["bot"]) == 2
    assert capsys.readouterr().err.strip() == (
        "latent-painter: error: DISCORD_TOKEN is not set: export the bot token in the environment"
    )


async def test_bot_with_a_refused_token_says_so_without_printing_it(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token="the-right-token") as standin:
        for name, value in standin.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
        try:
            code = await asyncio.to_thread(main, ["bot"])
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        assert [r.route for r in standin.requests] == ["GET /users/@me"]
    err = capsys.readouterr().err
    assert code == 2 and "Discord refused the bot token in DISCORD_TOKEN" in err
    assert TOKEN not in err and TOKEN not in caplog.text


def test_health_needs_a_fresh_heartbeat(data: Path, capsys) -> None:
    import asyncio

    from db import migrate

    asyncio.run(migrate.upgrade(f"sqlite+aiosqlite:///{data / 'latent-painter.db'}"))
    assert main(["health"]) == 1
    assert "no heartbeat yet" in capsys.readouterr().out
    heartbeat = data / "bot.heartbeat"
    heartbeat.write_text("1\n")
    # The bot runs its worker in-process by default: the worker's own heartbeat counts too.
    assert main(["health"]) == 1
    assert "worker" in capsys.readouterr().out
    (data / "bot.worker.heartbeat").write_text("1\n")
    assert main(["health"]) == 0
    assert capsys.readouterr().out.strip() == "healthy"
    old = time.time() - 600
    os.utime(heartbeat, (old, old))
    assert main(["health", "--max-age", "120"]) == 1
    assert "more than 120 s" in capsys.readouterr().out


def test_health_of_a_standalone_worker_reads_its_own_heartbeat(data: Path, capsys) -> None:
    """A worker container's health check: `health --worker` follows `latent-painter worker`
    on this host, and does not ask for a bot there."""
    assert main(["db", "upgrade"]) == 0
    assert main(["health", "--worker"]) == 1
    assert "no worker heartbeat yet" in capsys.readouterr().out
    assert main(["worker", "--exit-when-idle", "--runner", "tests.job_runners:run_job"]) == 0
    capsys.readouterr()
    assert main(["health", "--worker"]) == 0
    assert capsys.readouterr().out.strip() == "healthy"
    assert main(["health"]) == 1  # no bot runs here
    assert "no heartbeat yet" in capsys.readouterr().out
    time.sleep(1.1)  # the worker has stopped: its heartbeat only grows older
    assert main(["health", "--worker", "--max-age", "1"]) == 1
    assert "the worker on this host last beat" in capsys.readouterr().out


def test_health_reports_an_unreachable_database(data: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    (data / "bot.heartbeat").write_text("1\n")
    monkeypatch.setenv("LATENT_PAINTER_DATABASE_URL", "postgresql+asyncpg://nobody@127.0.0.1:9/none")
    assert main(["health"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: database unreachable")


def test_bot_that_cannot_reach_discord_says_so_in_one_line(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    api_base = f"http://127.0.0.1:{port}/api/v10"
    monkeypatch.setenv("LATENT_PAINTER_DISCORD_API_BASE", api_base)
    monkeypatch.setenv("LATENT_PAINTER_DISCORD_RUN_WORKER", "false")
    monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    try:
        code = main(["bot"])
    finally:
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(
        f"latent-painter: error: cannot reach [discord] api_base at {api_base}: Cannot connect to host"
    ), err
    assert TOKEN not in err[0] and TOKEN not in caplog.text


async def test_a_sync_guild_the_bot_is_not_in_is_one_line_and_exit_2(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    """Discord answers 403 Missing Access (50001): a setting to fix, not a traceback."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token=TOKEN) as standin:
        for name, value in standin.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
        monkeypatch.setenv("LATENT_PAINTER_DISCORD_SYNC_GUILD", "999")
        monkeypatch.setenv("LATENT_PAINTER_DISCORD_RUN_WORKER", "false")
        try:
            code = await asyncio.to_thread(main, ["bot"])
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        refused = [r for r in standin.requests if r.route.endswith("/guilds/{guild_id}/commands")]
        assert [(r.method, r.status, (r.response or {}).get("code")) for r in refused] == [
            ("PUT", 403, 50001)
        ]
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        "latent-painter: error: cannot register commands in guild 999 ([discord] sync_guild): the bot is "
        "not in it or lacks the applications.commands scope; invite it with the bot and "
        "applications.commands scopes, or set sync_guild = 0 to register them globally"
    ]
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_a_gateway_that_cannot_be_reached_is_one_line_and_exit_1(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys, caplog
) -> None:
    """REST answers (the token is fine) but the websocket cannot be opened: say where it was tried."""
    gateway = f"ws://127.0.0.1:{closed_port()}/gateway"
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token=TOKEN) as standin:
        for name, value in standin.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("LATENT_PAINTER_DISCORD_GATEWAY_URL", gateway)
        monkeypatch.setenv("LATENT_PAINTER_DISCORD_RUN_WORKER", "false")
        monkeypatch.setenv("DISCORD_TOKEN", TOKEN)
        try:
            code = await asyncio.wait_for(asyncio.to_thread(main, ["bot"]), 60)
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        assert "GET /users/@me" in [r.route for r in standin.requests]
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith(
        f"latent-painter: error: cannot reach [discord] gateway_url at {gateway}: Cannot connect to host"
    ), err
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert TOKEN not in err[0] and TOKEN not in caplog.text


async def test_sigterm_while_discord_is_down_exits_within_seconds(tmp_path: Path, data_dir: Path) -> None:
    """discord.py sleeps in its reconnect back-off for minutes while Discord is down; SIGTERM
    (docker stop, systemd) must not wait for it, and the log says what is happening."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(data_dir / "models", target_is_directory=True)
    log_path = tmp_path / "bot.log"
    async with DiscordStandIn(token=TOKEN) as standin:
        env = {
            **os.environ,
            **standin.env(),
            "DISCORD_TOKEN": TOKEN,
            "HF_HUB_OFFLINE": "1",
            "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
            "LATENT_PAINTER_MODEL_ID": "tiny",
        }
        with open(log_path, "wb") as log_file:
            process = await start_bot_process(env, log_file)
        try:
            await standin.wait_until_ready(timeout=120)
            await standin.stop()  # Discord goes away: every reconnect is refused
            # SIGTERM in a back-off sleep with at least 6 s left (the first sleeps are short).
            deadline = time.monotonic() + 120
            while True:  # polled often: the newest sleep has only just begun
                output = log_path.read_text(errors="replace")
                assert time.monotonic() < deadline, output
                sleeps = re.findall(r"Attempting a reconnect in (\d+\.\d+)s", output)
                if sleeps and float(sleeps[-1]) >= 6.0:
                    break
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            code = await asyncio.wait_for(process.wait(), 120)
            took = time.monotonic() - sent
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = log_path.read_text(errors="replace")
    assert code == 0 and took < 4.0, (took, output[-3000:])
    assert "SIGTERM received: shutting down" in output
    assert TOKEN not in output


def test_health_help_says_what_it_checks(capsys) -> None:
    """An operator wiring a monitor reads this to know what a failing check can mean."""
    for argv in (["--help"], ["health", "--help"]):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert (
            "check the database (exists, schema at head), the bot's heartbeat and, when the bot "
            "runs its worker, the worker's heartbeat; with --worker, the heartbeat of a "
            "`latent-painter worker` on this host instead (exit 0 healthy, 1 not)"
        ) in text.replace("Check the", "check the"), text

"""``latent-painter bot`` (run the Discord bot) and ``latent-painter health`` (the container check).

The token comes from ``DISCORD_TOKEN`` only; it is never printed or logged, and a token
Discord refuses is reported without it. Exit codes of ``bot``: 0 after SIGTERM/SIGINT, 1
when Discord cannot be reached (network, DNS, ``[discord] api_base`` or ``gateway_url``), 2
for a bad setting or a refused token.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from bot.config import ConfigError, DiscordSettings, discord_token, load_settings

log = logging.getLogger("latent_painter.bot")

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_UNREACHABLE = 1  # Discord could not be reached (the network, not the settings)
DEFAULT_API_BASE = DiscordSettings().api_base
DEFAULT_GATEWAY_URL = DiscordSettings().gateway_url
HEALTH_HELP = (
    "check the database (exists, schema at head), the bot's heartbeat and, when the bot runs "
    "its worker, the worker's heartbeat; with --worker, the heartbeat of a `latent-painter "
    "worker` on this host instead (exit 0 healthy, 1 not)"
)


def cmd_bot(args: argparse.Namespace) -> int:
    """Run the bot until SIGTERM or SIGINT."""
    import aiohttp
    import discord

    from bot.discord_bot import GatewayUnreachable, run_bot
    from bot.redact import redact
    from bot.worker import exit_past_busy_runners

    settings = load_settings(args.config)
    token = discord_token()
    try:
        asyncio.run(run_bot(settings, token))
    except discord.LoginFailure:
        raise ConfigError(
            "Discord refused the bot token in DISCORD_TOKEN; check it in the developer portal"
        ) from None
    except discord.PrivilegedIntentsRequired:  # pragma: no cover - the bot asks for none
        raise ConfigError("Discord refused the gateway intents") from None
    except (aiohttp.ClientError, discord.GatewayNotFound) as exc:
        # Offline, DNS, a firewall, or a wrong [discord] api_base: say where we tried to go.
        # (Other OSErrors, e.g. an unwritable data directory, are main()'s to report.)
        # aiohttp's messages name the host and port only, but a proxy URL may carry a password.
        reason = redact(str(exc) or type(exc).__name__)
        where = "Discord" if settings.discord.api_base == DEFAULT_API_BASE else "[discord] api_base"
        print(
            f"latent-painter: error: cannot reach {where} at {redact(settings.discord.api_base)}: {reason}",
            file=sys.stderr,
        )
        exit_past_busy_runners(EXIT_UNREACHABLE)
        return EXIT_UNREACHABLE
    except GatewayUnreachable as exc:
        # REST answered (the token was checked) but the websocket could not be opened.
        url = settings.discord.gateway_url
        where = "Discord's gateway" if url == DEFAULT_GATEWAY_URL else "[discord] gateway_url"
        print(
            f"latent-painter: error: cannot reach {where} at {redact(url)}: {redact(str(exc))}",
            file=sys.stderr,
        )
        exit_past_busy_runners(EXIT_UNREACHABLE)
        return EXIT_UNREACHABLE
    exit_past_busy_runners(EXIT_OK)
    return EXIT_OK


def _sqlite_problem(path: Path, head: str) -> str | None:
    """What is wrong with the SQLite database at ``path``, read without creating or changing it."""
    if not path.is_file():
        # Opening it would create an empty database, and a volume mounted in the wrong
        # place would look healthy.
        return f"database file {path} does not exist (is the data volume mounted?)"
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return f"database {path} cannot be opened: {exc}"
    try:
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:  # also "file is not a database"
        if "no such table" not in str(exc):
            return f"database {path} cannot be read: {exc}"
        revision = None
    finally:
        connection.close()
    return _schema_problem(str(path), revision[0] if revision else None, head)


def _schema_problem(where: str, current: str | None, head: str) -> str | None:
    if current is None:
        return f"database {where} has no schema (not this bot's database?)"
    if current != head:
        return (
            f"database {where} is at schema revision {current}, this latent-painter needs {head}; "
            "run `latent-painter db upgrade`"
        )
    return None


def _stale(beat: Path, max_age: float, *, missing: str, stale: str) -> str | None:
    """None when ``beat`` was touched within ``max_age`` seconds, else what is wrong.

    ``missing`` and ``stale`` are the messages, with ``{beat}`` and ``{age}`` to fill in.
    """
    try:
        age = time.time() - beat.stat().st_mtime
    except FileNotFoundError:
        return missing.format(beat=beat)
    if age > max_age:
        return stale.format(age=f"{age:.0f} s ago (more than {max_age:g} s)")
    return None


async def check_health(settings: Any, max_age: float, *, worker: bool = False) -> str | None:
    """None when healthy, else one line saying what is wrong (database, a silent bot or its worker).

    The database must answer and be at this version's schema; an embedded SQLite file is
    opened read-only and never created. ``worker``: check a standalone ``latent-painter
    worker`` on this host (its container) rather than the bot.
    """
    from db.engine import mask_password, sqlite_path
    from db.migrate import head_revision, schema_state

    url = settings.database_url
    path = sqlite_path(url)
    try:
        if path is not None:
            problem = await asyncio.to_thread(_sqlite_problem, path, head_revision())
        else:
            state = await schema_state(url)
            problem = _schema_problem(mask_password(url), state.current, state.head)
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        from bot.cli import database_error_line

        return database_error_line(exc) or f"database unreachable: {type(exc).__name__}: {exc}"
    if problem is not None:
        return problem
    if worker:
        from bot.worker import standalone_heartbeat_file

        return _stale(
            standalone_heartbeat_file(settings.data_dir),
            max_age,
            missing="no worker heartbeat yet ({beat}): no `latent-painter worker` has run on this host",
            stale="the worker on this host last beat {age}: it has stopped or is stuck",
        )
    problem = _stale(
        settings.data_dir / "bot.heartbeat",
        max_age,
        missing="no heartbeat yet ({beat}): the bot is not connected",
        stale="last heartbeat {age}: the bot is stuck or disconnected",
    )
    if problem is None and settings.discord.run_worker:
        # A bot whose worker task died still answers Discord, but nothing gets painted.
        from bot.worker import WORKER_HEARTBEAT_FILE

        problem = _stale(
            settings.data_dir / WORKER_HEARTBEAT_FILE,
            max_age,
            missing=(
                "no worker heartbeat yet ({beat}): the bot's worker is not running, so nothing is painted"
            ),
            stale="the bot's worker last beat {age}: it has stopped, so nothing is painted",
        )
    return problem


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when the database is at this version's schema and the heartbeats are fresh, else 1."""
    settings = load_settings(args.config)
    problem = asyncio.run(check_health(settings, args.max_age, worker=args.worker))
    if problem is not None:
        print(f"unhealthy: {problem}")
        return EXIT_UNHEALTHY
    print("healthy")
    return EXIT_OK


def add_subcommands(subparsers: Any) -> None:
    """Add ``bot`` and ``health`` to the ``latent-painter`` command."""
    from bot.cli import add_config_option

    bot = subparsers.add_parser("bot", help="run the Discord bot (token from DISCORD_TOKEN)")
    add_config_option(bot)
    bot.set_defaults(func=cmd_bot)

    health = subparsers.add_parser(
        "health",
        help=HEALTH_HELP,
        description=HEALTH_HELP[0].upper() + HEALTH_HELP[1:] + ".",
    )
    health.add_argument(
        "--max-age", type=float, default=120.0, help="oldest acceptable heartbeat in seconds (default 120)"
    )
    health.add_argument(
        "--worker",
        action="store_true",
        help="check the `latent-painter worker` of this host (its container) instead of the bot",
    )
    add_config_option(health)
    health.set_defaults(func=cmd_health)

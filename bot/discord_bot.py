"""The Discord bot: one ``commands.Bot`` with a cog per feature, the job watcher and a worker task.

:func:`create_bot` builds the bot's dependencies from the settings (database, artifact
store, worker) and passes them in; :func:`run_bot` is what ``latent-painter bot`` runs.
The bot

- points discord.py at ``[discord] api_base`` and ``gateway_url`` when it logs in
  (deployments use them for REST and gateway proxies; the tests for a local stand-in);
- identifies with the default intents only (no privileged intent is needed: everything
  arrives as interactions);
- logs at start what it runs (model, device, database with its password masked, data
  directory), warns when that is the random-weight ``tiny`` model, and names the guilds it
  is in once connected;
- loads its cogs in ``setup_hook`` (a cog that fails to load is logged, the rest run),
  registers the persistent buttons, and syncs its commands (to ``[discord] sync_guild``
  when set, for instant updates during development; the guild synced last is remembered
  in the data directory and its commands are taken off when the setting changes, so no
  command is listed twice there);
- runs one queue worker as an asyncio task (``[discord] run_worker``; painting happens
  in a thread, so the gateway stays responsive), supervised: a worker that dies of an
  error is logged and started again, and it touches ``bot.worker.heartbeat`` while it
  runs so ``latent-painter health`` sees a dead one; the worker warms up (loads the
  model) before its first job and says so, or says in one line that the model cannot be
  loaded; and the :class:`~bot.delivery.JobWatcher` that reports progress and delivers
  results;
- on close, gives a running job back to the queue, lets a delivery in flight finish,
  and closes what it opened; on SIGTERM it logs that it is shutting down, closes, and then
  stops waiting for discord.py, which may be sleeping in its reconnect back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import yarl
from discord import app_commands
from discord.ext import commands

from bot.artifacts import ArtifactStore
from bot.cogs.common import report_error
from bot.config import ConfigError, Settings
from bot.delivery import DeliveryLedger, JobWatcher
from bot.progress import PreviewBox
from bot.redact import add_secrets, install_log_redaction
from bot.text import listed, one_line
from bot.views import DYNAMIC_ITEMS
from bot.worker import (
    DEFAULT_RUNNER,
    WORKER_HEARTBEAT_FILE,
    JobContext,
    JobOutput,
    Runner,
    Worker,
    WorkerListener,
    first_line,
    load_runner,
    queue_policy,
)
from db.engine import Database
from db.queue import JobQueue

log = logging.getLogger("latent_painter.bot")

EXTENSIONS = (
    "bot.cogs.paint",
    "bot.cogs.transition",
    "bot.cogs.history",
    "bot.cogs.gallery",
    "bot.cogs.admin",
)
WORKER_STOP_SECONDS = 30.0
# A worker that dies is started again after a wait that doubles from the first figure to
# the second; one that ran for WORKER_STEADY_SECONDS before dying starts the doubling over.
WORKER_RESTART_SECONDS = (1.0, 60.0)
WORKER_STEADY_SECONDS = 300.0
# After close(), how long start() gets to return by itself before it is cancelled (when
# connected, it returns at once).
SHUTDOWN_GRACE_SECONDS = 0.25
# Under [storage] data_dir: the [discord] sync_guild the commands were last synced to (0:
# globally), so a change of the setting can take them off the guild named before.
SYNCED_GUILD_FILE = Path("bot") / "synced_guild.txt"


def point_discord_at(settings: Settings) -> None:
    """Send discord.py's REST calls to ``[discord] api_base`` and its gateway to ``gateway_url``."""
    discord.http.Route.BASE = settings.discord.api_base.rstrip("/")
    # A yarl.URL, not a string: discord.py calls .with_query on it.
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord.gateway_url)


class GatewayUnreachable(Exception):
    """The first connection to the gateway failed (network, DNS, ``[discord] gateway_url``).

    ``__cause__`` is the error the connection failed with.
    """


class PainterTree(app_commands.CommandTree):
    """The command tree: every command error is answered (member errors) or logged (ours)."""

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await report_error(interaction, error)


class WatcherListener(WorkerListener):
    """Wakes the job watcher when the in-process worker starts or ends a job."""

    def __init__(self, watcher: JobWatcher) -> None:
        self.watcher = watcher

    async def job_started(self, lease: Any) -> None:
        self.watcher.wake()

    async def job_finished(self, job_id: int, result: Any) -> None:
        self.watcher.previews.drop(job_id)
        self.watcher.wake()

    async def job_failed(self, job: Any) -> None:
        self.watcher.previews.drop(job.id)
        self.watcher.wake()

    async def job_cancelled(self, job: Any) -> None:
        self.watcher.previews.drop(job.id)
        self.watcher.wake()


def offering_previews(runner: Runner, previews: PreviewBox) -> Runner:
    """The runner, with ``ctx.preview(image)`` for handing the newest painted frame to the bot.

    A runner that calls it (when present) gets a small picture of the canvas shown in
    the progress reply; one that does not still works. The runner's ``warm_up`` is kept
    (the worker looks for it on the runner it is given, and says how it went).
    """

    def run(ctx: JobContext) -> JobOutput:
        ctx.preview = lambda image: previews.offer(ctx.job_id, image)  # type: ignore[attr-defined]
        return runner(ctx)

    hook = getattr(runner, "warm_up", None)
    if hook is not None:
        run.warm_up = hook  # type: ignore[attr-defined]
    return run


class LatentPainterBot(commands.Bot):
    """The Latent Painter bot; its dependencies are handed in (see :func:`create_bot`)."""

    settings: Settings
    db: Database
    queue: JobQueue
    store: ArtifactStore
    watcher: JobWatcher
    worker: Worker | None

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        store: ArtifactStore,
        runner: Runner | None = None,
        guild_ready_timeout: float = 2.0,
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            # Default intents: guilds and their channels, no members, presences or message content.
            intents=discord.Intents.default(),
            tree_cls=PainterTree,
            help_command=None,
            # Nothing the bot says pings anyone unless a message allows it explicitly.
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=guild_ready_timeout,
        )
        self.settings = settings
        self.db = db
        self.queue = JobQueue(db, queue_policy(settings))
        self.store = store
        ledger = DeliveryLedger.for_store(settings.data_dir / "bot", store)
        self.watcher = JobWatcher(self, ledger, tick_seconds=min(1.0, settings.queue.poll_seconds))
        self.worker = None
        if settings.discord.run_worker:
            self.worker = Worker(
                self.queue,
                store,
                offering_previews(runner or load_runner(DEFAULT_RUNNER), self.watcher.previews),
                workdir_root=settings.data_dir / "work",
                heartbeat_seconds=settings.queue.heartbeat_seconds,
                poll_seconds=settings.queue.poll_seconds,
                progress_seconds=1.0,
                settings=settings,
                listener=WatcherListener(self.watcher),
                heartbeat_file=settings.data_dir / WORKER_HEARTBEAT_FILE,
            )
        self.worker_restart_seconds = WORKER_RESTART_SECONDS
        self._worker_task: asyncio.Task[None] | None = None
        self._closed_once = False

    async def login(self, token: str) -> None:
        point_discord_at(self.settings)
        await super().login(token)

    async def connect(self, *, reconnect: bool = True) -> None:
        """discord.py's connect, with a gateway unreachable from the start as :class:`GatewayUnreachable`.

        discord.py 2.7 retries a failed first connection by reading the sequence number
        of a websocket it never had, so an unreachable gateway ended in an AttributeError
        after a logged traceback per try. Once connected, its reconnects are untouched.
        """
        client_log = logging.getLogger("discord.client")
        client_log.addFilter(self._no_retry_before_first_connection)
        try:
            await super().connect(reconnect=reconnect)
        except AttributeError as exc:
            cause = exc.__context__
            if self.ws is not None or not isinstance(
                cause, (OSError, aiohttp.ClientError, asyncio.TimeoutError, discord.GatewayNotFound)
            ):
                raise
            raise GatewayUnreachable(first_line(cause)) from cause
        finally:
            client_log.removeFilter(self._no_retry_before_first_connection)

    def _no_retry_before_first_connection(self, record: logging.LogRecord) -> bool:
        # "Attempting a reconnect" (with a traceback) is followed by the one-line error at once.
        return self.ws is not None or not record.getMessage().startswith("Attempting a reconnect")

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            try:
                await self.load_extension(extension)
            except Exception:
                log.exception("extension %s failed to load; the bot runs without it", extension)
        self.add_dynamic_items(*DYNAMIC_ITEMS)
        await self.sync_commands()
        await self.watcher.start()
        self.start_worker()

    def start_worker(self) -> None:
        """Start the in-process worker (if ``[discord] run_worker``) as a supervised task."""
        # Closed already (SIGTERM while setup_hook ran): a worker started now would run on,
        # unsupervised, until the process ends.
        if self.worker is None or self._worker_task is not None or self._closed_once:
            return
        self._worker_task = asyncio.create_task(
            self._supervise_worker(self.worker), name="latent-painter-worker"
        )
        log.info("worker %s runs in the bot process", self.worker.worker_id)

    async def _supervise_worker(self, worker: Worker) -> None:
        """Run the worker until the bot closes; when it dies of an error, log it and start it again.

        Without this a dead worker task ended painting for good while the bot kept
        answering, queueing jobs nobody would run.
        """
        first, longest = self.worker_restart_seconds
        delay = first
        while not worker.stopping:
            started = time.monotonic()
            try:
                await worker.run()
            except Exception:
                if time.monotonic() - started >= WORKER_STEADY_SECONDS:
                    delay = first
                log.exception("worker %s died; starting it again in %.0f s", worker.worker_id, delay)
            else:
                if worker.stopping:
                    return
                log.error("worker %s stopped by itself; starting it again in %.0f s", worker.worker_id, delay)
            if await worker.wait_stopped(delay):
                return
            delay = min(longest, delay * 2)

    async def sync_commands(self) -> list[app_commands.AppCommand]:
        """Register the slash commands with Discord: to one guild at once, or globally.

        When ``[discord] sync_guild`` named another guild at the last sync, that guild's
        commands are taken off first: Discord would list them there as well as the global
        (or the new guild's) ones. Moving from global commands to one guild takes the global
        ones off after the guild's are in, for the same reason.
        """
        guild_id = self.settings.discord.sync_guild
        synced_file = self.settings.data_dir / SYNCED_GUILD_FILE
        previous = _read_guild_id(synced_file)
        if previous and previous != guild_id:
            await self._take_commands_off(previous)
        if guild_id:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            try:
                synced = await self.tree.sync(guild=guild)
            except (discord.Forbidden, discord.NotFound):
                # Discord answers 403 Missing Access (50001) for a guild the bot is not in.
                raise ConfigError(
                    f"cannot register commands in guild {guild_id} ([discord] sync_guild): the bot is "
                    "not in it or lacks the applications.commands scope; invite it with the bot and "
                    "applications.commands scopes, or set sync_guild = 0 to register them globally"
                ) from None
            log.info("synced %d commands to guild %s", len(synced), guild_id)
            # Only where this data directory synced globally itself: with no record, global
            # commands may be another deployment's of the same application.
            if previous == 0 and not await self._take_commands_off(0):
                return synced  # not noted: the next start tries again
        else:
            synced = await self.tree.sync()
            log.info("synced %d global commands", len(synced))
        if previous != guild_id:
            _write_guild_id(synced_file, guild_id)
        return synced

    async def _take_commands_off(self, guild_id: int) -> bool:
        """Remove this bot's commands from ``guild_id`` (the sync_guild of an earlier start; 0: global).

        Whether it is done (a guild the bot has left since counts as done).
        """
        if guild_id == 0:
            # Straight to the API: the tree keeps its global commands, which the guild's copies
            # (and the bot's own look-ups) are made from.
            assert self.application_id is not None
            try:
                await self.http.bulk_upsert_global_commands(self.application_id, payload=[])
            except discord.HTTPException as exc:
                log.warning("could not take the global commands off (they stay listed twice): %s", exc)
                return False
            log.info("took the global commands off ([discord] sync_guild was 0 before)")
            return True
        guild = discord.Object(guild_id)
        self.tree.clear_commands(guild=guild)
        try:
            await self.tree.sync(guild=guild)
        except (discord.Forbidden, discord.NotFound):
            # Removed from that guild since: its commands went with it.
            log.warning(
                "could not take the commands off guild %s ([discord] sync_guild before): "
                "the bot is no longer in it",
                guild_id,
            )
            return True
        log.info("took the commands off guild %s ([discord] sync_guild before)", guild_id)
        return True

    def wake_worker(self) -> None:
        """Let the in-process worker look at the queue now (a job was just queued)."""
        if self.worker is not None:
            self.worker.wake()

    async def on_ready(self) -> None:
        guilds = [f"{one_line(g.name, 100)} ({g.id})" for g in self.guilds]
        log.info(
            "connected as %s (%s) to %d guild(s): %s",
            self.user,
            self.user and self.user.id,
            len(guilds),
            listed(guilds, 1000) or "none yet (invite it with the bot and applications.commands scopes)",
        )

    async def close(self) -> None:
        if self._closed_once:
            await super().close()
            return
        self._closed_once = True
        if self.worker is not None and self._worker_task is not None:
            # The running job goes back to the queue; the next start finishes it.
            self.worker.stop()
            try:
                await asyncio.wait_for(asyncio.shield(self._worker_task), WORKER_STOP_SECONDS)
            except Exception:
                log.exception("the worker did not stop cleanly")
        await self.watcher.stop()
        await super().close()
        await self.db.dispose()


def _read_guild_id(path: Path) -> int | None:
    """The guild id saved in ``path`` (0: global); None when there is none or it cannot be read."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_guild_id(path: Path, guild_id: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(f"{guild_id}\n")
        os.replace(temporary, path)  # never a half-written id
    except OSError as exc:
        # The commands are synced; only a later change of sync_guild would leave doubles.
        log.warning("could not note the synced guild in %s: %s", path, exc)


def describe_start(settings: Settings) -> str:
    """One line saying what the bot runs: model, device, database (password masked), data directory."""
    from db.engine import mask_password

    device = settings.model.device
    if device == "auto" and settings.discord.run_worker:
        from painter.models import resolve_device

        device = f"auto ({resolve_device(device)})"
    worker = (
        "a worker in this process"
        if settings.discord.run_worker
        else "no worker ([discord] run_worker = false)"
    )
    return (
        f"starting: model {settings.model.id} on device {device}, database "
        f"{mask_password(settings.database_url)}, data directory {settings.data_dir.resolve()}, {worker}"
    )


def noise_warning(settings: Settings) -> str | None:
    """A warning when /paint offers the built-in random-weight model ``tiny``, else None."""
    from bot.cogs.paint import offered_models
    from painter.models import TINY_ID

    if TINY_ID not in offered_models(settings):
        return None
    if settings.model.id == TINY_ID:
        where = "[model] id is 'tiny'"
        fix = (
            "set [model] id (LATENT_PAINTER_MODEL_ID) to a Stable Diffusion checkpoint: a hub id "
            "such as stable-diffusion-v1-5/stable-diffusion-v1-5, or a local pipeline directory"
        )
    else:
        where = "[discord] models offers 'tiny'"
        fix = "take it out of [discord] models (LATENT_PAINTER_DISCORD_MODELS)"
    return f"{where}, the built-in model with random weights: it paints noise, not pictures; {fix}"


async def create_bot(settings: Settings, *, runner: Runner | None = None, **options: Any) -> LatentPainterBot:
    """The bot with its database (schema checked; SQLite upgraded in place) and artifact store."""
    from bot.storage_identity import open_data

    log.info("%s", describe_start(settings))
    # 'tiny' is the default, so a forgotten LATENT_PAINTER_MODEL_ID would otherwise only
    # show as members' pictures of coloured noise.
    warning = noise_warning(settings)
    if warning is not None:
        log.warning("%s", warning)
    db, store = await open_data(settings)
    return LatentPainterBot(settings, db=db, store=store, runner=runner, **options)


async def run_bot(settings: Settings, token: str, *, handle_signals: bool = True) -> None:
    """``latent-painter bot``: run until SIGTERM/SIGINT, then shut down cleanly."""
    install_log_redaction()
    add_secrets([token])
    bot = await create_bot(settings)
    loop = asyncio.get_running_loop()
    # Signal handlers can only be installed from the main thread.
    on_main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals and on_main else ()
    async with bot:
        running = asyncio.create_task(bot.start(token), name="latent-painter-bot")
        closing: list[asyncio.Task[None]] = []

        def on_signal(sig: signal.Signals) -> None:
            if closing:
                return  # already shutting down
            log.info("%s received: shutting down", sig.name)
            closing.append(asyncio.create_task(shut_down(bot, running)))

        for sig in signals:
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await asyncio.wait({running})
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            if not running.done():  # run_bot itself was cancelled
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            for task in closing:
                with contextlib.suppress(Exception):
                    await task
        if not running.cancelled():
            running.result()  # start()'s own errors (a refused token, an unreachable Discord)


async def shut_down(bot: LatentPainterBot, running: asyncio.Task[None]) -> None:
    """Close ``bot`` (its running job goes back to the queue), then stop waiting for discord.py.

    While Discord cannot be reached, discord.py sleeps in its reconnect back-off (minutes)
    or waits on a connection, and ``start()`` only returns after that: with the worker
    stopped and the bot closed, nothing is left to wait for.
    """
    await bot.close()
    done, _ = await asyncio.wait({running}, timeout=SHUTDOWN_GRACE_SECONDS)
    if not done:
        log.info("stopped waiting for discord.py to reconnect")
        running.cancel()

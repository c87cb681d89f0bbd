"""What every cog shares: user errors answered ephemerally, guild rules, and starting a job.

Not an extension (it has no ``setup``): the cogs import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import discord

from bot.text import listed, plural
from db.gallery import GalleryError, get_settings
from db.models import Job, Result
from db.queue import QueueFull
from db.results import ResultNotFound, get_result

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot")

# Discord keeps an interaction token usable for 15 minutes; stop trusting it a little early.
TOKEN_LIFETIME = timedelta(minutes=15) - timedelta(seconds=30)
# Answer with a deferral if queueing a job takes longer than this (Discord allows 3 s).
DEFER_AFTER_SECONDS = 1.5
# How much of a refusal the allowed channels may take: about ten mentions, enough to
# find one to go to, then "and K more".
ALLOWED_CHANNELS_LIMIT = 300

P = ParamSpec("P")
T = TypeVar("T")


class UserError(Exception):
    """Something the member can fix; the message is shown to them (ephemerally) as it is."""


# Errors raised by db/ whose messages are written for the person who asked.
MEMBER_FACING = (UserError, QueueFull, ResultNotFound, GalleryError)


# Marks an interaction whose "thinking…" message everyone in the channel sees.
PUBLIC_DEFERRAL = "latent_painter.public_deferral"


async def defer_publicly(interaction: discord.Interaction) -> None:
    """Defer with a "thinking…" message in the channel, which the job's reply will replace."""
    await interaction.response.defer(thinking=True)
    interaction.extras[PUBLIC_DEFERRAL] = True


def painter_bot(interaction: discord.Interaction) -> LatentPainterBot:
    """The bot that received ``interaction``."""
    return interaction.client  # type: ignore[return-value]


async def answer(
    interaction: discord.Interaction,
    content: str | None = None,
    *,
    ephemeral: bool = True,
    **kwargs: Any,
) -> None:
    """Reply to an interaction whether or not it was answered yet (ephemeral by default).

    After a deferral Discord's first follow-up replaces the "thinking…" message and keeps
    the deferral's visibility, so there the thinking message itself becomes the answer —
    unless it is public (:func:`defer_publicly`) and the answer is not.
    """
    kwargs.setdefault("allowed_mentions", discord.AllowedMentions.none())
    response = interaction.response
    if not response.is_done():
        await response.send_message(content, ephemeral=ephemeral, **kwargs)
    elif response.type == discord.InteractionResponseType.deferred_channel_message:
        if ephemeral and interaction.extras.get(PUBLIC_DEFERRAL):
            # The channel sees "thinking…"; a refusal is the member's business only, so the
            # public message goes and the answer comes privately.
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await interaction.followup.send(content or discord.utils.MISSING, ephemeral=True, **kwargs)
            return
        await interaction.edit_original_response(content=content, **kwargs)
    else:
        await interaction.followup.send(content or discord.utils.MISSING, ephemeral=ephemeral, **kwargs)


async def report_error(interaction: discord.Interaction, error: BaseException) -> None:
    """Tell the member what went wrong: their own mistakes in full, ours as a short apology.

    Errors the member cannot cause are logged with the interaction's context. Nothing
    here raises: a failed report is logged too, so a bad interaction never takes the bot down.
    """
    original = getattr(error, "original", error)
    if isinstance(original, MEMBER_FACING):
        message = str(original)
    else:
        command = interaction.command.qualified_name if interaction.command else None
        custom_id = (interaction.data or {}).get("custom_id") if interaction.data else None
        log.error(
            "interaction %s (command %s, component %s, user %s, guild %s) failed",
            interaction.id,
            command,
            custom_id,
            interaction.user.id,
            interaction.guild_id,
            exc_info=original,
        )
        message = "Something went wrong on our side; it has been logged. Please try again later."
    try:
        await answer(interaction, message)
    except discord.HTTPException as exc:
        log.warning("could not report an error to interaction %s: %s", interaction.id, exc)


def reports_errors(
    callback: Callable[P, Awaitable[None]],
) -> Callable[P, Awaitable[None]]:
    """Wrap a component or modal callback whose first interaction argument gets error reports.

    discord.py sends component errors to ``View.on_error``, which only logs; persistent
    items are rebuilt per click, so the wrapper is where their errors are answered.
    """

    @functools.wraps(callback)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        interaction = next(a for a in args if isinstance(a, discord.Interaction))
        try:
            await callback(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every error is answered or logged
            await report_error(interaction, exc)

    return wrapper


@dataclass(frozen=True)
class GuildRules:
    """The limits that apply to one request: the bot's own, tightened by the server's settings."""

    max_steps: int
    per_user_cap: int
    max_side: int
    allowed_channel_ids: tuple[int, ...]
    gallery_channel_id: int | None
    hall_of_fame_channel_id: int | None
    hall_of_fame_votes: int | None
    flagged_results: str


def _tighter(own: int, guild: int | None) -> int:
    return own if guild is None else min(own, guild)


async def guild_rules(bot: LatentPainterBot, guild_id: int | None) -> GuildRules:
    """The rules for a guild (the bot's defaults in DMs)."""
    s = bot.settings
    if guild_id is None:
        return GuildRules(
            s.painter.max_steps, s.queue.per_user_cap, s.painter.max_side, (), None, None, None, "refuse"
        )
    row = await get_settings(bot.db, guild_id)
    return GuildRules(
        max_steps=_tighter(s.painter.max_steps, row.max_steps),
        per_user_cap=_tighter(s.queue.per_user_cap, row.per_user_cap),
        max_side=_tighter(s.painter.max_side, row.max_side),
        allowed_channel_ids=tuple(row.allowed_channel_ids or ()),
        gallery_channel_id=row.gallery_channel_id,
        hall_of_fame_channel_id=row.hall_of_fame_channel_id,
        hall_of_fame_votes=row.hall_of_fame_votes,
        # Stored once the guild settings table has the column (see admin cog).
        flagged_results=row.flagged_results or "refuse",
    )


async def rules_for(interaction: discord.Interaction) -> GuildRules:
    """The rules where the interaction happened; raises :class:`UserError` in a channel not allowed."""
    rules = await guild_rules(painter_bot(interaction), interaction.guild_id)
    allowed = rules.allowed_channel_ids
    # A thread (or a forum post) is allowed where its parent channel is.
    parent_id = getattr(interaction.channel, "parent_id", None)
    if allowed and interaction.channel_id not in allowed and parent_id not in allowed:
        places = listed([f"<#{channel_id}>" for channel_id in allowed], ALLOWED_CHANNELS_LIMIT)
        raise UserError(f"Painting commands are not allowed in this channel. Use {places}.")
    return rules


# What a result message needs from the bot in its channel: discord.py's names, Discord's labels.
POSTING_PERMISSIONS = {
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
}
THREAD_TYPES = (
    discord.ChannelType.public_thread,
    discord.ChannelType.private_thread,
    discord.ChannelType.news_thread,
)


def check_can_post(interaction: discord.Interaction) -> None:
    """Refuse (with :class:`UserError`) a job whose result the bot could not post in this channel.

    The reply to the interaction works for 15 minutes whatever the channel allows, but a
    result that comes later is a channel message, with an embed and files. Discord tells
    each interaction the bot's permissions in its channel (``app_permissions``); what is
    missing is named, so a server admin knows what to grant. Direct messages need none.
    """
    if interaction.guild_id is None:
        return
    have = interaction.app_permissions
    if have.administrator:
        return
    missing = [label for name, label in POSTING_PERMISSIONS.items() if not getattr(have, name)]
    channel_type = getattr(interaction.channel, "type", None)
    if channel_type in THREAD_TYPES and have.send_messages_in_threads and "Send Messages" in missing:
        missing.remove("Send Messages")  # in a thread, Send Messages in Threads is what counts
    if missing:
        names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        raise UserError(
            f"I can't post results in this channel: I'm missing {names}. "
            "Ask a server admin to allow it, or use another channel."
        )


def no_trail(result: Any) -> str:
    """Why a result cannot be painted again or transitioned (it has no stored trail)."""
    if result.kind == "transition":
        return f"{result.public_id} is a transition, which keeps no trail; pick a painted result."
    return (
        f"{result.public_id} has no stored trail (it was repainted before repaints kept one); "
        "use the result it was repainted from."
    )


async def result_for_button(interaction: discord.Interaction, public_id: str, action: str) -> Result:
    """The result under a button, if the clicking member may ``action`` it (e.g. "repaint").

    A result message is seen by the whole channel, so a refusal names the owner rather than
    saying "not found": the result is theirs and not in this server's gallery, or it was deleted.
    """
    bot = painter_bot(interaction)
    try:
        return await get_result(
            bot.db, public_id, viewer_id=interaction.user.id, guild_id=interaction.guild_id
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    except ResultNotFound:
        pass
    try:
        result = await get_result(bot.db, public_id)
    except ResultNotFound:
        raise UserError(f"That result ({public_id}) was deleted.") from None
    raise UserError(
        f"Only <@{result.owner_id}> can {action} this result; it is private (not in this server's gallery)."
    )


def upload_limit(bot: LatentPainterBot, interaction: discord.Interaction) -> int:
    """Bytes one attachment may have in a reply to this interaction (the configured value when unknown)."""
    limit = getattr(interaction, "filesize_limit", None) or bot.settings.discord.upload_limit
    return int(limit)


async def start_job(
    interaction: discord.Interaction,
    kind: str,
    params: dict[str, Any],
    rules: GuildRules,
    *,
    already_deferred: bool = False,
) -> Job:
    """Queue a job for this interaction, defer the reply, and have the watcher follow it.

    Bad parameters, a full queue and a channel the bot cannot post the result in are
    member errors (nothing is queued); the deferral comes only after the job exists, so an
    error can still be answered ephemerally.
    """
    bot = painter_bot(interaction)
    check_can_post(interaction)
    params = dict(params)
    params["max_bytes"] = min(bot.settings.render.max_bytes, upload_limit(bot, interaction))
    enqueue = asyncio.ensure_future(
        bot.queue.enqueue(
            kind,
            params,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            interaction_token=interaction.token,
            token_expires_at=interaction.created_at + TOKEN_LIFETIME,
            per_user_cap=rules.per_user_cap,
        )
    )
    # Discord wants an answer within 3 s. Queueing takes milliseconds, so a refusal can
    # still be ephemeral; if the database is slow (another writer holds SQLite's lock),
    # defer first and let a refusal replace the thinking message.
    if not already_deferred:
        await asyncio.wait({enqueue}, timeout=DEFER_AFTER_SECONDS)
        if not enqueue.done():
            await defer_publicly(interaction)
            already_deferred = True
    try:
        enqueued = await enqueue
    except QueueFull:
        raise
    except ValueError as exc:
        raise UserError(f"That request cannot be painted: {exc}.") from None
    job = enqueued.job
    try:
        if not already_deferred:
            await defer_publicly(interaction)
    finally:
        # Followed even if the deferral failed: the result then goes to the channel.
        bot.watcher.track(job.id)
        bot.wake_worker()
    log.info(
        "job %s (%s) queued for user %s in guild %s", job.id, kind, interaction.user.id, interaction.guild_id
    )
    return job


async def live_jobs(bot: LatentPainterBot, user_id: int) -> int:
    """How many queued or running jobs a member has."""
    jobs = await bot.queue.list_jobs(user_id=user_id, limit=1000)
    return sum(1 for job in jobs if job.is_live)


class PreparingRequests:
    """Requests being prepared (a picture downloading and decoding), not queued yet, per member.

    The queue only counts jobs it holds, so without these a member sending many /paint
    requests with pictures at once would have every picture downloaded and decoded before
    the first job was queued. Counted per (guild, member), and compared with the member's
    live jobs in every server, as the queue's own cap is.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[int | None, int]] = Counter()

    def of(self, user_id: int) -> int:
        """How many of the member's requests are being prepared, in all servers."""
        return sum(count for (_, user), count in self._counts.items() if user == user_id)

    @contextlib.asynccontextmanager
    async def place(
        self, bot: LatentPainterBot, interaction: discord.Interaction, rules: GuildRules
    ) -> AsyncIterator[None]:
        """Hold a place under the member's cap while the request is prepared; refuse when there is none.

        Released when the block ends (queued, refused or failed).
        """
        key = (interaction.guild_id, interaction.user.id)
        await check_cap(bot, interaction.user.id, rules, preparing=self)
        # No await between the check and this count: a concurrent request sees it.
        self._counts[key] += 1
        try:
            yield
        finally:
            self._counts[key] -= 1
            if self._counts[key] <= 0:
                del self._counts[key]


async def check_cap(
    bot: LatentPainterBot, user_id: int, rules: GuildRules, *, preparing: PreparingRequests | None = None
) -> None:
    """Refuse early (before a download) when the member's queue is already full.

    Requests of the member still being prepared (``preparing``) count as jobs.
    """
    live = await live_jobs(bot, user_id)
    if preparing is not None:
        live += preparing.of(user_id)
    if live >= rules.per_user_cap:
        raise UserError(
            f"You already have {plural(live, 'job')} waiting or running (the limit is "
            f"{rules.per_user_cap}); try again when one has finished."
        )

"""/gallery: a community gallery per server — submit a result, browse newest or top, vote.

A submitted result is posted (its final picture and a vote button) in the server's
gallery channel, or right where it was submitted when the server has none. With a
hall-of-fame channel set, an entry is featured there once: when submitted, or when its
votes reach the server's threshold if one is set.

Only a member's own paintings go in: not a repaint or transition of someone else's result,
whose picture is that member's. Nobody votes for their own entry.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    GuildRules,
    UserError,
    answer,
    defer_publicly,
    guild_rules,
    rules_for,
    upload_limit,
)
from bot.cogs.transition import flagged_action, typed_id, withheld
from bot.delivery import MESSAGE_OVERHEAD, shrink_picture
from bot.text import one_line, quote
from bot.views import gallery_view, vote_view, with_vote_count
from db.gallery import (
    Borrowed,
    EntryNotFound,
    GalleryError,
    GalleryItem,
    GalleryPost,
    OwnEntryVote,
    borrowed_source,
    browse,
    claim_hall_of_fame,
    count_entries,
    discard_entry,
    find_entries,
    get_item,
    posts_of,
    record_post,
    remove_result,
    submit,
    toggle_vote,
)
from db.models import GalleryEntry, Result
from db.results import ResultNotFound, get_result

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.gallery")

PER_PAGE = 5
MAX_PAGE = 10_000


# Said in place of a picture the safety checker flagged, where the server's policy hides it.
NOT_SHOWN = "Not shown here: flagged by the safety checker."
# Said under a page whose pictures Discord refused as too large.
LEFT_OUT = "The pictures are too large to attach here."


def entry_embed(
    result: Result, entry: GalleryEntry, *, image_name: str | None, withheld_picture: bool = False
) -> discord.Embed:
    """One gallery entry: prompt, who made it, votes, and its picture when attached.

    ``image_name``: the attachment the embed shows (None for none, or for a spoilered
    picture, which an embed would show unblurred); ``withheld_picture``: say why there is none.
    """
    embed = discord.Embed(
        title=f"{result.public_id}",
        description=quote(result.prompt, 500) or None,
        colour=discord.Colour.gold(),
    )
    embed.add_field(name="By", value=f"<@{result.owner_id}>", inline=True)
    embed.add_field(name="Votes", value=str(entry.votes), inline=True)
    if result.effect:
        embed.add_field(name="Effect", value=result.effect, inline=True)
    if withheld_picture:
        embed.add_field(name="Picture", value=NOT_SHOWN, inline=False)
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    return embed


# What a member can do about a channel the bot cannot post in.
ASK_AN_ADMIN = (
    "Please ask an admin to check that the channel still exists and that I have the "
    "View Channel, Send Messages, Embed Links and Attach Files permissions there "
    "(or to pick another channel with /settings)."
)


def cannot_post(channel_id: int | None) -> str:
    """What the member is told when the gallery post could not be made in a channel."""
    where = f"<#{channel_id}>" if channel_id else "the gallery channel"
    return f"I cannot post in {where}, so your result was not added to the gallery. {ASK_AN_ADMIN}"


def cannot_feature(channel_id: int, public_id: str) -> str:
    """What the member whose submission or vote should have featured an entry hears when that failed."""
    return (
        f"I cannot post in <#{channel_id}>, so {public_id} was not featured in the hall of fame. "
        f"{ASK_AN_ADMIN} The next vote for it tries again."
    )


def borrowed_text(borrowed: Borrowed) -> str:
    """Why a result made from someone else's painting cannot go in the gallery."""
    if borrowed.owner_id is not None:
        source = f"<@{borrowed.owner_id}>'s `{borrowed.public_id}`"
    elif borrowed.public_id:
        source = f"`{borrowed.public_id}`, which was deleted (so I cannot tell whose painting it was)"
    else:
        source = "a result that was deleted (so I cannot tell whose painting it was)"
    return f"That result {borrowed.relation} {source}; only your own paintings can go in the gallery."


# Artifact keys of jobs: ``jobs/<job id>/<attempt>/<role>`` (see bot.artifacts.job_key).
_JOB_KEY = re.compile(r"jobs/([0-9]{1,18})/.+")


def job_of_key(key: str) -> int | None:
    """The job that stored an artifact, from its key; None for keys no job made."""
    matched = _JOB_KEY.fullmatch(key)
    return int(matched[1]) if matched else None


def may_moderate(interaction: discord.Interaction, gallery_channel_id: int | None) -> bool:
    """Whether the member may take anyone's entry out of the gallery.

    Manage Server anywhere, or Manage Messages in the gallery channel itself: resolved there,
    not where the command was typed, since a channel's overwrite can grant Manage Messages
    in that one channel only. With no gallery channel, entries are posted where they were
    submitted, so Manage Messages must come from a role (the whole server).
    """
    if interaction.permissions.manage_guild or interaction.permissions.administrator:
        return True
    member, guild = interaction.user, interaction.guild
    if not isinstance(member, discord.Member) or guild is None:
        return False
    channel = guild.get_channel_or_thread(gallery_channel_id) if gallery_channel_id else None
    there = channel.permissions_for(member) if channel is not None else member.guild_permissions
    return bool(there.manage_messages or there.administrator)


async def delete_posts(bot: LatentPainterBot, posts: list[GalleryPost]) -> None:
    """Take the bot's gallery and hall-of-fame posts down; ones already gone are fine."""
    for post in posts:
        message = bot.get_partial_messageable(post.channel_id).get_partial_message(post.message_id)
        try:
            await message.delete()
        except discord.NotFound:
            pass  # deleted by hand already, or its channel was
        except discord.HTTPException as exc:
            log.warning("could not delete gallery post %s in %s: %s", post.message_id, post.channel_id, exc)


class GalleryCog(commands.Cog, name="Gallery"):
    """/gallery submit, /gallery show, votes and the hall of fame."""

    gallery = app_commands.Group(
        name="gallery", description="This server's gallery of paintings", guild_only=True
    )

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot

    # -- pictures ---------------------------------------------------------------------------

    async def picture(self, result: Result, limit: int, *, spoiler: bool = False) -> discord.File | None:
        """The result's final picture as an attachment of at most ``limit`` bytes (made smaller
        as delivery does when it is over), or None if its file is gone."""
        if not result.image_key:
            return None
        try:
            data = await asyncio.to_thread(self.bot.store.read_bytes, result.image_key)
        except FileNotFoundError:
            log.warning("result %s: image %s is missing from the store", result.public_id, result.image_key)
            return None
        suffix = ".png"
        if len(data) > limit:
            data, suffix = await asyncio.to_thread(shrink_picture, data, limit)
        return discord.File(io.BytesIO(data), filename=f"{result.public_id}{suffix}", spoiler=spoiler)

    # -- submit -----------------------------------------------------------------------------

    @gallery.command(name="submit", description="Put one of your results into this server's gallery")
    @app_commands.describe(result="The result's id (see /history)")
    async def submit_command(
        self, interaction: discord.Interaction, result: app_commands.Range[str, 1, 32]
    ) -> None:
        await self.submit(interaction, result)

    @submit_command.autocomplete("result")
    async def complete_own(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The member's own results whose id starts with, or prompt contains, what they typed."""
        from bot.cogs.transition import MAX_CHOICES, result_label
        from db.results import find_results

        own = await find_results(self.bot.db, current, owner_id=interaction.user.id, limit=MAX_CHOICES)
        return [app_commands.Choice(name=result_label(r), value=r.public_id) for r in own]

    async def submit(self, interaction: discord.Interaction, public_id: str) -> None:
        """Add the member's result to the gallery and post it (the button and the command).

        The entry is written first (so two clicks cannot post it twice) and taken out again
        when the post cannot be made, so a failed post leaves nothing behind to block a retry.
        """
        if interaction.guild_id is None:
            raise UserError("The gallery belongs to a server; use this in one.")
        rules = await rules_for(interaction)
        canonical = typed_id(public_id)
        target = rules.gallery_channel_id
        in_place = target is None or target == interaction.channel_id
        post_channel = interaction.channel_id if in_place else target
        await self.check_postable(interaction, canonical, post_channel, rules)
        try:
            entry = await submit(self.bot.db, interaction.guild_id, canonical, interaction.user.id)
        except ResultNotFound:
            raise UserError(f"Only the member who made {canonical} can add it to the gallery.") from None
        limit = upload_limit(self.bot, interaction)
        try:
            result = await get_result(self.bot.db, canonical)
            shown = await flagged_action(self.bot, result, interaction.guild_id, post_channel)
            if in_place:
                await defer_publicly(interaction)
                message_id = await self._post(interaction.followup, result, entry, shown, limit)
            else:
                assert target is not None
                await interaction.response.defer(thinking=True, ephemeral=True)
                channel = self.bot.get_partial_messageable(target, guild_id=interaction.guild_id)
                message_id = await self._post(channel, result, entry, shown, limit)
        except (Exception, asyncio.CancelledError) as exc:
            await discard_entry(self.bot.db, entry.id)
            if isinstance(exc, discord.Forbidden | discord.NotFound):
                log.warning(
                    "gallery post of %s in channel %s failed (%s %s); entry withdrawn",
                    canonical,
                    post_channel,
                    exc.status,
                    exc.code,
                )
                # Answered privately, also after a public "thinking…" (see common.answer).
                raise UserError(cannot_post(post_channel)) from None
            raise
        assert post_channel is not None
        if not await record_post(self.bot.db, entry.id, post_channel, message_id):
            # The result was deleted (or the entry removed) while the post was being made.
            await delete_posts(self.bot, [GalleryPost(post_channel, message_id)])
            raise UserError(f"{canonical} was taken out of the gallery meanwhile.")
        problem = None
        if rules.hall_of_fame_channel_id is not None and rules.hall_of_fame_votes is None:
            problem = await self.feature(rules, result, entry)
        if not in_place:
            done = f"{canonical} is in the gallery now: <#{target}>."
            await interaction.followup.send(f"{done}\n{problem}" if problem else done, ephemeral=True)
        elif problem:
            # The gallery post itself answered the command; this is for the member only.
            await interaction.followup.send(problem, ephemeral=True)

    async def check_postable(
        self, interaction: discord.Interaction, public_id: str, channel_id: int | None, rules: GuildRules
    ) -> None:
        """Refuse, before anything is written, the member's own result that the gallery may not show.

        A repaint or transition of another member's result is theirs as much as the member's
        (a repaint's final picture is its source's picture): refused, naming the source. A
        result the safety checker flagged is posted only where delivery would have shown it
        (as spoilers, in an age-restricted channel when the server allows that). Someone
        else's result is left to :func:`db.gallery.submit`, which refuses it.
        """
        try:
            result = await get_result(self.bot.db, public_id)
        except ResultNotFound:
            return
        if result.owner_id != interaction.user.id:
            return
        borrowed = await borrowed_source(self.bot.db, public_id, interaction.user.id, job_of_key=job_of_key)
        if borrowed is not None:
            log.info(
                "gallery submission of %s refused: made from %s of member %s",
                public_id,
                borrowed.public_id,
                borrowed.owner_id,
            )
            raise UserError(borrowed_text(borrowed))
        if await flagged_action(self.bot, result, interaction.guild_id, channel_id) == "refuse":
            log.info("gallery submission of %s refused: flagged by the safety checker", public_id)
            raise UserError(withheld(public_id, "added to the gallery", rules.flagged_results))

    # -- remove -----------------------------------------------------------------------------

    @gallery.command(name="remove", description="Take a result out of this server's gallery")
    @app_commands.describe(result="The result's id")
    async def remove_command(
        self, interaction: discord.Interaction, result: app_commands.Range[str, 1, 32]
    ) -> None:
        await self.remove(interaction, result)

    @remove_command.autocomplete("result")
    async def complete_removable(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """Entries the member may take out (all of them for a moderator) matching what they typed."""
        from bot.cogs.transition import MAX_CHOICES

        if interaction.guild_id is None:
            return []
        rules = await guild_rules(self.bot, interaction.guild_id)
        moderator = may_moderate(interaction, rules.gallery_channel_id)
        user_id = None if moderator else interaction.user.id
        items = await find_entries(
            self.bot.db, interaction.guild_id, current, user_id=user_id, limit=MAX_CHOICES
        )
        choices = []
        for item in items:
            prompt = item.result.prompt or ""
            label = one_line(f"{item.result.public_id} · {prompt}" if prompt else item.result.public_id, 100)
            choices.append(app_commands.Choice(name=label, value=item.result.public_id))
        return choices

    async def remove(self, interaction: discord.Interaction, public_id: str) -> None:
        """Take an entry out of the gallery, with its gallery and hall-of-fame posts.

        Allowed for its submitter, the result's owner, and members with Manage Messages in
        the gallery channel or Manage Server (:func:`may_moderate`); anyone else is refused
        ephemerally.
        """
        if interaction.guild_id is None:
            raise UserError("The gallery belongs to a server; use this in one.")
        canonical = typed_id(public_id)
        rules = await guild_rules(self.bot, interaction.guild_id)
        try:
            item = await remove_result(
                self.bot.db,
                interaction.guild_id,
                canonical,
                interaction.user.id,
                moderator=may_moderate(interaction, rules.gallery_channel_id),
            )
        except (EntryNotFound, GalleryError) as exc:
            text = str(exc)
            raise UserError(f"{text[:1].upper()}{text[1:]}.") from None
        await interaction.response.defer(thinking=True, ephemeral=True)
        await delete_posts(self.bot, posts_of(item.entry))
        log.info("gallery entry %s (%s) removed by %s", item.entry.id, canonical, interaction.user.id)
        await interaction.followup.send(f"{canonical} is out of this server's gallery.", ephemeral=True)

    async def _post(
        self,
        where: discord.abc.Messageable | discord.Webhook,
        result: Result,
        entry: GalleryEntry,
        shown: str,
        limit: int,
    ) -> int:
        """Post an entry with its picture (as ``shown`` allows) and vote button; returns the message id."""
        picture = None
        if shown != "refuse":
            budget = limit - min(MESSAGE_OVERHEAD, limit // 20)
            picture = await self.picture(result, budget, spoiler=shown == "spoiler")
        embed = entry_embed(
            result,
            entry,
            image_name=picture.filename if picture and shown == "deliver" else None,
            withheld_picture=shown == "refuse",
        )
        kwargs: dict = {
            "embed": embed,
            "view": vote_view(entry.id, entry.votes),
            "allowed_mentions": discord.AllowedMentions.none(),
        }
        if picture is not None:
            kwargs["file"] = picture
        if isinstance(where, discord.Webhook):
            message = await where.send(wait=True, **kwargs)
        else:
            message = await where.send(**kwargs)
        return message.id

    async def feature(self, rules: GuildRules, result: Result, entry: GalleryEntry) -> str | None:
        """Post an entry to the hall of fame, once (the database keeps which message did).

        Returns what to tell the member whose submission or vote featured it when the post
        could not be made (None when it was, or when there was nothing to do). The entry
        stays unfeatured then, so the next vote for it tries again.
        """
        if rules.hall_of_fame_channel_id is None or entry.hall_of_fame_message_id is not None:
            return None
        channel = self.bot.get_partial_messageable(rules.hall_of_fame_channel_id, guild_id=entry.guild_id)
        # The hall of fame may be a channel where a flagged picture is not shown: the entry is, without it.
        shown = await flagged_action(self.bot, result, entry.guild_id, channel.id)
        try:
            message_id = await self._post(
                channel, result, entry, shown, self.bot.settings.discord.upload_limit
            )
        except discord.HTTPException as exc:
            log.warning("hall of fame post of entry %s in %s failed: %s", entry.id, channel.id, exc)
            if isinstance(exc, discord.Forbidden | discord.NotFound):
                return cannot_feature(channel.id, result.public_id)
            return (
                f"{result.public_id} could not be posted to the hall of fame just now "
                "(Discord refused it); the next vote for it tries again."
            )
        if not await claim_hall_of_fame(self.bot.db, entry.id, message_id, channel.id):
            # Another vote featured it at the same moment (keep theirs), or the entry is gone.
            await delete_posts(self.bot, [GalleryPost(channel.id, message_id)])
        return None

    # -- votes ------------------------------------------------------------------------------

    async def vote(self, interaction: discord.Interaction, entry_id: int) -> None:
        """Toggle the member's vote on an entry, show the new count, and feature it if it qualifies.

        An entry qualifies with the server's threshold of votes, or with any vote when every
        submission is featured (one whose post failed, or that came before the hall of fame).
        """
        if interaction.guild_id is None:
            raise UserError("Votes belong to a server's gallery.")
        try:
            outcome = await toggle_vote(self.bot.db, interaction.guild_id, entry_id, interaction.user.id)
        except OwnEntryVote:
            raise UserError("You can't vote for your own entry.") from None
        if interaction.message is not None:
            await interaction.response.edit_message(
                view=with_vote_count(interaction.message, entry_id, outcome.votes)
            )
            said = "Vote counted." if outcome.voted else "Vote taken back."
            await interaction.followup.send(f"{said} The entry has {outcome.votes} now.", ephemeral=True)
        rules = await guild_rules(self.bot, interaction.guild_id)
        threshold = rules.hall_of_fame_votes
        if rules.hall_of_fame_channel_id is None or not outcome.voted:
            return
        if threshold is None or outcome.votes >= threshold:
            # By id: however many entries have more votes, this one is the one that qualified.
            try:
                item = await get_item(self.bot.db, interaction.guild_id, entry_id)
            except EntryNotFound:
                return  # removed since the vote
            problem = await self.feature(rules, item.result, item.entry)
            if problem:
                await answer(interaction, problem)

    # -- browsing ---------------------------------------------------------------------------

    @gallery.command(name="show", description="Browse this server's gallery")
    @app_commands.describe(sort="Newest first, or most votes first", page="Which page (5 entries a page)")
    @app_commands.choices(
        sort=[app_commands.Choice(name="newest", value="new"), app_commands.Choice(name="top", value="top")]
    )
    async def show(
        self,
        interaction: discord.Interaction,
        sort: str = "new",
        page: app_commands.Range[int, 1, MAX_PAGE] = 1,
    ) -> None:
        if sort not in ("new", "top"):
            raise UserError("Sort must be newest or top.")
        if not 1 <= page <= MAX_PAGE:
            raise UserError(f"Page must be from 1 to {MAX_PAGE}.")
        await interaction.response.defer(ephemeral=True, thinking=True)

        async def send(pictures: bool) -> None:
            rendered = await self.render(interaction, sort, page, pictures=pictures)
            await interaction.followup.send(ephemeral=True, **rendered)

        await self.without_pictures_if_too_large(send)

    async def turn_page(self, interaction: discord.Interaction, sort: str, page: int) -> None:
        """A page button of /gallery show."""
        await interaction.response.defer()

        async def edit(pictures: bool) -> None:
            rendered = await self.render(interaction, sort, max(1, page), pictures=pictures)
            rendered["attachments"] = rendered.pop("files")
            await interaction.edit_original_response(**rendered)

        await self.without_pictures_if_too_large(edit)

    @staticmethod
    async def without_pictures_if_too_large(send: Callable[[bool], Awaitable[None]]) -> None:
        """Send a page with its pictures; refused as too large (413), send it again without them.

        The pictures are fitted to the upload limit, but the limit the bot knows can be
        more than what Discord takes (a proxy in between, a server that lost its boosts).
        """
        try:
            await send(True)
        except discord.HTTPException as exc:
            if exc.status != 413:
                raise
            log.info("gallery page refused as too large (%s); sent without its pictures", exc.code)
            await send(False)

    async def render(
        self, interaction: discord.Interaction, sort: str, page: int, *, pictures: bool = True
    ) -> dict:
        """Embeds (one per entry, with its picture), files and buttons of one page.

        The pictures share the upload limit: each is fitted to its share. A flagged one
        appears as the server's policy has it in this channel (a spoiler, or not at all).
        """
        guild_id = interaction.guild_id
        if guild_id is None:
            raise UserError("The gallery belongs to a server; use this in one.")
        total = await count_entries(self.bot.db, guild_id)
        pages = max(1, math.ceil(total / PER_PAGE))
        page = min(page, pages)
        items: list[GalleryItem] = await browse(
            self.bot.db, guild_id, order=sort, limit=PER_PAGE, offset=(page - 1) * PER_PAGE
        )
        embeds: list[discord.Embed] = []
        files: list[discord.File] = []
        limit = upload_limit(self.bot, interaction)
        share = (limit - min(MESSAGE_OVERHEAD, limit // 20)) // max(1, len(items))
        for item in items:
            shown = await flagged_action(self.bot, item.result, guild_id, interaction.channel_id)
            picture = None
            if pictures and shown != "refuse":
                picture = await self.picture(item.result, share, spoiler=shown == "spoiler")
            if picture is not None:
                files.append(picture)
            embeds.append(
                entry_embed(
                    item.result,
                    item.entry,
                    image_name=picture.filename if picture and shown == "deliver" else None,
                    withheld_picture=shown == "refuse",
                )
            )
        if not embeds:
            embeds.append(
                discord.Embed(description="The gallery is empty. Add a result with /gallery submit.")
            )
        order = "most votes first" if sort == "top" else "newest first"
        footer = f"Page {page} of {pages} · {total} entries · {order}"
        if not pictures and items:
            footer += f" · {LEFT_OUT}"
        embeds[-1].set_footer(text=footer)
        view = gallery_view(
            [(i.entry.id, i.entry.votes, i.result.public_id) for i in items], sort, page, pages
        )
        return {"embeds": embeds, "files": files, "view": view}


async def setup(bot: LatentPainterBot) -> None:
    await bot.add_cog(GalleryCog(bot))

"""/history: the member's own results, newest first, paged with buttons, only for them to see."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import UserError, painter_bot
from bot.cogs.gallery import delete_posts
from bot.text import jump_link, quote, timestamp
from bot.views import history_view
from db.gallery import result_posts
from db.models import Result
from db.results import Page, ResultNotFound, delete_result, get_result, history
from painter.models import model_label

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.history")

PER_PAGE = 5
MAX_PAGE = 10_000


def describe_result(result: Result, *, in_dm: bool = False) -> str:
    """One result in a list: prompt, seed, effect, model, when it was made and a link to it.

    The link opens the message that delivered the result. A ``<#channel>`` mention does not
    render in direct messages (neither a DM channel's nor, shown in a DM, a server's), so
    there the link stands alone; rows from before messages were recorded link the channel.
    """
    lines = [
        quote(result.prompt, 200) or ("*a transition*" if result.kind == "transition" else "*no prompt*")
    ]
    facts = []
    if result.kind == "transition":
        facts.append(f"from {result.params.get('from_result', '?')} to {result.params.get('to_result', '?')}")
    if result.seed is not None:
        facts.append(f"seed {result.seed}")
    if result.effect:
        facts.append(result.effect)
    if result.model_id:
        facts.append(quote(model_label(result.model_id), 60))
    if result.width and result.height:
        facts.append(f"{result.width}x{result.height}")
    lines.append(" · ".join(facts))
    when = [timestamp(result.created_at)]
    if result.channel_id:
        mention = result.guild_id is not None and not in_dm
        if mention:
            when.append(f"in <#{result.channel_id}>")
        if result.message_id:
            when.append(f"· [open]({jump_link(result.guild_id, result.channel_id, result.message_id)})")
        elif not mention:
            where = "our direct messages" if result.guild_id is None else "its channel"
            when.append(f"in [{where}]({jump_link(result.guild_id, result.channel_id)})")
    lines.append(" ".join(when))
    return "\n".join(line for line in lines if line)


def history_embed(page: Page, user: discord.abc.User, *, in_dm: bool = False) -> discord.Embed:
    """The embed of one history page (``in_dm``: shown in direct messages)."""
    embed = discord.Embed(title="Your paintings", colour=discord.Colour.dark_teal())
    if not page.items:
        embed.description = "Nothing yet. Paint something with /paint!"
    for result in page.items:
        embed.add_field(
            name=f"`{result.public_id}`", value=describe_result(result, in_dm=in_dm), inline=False
        )
    embed.set_footer(text=f"Page {page.page} of {page.pages} · {page.total} in all · {user.name}")
    return embed


class HistoryCog(commands.Cog, name="History"):
    """/history and its page buttons."""

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot

    @app_commands.command(name="history", description="Your results, newest first")
    @app_commands.describe(page="Which page (5 results a page)")
    async def history(
        self, interaction: discord.Interaction, page: app_commands.Range[int, 1, MAX_PAGE] = 1
    ) -> None:
        if not 1 <= page <= MAX_PAGE:
            raise UserError(f"Page must be from 1 to {MAX_PAGE}.")
        embed, view = await self.render(interaction, page)
        await interaction.response.send_message(embed=embed, view=view, ephemeral=True)

    async def render(
        self, interaction: discord.Interaction, page: int
    ) -> tuple[discord.Embed, discord.ui.View]:
        """The embed and buttons of one page (the last page when ``page`` is past the end)."""
        bot = painter_bot(interaction)
        found = await history(bot.db, interaction.user.id, page=page, per_page=PER_PAGE)
        if page > found.pages:
            found = await history(bot.db, interaction.user.id, page=found.pages, per_page=PER_PAGE)
        in_dm = interaction.guild_id is None
        return history_embed(found, interaction.user, in_dm=in_dm), history_view(found.page, found.pages)

    async def turn_page(self, interaction: discord.Interaction, page: int) -> None:
        """A page button: show that page in the same (ephemeral) message."""
        embed, view = await self.render(interaction, max(1, page))
        await interaction.response.edit_message(embed=embed, view=view)

    async def delete_result_message(self, interaction: discord.Interaction, public_id: str) -> None:
        """The "Delete" button: the owner deletes the result, its files, gallery entries and message."""
        try:
            result = await get_result(self.bot.db, public_id)
        except (ValueError, ResultNotFound):
            raise UserError(f"Result {public_id} no longer exists.") from None
        if result.owner_id != interaction.user.id:
            raise UserError("Only the member who made it can delete it.")
        # Its gallery entries go with the row (the database cascades); their posts are
        # read first, to be taken down once the row is gone.
        posts = await result_posts(self.bot.db, result.id)
        try:
            keys = await delete_result(self.bot.db, result.public_id, interaction.user.id)
        except ResultNotFound:
            raise UserError(f"Result {public_id} no longer exists.") from None
        # The row is gone first, so no other command can hand out files being removed.
        for key in keys:
            self.bot.store.delete(key)
        # For a button, the original response is the message the button is on.
        await interaction.response.defer()
        await interaction.delete_original_response()
        await delete_posts(self.bot, posts)
        log.info(
            "result %s deleted by its owner %s (and %d gallery posts)",
            result.public_id,
            interaction.user.id,
            len(posts),
        )


async def setup(bot: LatentPainterBot) -> None:
    await bot.add_cog(HistoryCog(bot))

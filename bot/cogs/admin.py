"""/settings: per-server settings, for members with Manage Server only.

Discord hides the command from other members (``default_permissions``), but discord.py
does not check that permission on what arrives, so the command checks it again.
With no option given it shows the current settings. A gallery or hall-of-fame channel the
bot cannot post in is saved all the same (the admin may fix its permissions next), with a
warning saying what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import UserError, guild_rules
from bot.text import FIELD_VALUE_LIMIT, listed
from db.gallery import GalleryError, get_settings, update_settings
from db.models import GuildSettings

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

# What to do with a result the safety checker flagged.
FLAGGED_POLICIES = {
    "refuse": "refuse it (the member is told why)",
    "spoiler": "deliver it as spoilers, in age-restricted channels only",
}
# Where painting commands can be allowed: text channels, the text chat of voice and stage
# channels, and forums (their posts are threads, allowed with their forum).
PaintChannel = discord.TextChannel | discord.VoiceChannel | discord.StageChannel | discord.ForumChannel

# What the bot needs in the gallery and hall-of-fame channels to post an entry there.
POSTING_PERMISSIONS = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "embed_links": "Embed Links",
    "attach_files": "Attach Files",
}

# /settings reset choices → the stored setting they clear.
RESETTABLE = {
    "allowed channels": "allowed_channel_ids",
    "gallery channel": "gallery_channel_id",
    "hall of fame channel": "hall_of_fame_channel_id",
    "hall of fame votes": "hall_of_fame_votes",
    "queue cap": "per_user_cap",
    "max steps": "max_steps",
    "max side": "max_side",
}


def settings_embed(row: GuildSettings, bot: LatentPainterBot, flagged: str) -> discord.Embed:
    """The server's settings as members with Manage Server see them."""
    s = bot.settings
    # A field value holds 1,024 characters, about 43 channel mentions; over that Discord
    # refuses the whole message, so the rest are counted.
    channels = (
        listed([f"<#{c}>" for c in row.allowed_channel_ids or []], FIELD_VALUE_LIMIT) or "every channel"
    )

    def channel(value: int | None) -> str:
        return f"<#{value}>" if value else "not set"

    embed = discord.Embed(title="Latent Painter settings for this server", colour=discord.Colour.blurple())
    embed.add_field(name="Painting allowed in", value=channels, inline=False)
    embed.add_field(name="Gallery channel", value=channel(row.gallery_channel_id))
    embed.add_field(name="Hall of fame", value=channel(row.hall_of_fame_channel_id))
    votes = row.hall_of_fame_votes
    embed.add_field(name="Hall of fame after", value=f"{votes} votes" if votes else "every submission")
    embed.add_field(
        name="Jobs per member",
        value=str(row.per_user_cap or s.queue.per_user_cap) + ("" if row.per_user_cap else " (bot default)"),
    )
    embed.add_field(
        name="Max steps",
        value=str(row.max_steps or s.painter.max_steps) + ("" if row.max_steps else " (bot default)"),
    )
    embed.add_field(
        name="Largest picture side",
        value=f"{row.max_side or s.painter.max_side} px" + ("" if row.max_side else " (bot default)"),
    )
    embed.add_field(name="Flagged results", value=FLAGGED_POLICIES[flagged], inline=False)
    return embed


def posting_warnings(guild: discord.Guild | None, row: GuildSettings) -> list[str]:
    """Warnings about the gallery and hall-of-fame channels the bot cannot post in, as it now stands.

    Resolved from the bot's view of the server (its roles and the channels' overwrites).
    """
    if guild is None or guild.me is None:
        return []
    warnings = []
    for name, channel_id, consequence in (
        ("gallery", row.gallery_channel_id, "gallery submissions will be refused"),
        ("hall of fame", row.hall_of_fame_channel_id, "entries will not be featured"),
    ):
        if channel_id is None:
            continue
        channel = guild.get_channel_or_thread(channel_id)
        if channel is None:
            warnings.append(f"The {name} channel <#{channel_id}> no longer exists: {consequence}.")
            continue
        granted = channel.permissions_for(guild.me)
        missing = [label for flag, label in POSTING_PERMISSIONS.items() if not getattr(granted, flag)]
        if missing:
            warnings.append(
                f"I am missing {', '.join(missing)} in the {name} channel <#{channel_id}>: "
                f"until I have them there, {consequence}."
            )
    return warnings


class AdminCog(commands.Cog, name="Admin"):
    """/settings."""

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot

    @app_commands.command(name="settings", description="Server settings for Latent Painter (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.describe(
        allow_channel="Allow painting commands in this channel and its threads (none listed: everywhere)",
        disallow_channel="Stop allowing painting commands in this channel",
        gallery_channel="Where gallery submissions are posted",
        hall_of_fame_channel="Where the best gallery entries are featured",
        hall_of_fame_votes="Votes an entry needs to be featured (unset: featured when submitted)",
        queue_cap="Jobs one member may have waiting or running",
        max_steps="Most denoising steps a request may ask for",
        max_side="Largest picture side in pixels a request may ask for",
        flagged="What to do with results the safety checker flags",
        reset="Put one setting back to the bot's default",
    )
    @app_commands.choices(
        flagged=[app_commands.Choice(name=text, value=key) for key, text in FLAGGED_POLICIES.items()],
        reset=[app_commands.Choice(name=name, value=name) for name in RESETTABLE],
    )
    async def settings(
        self,
        interaction: discord.Interaction,
        allow_channel: PaintChannel | None = None,
        disallow_channel: PaintChannel | None = None,
        gallery_channel: discord.TextChannel | None = None,
        hall_of_fame_channel: discord.TextChannel | None = None,
        hall_of_fame_votes: app_commands.Range[int, 1, 100_000] | None = None,
        queue_cap: app_commands.Range[int, 1, 1000] | None = None,
        max_steps: app_commands.Range[int, 1, 500] | None = None,
        max_side: app_commands.Range[int, 64, 4096] | None = None,
        flagged: str | None = None,
        reset: str | None = None,
    ) -> None:
        guild_id = interaction.guild_id
        if guild_id is None:
            raise UserError("Settings belong to a server; use this command in one.")
        permissions = interaction.permissions
        if not (permissions.manage_guild or permissions.administrator):
            raise UserError("Only members with the Manage Server permission can change these settings.")
        row = await get_settings(self.bot.db, guild_id)
        changes: dict[str, Any] = {}
        allowed = list(row.allowed_channel_ids or [])
        if allow_channel is not None and allow_channel.id not in allowed:
            allowed.append(allow_channel.id)
        if disallow_channel is not None and disallow_channel.id in allowed:
            allowed.remove(disallow_channel.id)
        if allowed != list(row.allowed_channel_ids or []):
            changes["allowed_channel_ids"] = allowed
        if gallery_channel is not None:
            changes["gallery_channel_id"] = gallery_channel.id
        if hall_of_fame_channel is not None:
            changes["hall_of_fame_channel_id"] = hall_of_fame_channel.id
        for name, value, low, high in (
            ("hall_of_fame_votes", hall_of_fame_votes, 1, 100_000),
            ("per_user_cap", queue_cap, 1, 1000),
            ("max_steps", max_steps, 1, 500),
            ("max_side", max_side, 64, 4096),
        ):
            if value is not None:
                if not low <= value <= high:
                    raise UserError(f"{name.replace('_', ' ')} must be from {low} to {high}.")
                changes[name] = value
        if flagged is not None:
            if flagged not in FLAGGED_POLICIES:
                raise UserError(f"Flagged must be one of {', '.join(FLAGGED_POLICIES)}.")
            changes["flagged_results"] = flagged
        if reset is not None:
            if reset not in RESETTABLE:
                raise UserError(f"Reset must be one of {', '.join(RESETTABLE)}.")
            name = RESETTABLE[reset]
            changes[name] = [] if name == "allowed_channel_ids" else None
        if changes:
            try:
                row = await update_settings(self.bot.db, guild_id, interaction.user.id, **changes)
            except GalleryError as exc:
                raise UserError(str(exc)) from None
        rules = await guild_rules(self.bot, guild_id)
        note = "Saved." if changes else "Nothing changed; these are the current settings."
        warnings = posting_warnings(interaction.guild, row)
        if warnings:
            note = "\n".join([note, *(f"Warning: {warning}" for warning in warnings)])
        await interaction.response.send_message(
            note, embed=settings_embed(row, self.bot, rules.flagged_results), ephemeral=True
        )


async def setup(bot: LatentPainterBot) -> None:
    await bot.add_cog(AdminCog(bot))

"""/transition: animate one earlier result into another, from their stored trails.

``from`` and ``to`` autocomplete from the results the caller may use (their own, newest
first, then the server's gallery); the values are public result ids. Both results must
have a trail (transitions themselves have none) and share a VAE, since the plan mixes
their latents (paintings of the analytic painter pair only with each other). A result
the safety checker flagged is used only where delivery would show it (see
:func:`flagged_action`); the "Transition from this" form is answered by a listener, so
it works however late it is submitted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    UserError,
    check_can_post,
    guild_rules,
    no_trail,
    painter_bot,
    report_error,
    result_for_button,
    rules_for,
    start_job,
)
from bot.cogs.paint import effect_choices
from bot.config import EFFECTS
from bot.delivery import safety_action
from bot.text import CHOICE_NAME_LIMIT, one_line, quote
from bot.views import TRANSITION_MODAL, TransitionModal, submitted_values
from db.models import Result
from db.results import PUBLIC_ID_LENGTH, ResultNotFound, find_results, get_result, normalize_public_id

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.transition")

MAX_CHOICES = 25


def result_label(result: Result) -> str:
    """``K3F97QXM · a lighthouse at sunset`` (plain text: autocomplete shows no markdown)."""
    what = result.prompt or ("transition" if result.kind == "transition" else "untitled")
    return one_line(f"{result.public_id} · {what}", CHOICE_NAME_LIMIT)


async def usable_results(
    bot: LatentPainterBot, user_id: int, guild_id: int | None, typed: str = ""
) -> list[Result]:
    """Results the member may animate whose id or prompt matches ``typed``, newest first.

    Their own paintings and the server gallery's, only those with a trail, at most
    :data:`MAX_CHOICES`: filtered by the database, so older work is found by its prompt.
    """
    return await find_results(
        bot.db, typed, owner_id=user_id, gallery_guild_id=guild_id, with_trail=True, limit=MAX_CHOICES
    )


def typed_id(text: str, role: str | None = None) -> str:
    """The canonical result id in what a member typed, or :class:`UserError` quoting it inertly.

    ``role`` names the option (``from``) when a command has several.
    """
    try:
        return normalize_public_id(text)
    except ValueError:
        where = f"`{role}`: " if role else ""
        shown = quote(str(text).strip(), 60) or "that"
        raise UserError(
            f"{where}“{shown}” is not a result id; ids are {PUBLIC_ID_LENGTH} letters and digits "
            "like K3F97QXM (see /history)."
        ) from None


async def resolve_usable(
    bot: LatentPainterBot, interaction: discord.Interaction, text: str, role: str
) -> Result:
    """The result a member typed (or picked), if they may use it; :class:`UserError` otherwise."""
    public_id = typed_id(text, role)
    try:
        return await get_result(
            bot.db, public_id, viewer_id=interaction.user.id, guild_id=interaction.guild_id
        )
    except ResultNotFound:
        # In direct messages only the member's own results can be used: no gallery to pick from.
        where = " or one from this server's gallery" if interaction.guild_id is not None else ""
        raise UserError(
            f"`{role}`: no result you can use has that id. Pick one of yours (see /history){where}."
        ) from None


def is_flagged(result: Result) -> bool:
    """Whether the safety checker flagged the result (recorded in its params by the worker)."""
    return bool((result.params or {}).get("flagged"))


async def flagged_action(
    bot: LatentPainterBot, result: Result, guild_id: int | None, channel_id: int | None
) -> str:
    """How ``result``'s pictures may be shown in a channel: ``deliver``, ``spoiler`` or ``refuse``.

    Delivery's own rule (:func:`bot.delivery.safety_action`) with the server's flagged-results
    policy and the channel's age restriction, so what a member may reuse, post or browse
    is what they would have been shown when it was painted.
    """
    if not is_flagged(result):
        return "deliver"
    rules = await guild_rules(bot, guild_id)
    age_restricted = await bot.watcher.deliverer.age_restricted(channel_id)
    return safety_action(True, rules.flagged_results, age_restricted)


def withheld(public_id: str, use: str, policy: str) -> str:
    """Why a flagged result cannot be used here (``use``: "transitioned", "repainted", …)."""
    where = (
        " here: this server shows flagged results only in age-restricted channels."
        if policy == "spoiler"
        else "."
    )
    return f"{public_id} was flagged by the safety checker, so it cannot be {use}{where}"


async def refuse_if_withheld(interaction: discord.Interaction, result: Result, use: str) -> None:
    """Raise :class:`UserError` if ``result`` may not be shown where the interaction happened.

    A flagged result that may be shown here (as spoilers) is fine: what is made from it is
    flagged in turn (the worker reads the flag from its trail), so delivery treats it alike.
    """
    if not is_flagged(result):
        return
    bot = painter_bot(interaction)
    action = await flagged_action(bot, result, interaction.guild_id, interaction.channel_id)
    if action == "refuse":
        policy = (await guild_rules(bot, interaction.guild_id)).flagged_results
        log.info("result %s (flagged) refused as a source for user %s", result.public_id, interaction.user.id)
        raise UserError(withheld(result.public_id, use, policy))


# What a control does with its result → what a refusal says cannot be done to it.
BUTTON_USES = {"repaint": "repainted", "transition from": "transitioned"}


async def source_for_button(interaction: discord.Interaction, public_id: str, action: str) -> Result:
    """The result under a "Repaint with…" (``repaint``) or "Transition from this"
    (``transition from``) control, if it may be used here.

    The channel's rules and the member's access come first (as the controls' own checks
    have them), then the safety checker's verdict.
    """
    await rules_for(interaction)
    result = await result_for_button(interaction, public_id, action)
    await refuse_if_withheld(interaction, result, BUTTON_USES[action])
    return result


def check_pair(source: Result, destination: Result) -> None:
    """Refuse pairs a transition cannot be made of, saying why."""
    from painter.models import ANALYTIC_ID, model_label

    if source.id == destination.id:
        raise UserError("Pick two different results.")
    for result in (source, destination):
        if not result.trail_key:
            raise UserError(no_trail(result))
    analytic = [r for r in (source, destination) if r.model_id == ANALYTIC_ID]
    if len(analytic) == 1:
        painted, modelled = analytic[0], next(r for r in (source, destination) if r not in analytic)
        raise UserError(
            f"{painted.public_id} was painted without a model (the analytic painter, from a picture), "
            f"and such a painting can only transition to another one; {modelled.public_id} was made "
            "by a model. Pick two analytic paintings, or two results of models that share a VAE."
        )
    if source.vae_id != destination.vae_id:
        one, other = (quote(model_label(r.model_id), 100) for r in (source, destination))
        raise UserError(
            f"{source.public_id} ({one}) and {destination.public_id} "
            f"({other}) were painted with checkpoints whose VAEs differ, "
            "so their latents cannot be blended. Pick results from checkpoints that share a VAE."
        )


# Below this a transition barely unpaints the first picture (depth counts trail steps).
MIN_DEPTH = 0.05


class TransitionCog(commands.Cog, name="Transition"):
    """/transition and the "Transition from this" button's modal."""

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot

    @app_commands.command(name="transition", description="Animate one of your results into another")
    @app_commands.rename(source="from", destination="to")
    @app_commands.describe(
        source="The result to start from (its id)",
        destination="The result to end on (its id)",
        effect="How the change appears (default strokes)",
        depth="How far the first picture is taken back before the second is painted: 0.05-1 (default 1)",
        blend="Blend straight from one finished picture to the other instead (default no)",
    )
    @app_commands.choices(effect=effect_choices())
    async def transition(
        self,
        interaction: discord.Interaction,
        source: app_commands.Range[str, 1, 32],
        destination: app_commands.Range[str, 1, 32],
        effect: str | None = None,
        depth: app_commands.Range[float, MIN_DEPTH, 1.0] | None = None,
        blend: bool | None = None,
    ) -> None:
        await self.start(interaction, source, destination, effect, depth=depth, blend=bool(blend))

    @transition.autocomplete("source")
    @transition.autocomplete("destination")
    async def complete_result(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """The member's usable results whose id starts with, or prompt contains, what they typed."""
        results = await usable_results(self.bot, interaction.user.id, interaction.guild_id, current)
        return [app_commands.Choice(name=result_label(r), value=r.public_id) for r in results]

    async def open_modal(self, interaction: discord.Interaction, public_id: str) -> None:
        """ "Transition from this": ask for the destination, once the source is known usable.

        The checks come first so a member who may not use the result (or whose channel is
        not allowed, or who may not see it as the safety checker flagged it) is told so
        before typing a destination.
        """
        source = await source_for_button(interaction, public_id, "transition from")
        if not source.trail_key:
            raise UserError(no_trail(source))
        check_can_post(interaction)  # before the member types a destination
        await interaction.response.send_modal(TransitionModal(source.public_id))

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """A submitted "Transition from this" form, however long ago (or before which restart) it opened."""
        if interaction.type != discord.InteractionType.modal_submit:
            return
        data = interaction.data or {}
        matched = TRANSITION_MODAL.fullmatch(str(data.get("custom_id", "")))
        if matched is None:
            return
        try:
            destination = submitted_values(data).get("destination", "")
            await self.start(interaction, matched["rid"], destination, None)
        except Exception as exc:  # noqa: BLE001 - answered or logged
            await report_error(interaction, exc)

    async def start(
        self,
        interaction: discord.Interaction,
        source_id: str,
        destination_id: str,
        effect: str | None,
        *,
        depth: float | None = None,
        blend: bool = False,
    ) -> None:
        """Check both results and queue the transition."""
        bot = painter_bot(interaction)
        rules = await rules_for(interaction)
        effect = effect or bot.settings.painter.effect
        if effect not in EFFECTS:
            raise UserError(f"Unknown effect; pick one of {', '.join(EFFECTS)}.")
        # discord.py does not re-check an option's range on incoming interactions.
        if depth is not None and not MIN_DEPTH <= depth <= 1.0:
            raise UserError(f"Depth must be from {MIN_DEPTH} to 1.")
        source = await resolve_usable(bot, interaction, source_id, "from")
        destination = await resolve_usable(bot, interaction, destination_id, "to")
        check_pair(source, destination)
        # Both ends are shown in the animation: each must be one this channel may show.
        for result in (source, destination):
            await refuse_if_withheld(interaction, result, "transitioned")
        params = {
            "from_result": source.public_id,
            "to_result": destination.public_id,
            "from_trail": source.trail_key,
            "to_trail": destination.trail_key,
            "effect": effect,
            # Results of two sizes meet at the source's size: the destination is scaled to
            # cover it and centre-cropped (never stretched) when their shapes differ.
            "resize": (source.width, source.height) != (destination.width, destination.height),
        }
        if depth is not None:
            params["depth"] = depth
        if blend:
            params["interpolate"] = True
        if is_flagged(source) or is_flagged(destination):
            params["flagged"] = True
        await start_job(interaction, "transition", params, rules)


async def setup(bot: LatentPainterBot) -> None:
    await bot.add_cog(TransitionCog(bot))

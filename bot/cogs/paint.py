"""/paint: generate a picture and deliver its painting animation; "Repaint with…" on results.

The command's options come from the settings (step limit, sizes, checkpoints), so the
command is built when the cog is created rather than declared in the class body.
Discord's client enforces those bounds, but discord.py does not check them again on
what arrives, so every value is checked here too (a modified client can send anything).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import mimetypes
import unicodedata
from typing import TYPE_CHECKING, Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.cogs.common import (
    GuildRules,
    PreparingRequests,
    UserError,
    answer,
    check_can_post,
    defer_publicly,
    no_trail,
    painter_bot,
    result_for_button,
    rules_for,
    start_job,
)
from bot.config import EFFECTS, parse_sizes
from bot.text import quote
from bot.text import size as size_text
from db.queue import JobNotFound, QueueFull

# Imported with the cog, not on the first /paint: torch's first import takes seconds, and an
# interaction has 3 s for its first answer.
from painter.capture import CaptureError, check_img2img_steps
from painter.images import ImageInputError, check_dimensions, format_list, load_image, probe_image
from painter.models import model_label

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.paint")

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0
MIN_STRENGTH = 0.05
# Picture types Discord reports for attachments that /paint takes, and the decoder for each.
IMAGE_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
ACCEPTED = format_list(tuple(IMAGE_FORMATS.values()))  # "PNG, JPEG, WebP or GIF"
# Discord's limit on an option choice's name and value.
CHOICE_LIMIT = 100
# Letters that show as blank space (Hangul fillers, the blank Braille pattern); with format
# and control characters (zero-width spaces, bidi marks) they make an invisible prompt.
BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
EFFECT_HELP = {
    "strokes": "strokes: brush strokes, outline first (Latent Painter)",
    "glow": "glow: changes light up as they appear",
    "flip": "flip: cells flip to their final colour",
    "fade": "fade: a smooth cross-fade through the steps",
    "dissolve": "dissolve: cells dissolve in, busiest first",
    "sharpen": "sharpen: the plain denoising sequence",
}


def offered_models(bot_settings: Any) -> list[str]:
    """The checkpoints /paint offers: ``[discord] models``, or just ``[model] id``."""
    listed = [m.strip() for m in bot_settings.discord.models.split(",") if m.strip()]
    return list(dict.fromkeys(listed)) or [bot_settings.model.id]


def effect_choices() -> list[app_commands.Choice[str]]:
    return [app_commands.Choice(name=EFFECT_HELP[e], value=e) for e in EFFECTS]


def model_choice_value(model: str) -> str:
    """What the ``model`` choice sends for a checkpoint: its id, or a short hash of a long one.

    Discord refuses the whole command sync when a choice value passes 100 characters, and a
    local checkpoint path easily does. A hash of the id (not a list position) stays the same
    when ``[discord] models`` is reordered while a member's client still shows the old list.
    """
    if len(model) <= CHOICE_LIMIT:
        return model
    return "sha256:" + hashlib.sha256(model.encode()).hexdigest()[:16]


def model_choice_name(model: str) -> str:
    """The label of a checkpoint's choice: a local one by its folder's name (the server's
    paths are not for members); a long name keeps its end, the part that names it."""
    shown = model_label(model) or model
    return shown if len(shown) <= CHOICE_LIMIT else "…" + shown[-(CHOICE_LIMIT - 1) :]


def picture_label(filename: str) -> str:
    """How a refusal names the member's picture: its file name, inert in markdown."""
    return f"“{quote(filename, 80)}”"


def is_visible(text: str) -> bool:
    """Whether ``text`` has a character that shows (a letter, digit, mark of punctuation or symbol)."""
    return any(unicodedata.category(c)[0] in "LNPS" and c not in BLANK_LETTERS for c in text)


class PaintCog(commands.Cog, name="Paint"):
    """/paint and "Repaint with…"."""

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot
        settings = bot.settings
        self.sizes = parse_sizes(settings.discord.sizes)
        self.models = offered_models(settings)
        self.model_by_value = {model_choice_value(m): m for m in self.models}
        self.preparing = PreparingRequests()
        self.command = self._build_command()

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command, override=True)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)

    # -- the command ------------------------------------------------------------------

    def _build_command(self) -> app_commands.Command:
        s = self.bot.settings
        limit = s.discord.max_prompt_length
        P = inspect.Parameter
        parameters = [
            P("interaction", P.POSITIONAL_OR_KEYWORD, annotation=discord.Interaction),
            P("prompt", P.KEYWORD_ONLY, annotation=app_commands.Range[str, 1, limit]),
            P("effect", P.KEYWORD_ONLY, annotation=str, default=s.painter.effect),
            P(
                "negative",
                P.KEYWORD_ONLY,
                annotation=app_commands.Range[str, 1, limit] | None,
                default=None,
            ),
            P(
                "seed",
                P.KEYWORD_ONLY,
                annotation=app_commands.Range[int, 0, MAX_SEED] | None,
                default=None,
            ),
            P(
                "steps",
                P.KEYWORD_ONLY,
                annotation=app_commands.Range[int, 1, s.painter.max_steps] | None,
                default=None,
            ),
            P(
                "guidance",
                P.KEYWORD_ONLY,
                annotation=app_commands.Range[float, 0.0, MAX_GUIDANCE] | None,
                default=None,
            ),
            P("size", P.KEYWORD_ONLY, annotation=str | None, default=None),
        ]
        describe = {
            "prompt": "What to paint",
            "effect": "How the picture appears (default strokes)",
            "negative": "What to keep out of the picture",
            "seed": "Random seed, to paint the same picture again",
            "steps": f"Denoising steps (1-{s.painter.max_steps}; default {s.painter.steps})",
            "guidance": f"How closely to follow the prompt (default {s.painter.guidance:g})",
            "size": "Picture size in pixels (with an image: the shape closest to it, unless you pick one)",
            "image": f"Paint from this picture ({ACCEPTED}); it is cropped to the size's shape",
            "strength": "With an image: how much of it is repainted (0.05-1)",
        }
        choices: dict[str, list[app_commands.Choice[str]]] = {
            "effect": effect_choices(),
            "size": [app_commands.Choice(name=f"{w}x{h}", value=f"{w}x{h}") for w, h in self.sizes],
        }
        if len(self.models) > 1:
            parameters.append(P("model", P.KEYWORD_ONLY, annotation=str | None, default=None))
            describe["model"] = "Which checkpoint paints it"
            choices["model"] = [
                app_commands.Choice(name=model_choice_name(m), value=model_choice_value(m))
                for m in self.models[:25]
            ]
        parameters += [
            P("image", P.KEYWORD_ONLY, annotation=discord.Attachment | None, default=None),
            P(
                "strength",
                P.KEYWORD_ONLY,
                annotation=app_commands.Range[float, MIN_STRENGTH, 1.0] | None,
                default=None,
            ),
        ]
        cog = self

        async def paint(interaction: discord.Interaction, **options: Any) -> None:
            await cog.paint(interaction, **options)

        paint.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        paint = app_commands.describe(**describe)(paint)
        paint = app_commands.choices(**choices)(paint)
        return app_commands.Command(
            name="paint", description="Paint a picture and watch it appear stroke by stroke", callback=paint
        )

    async def paint(
        self,
        interaction: discord.Interaction,
        *,
        prompt: str,
        effect: str | None = None,
        negative: str | None = None,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        size: str | None = None,
        model: str | None = None,
        image: discord.Attachment | None = None,
        strength: float | None = None,
    ) -> None:
        """Check the request, queue it, and defer; the watcher takes it from there."""
        rules = await rules_for(interaction)
        check_can_post(interaction)  # before a picture is downloaded for nothing
        # Discord reports an image's size (not always: none for some formats); the decoded
        # picture's own size decides below when it differs (an EXIF rotation).
        picture_size = (
            (image.width, image.height) if image is not None and image.width and image.height else None
        )
        params = self.paint_params(
            rules,
            prompt=prompt,
            effect=effect,
            negative=negative,
            seed=seed,
            steps=steps,
            guidance=guidance,
            size=size,
            model=model,
            has_image=image is not None,
            strength=strength,
            picture_size=picture_size,
        )
        if image is None:
            await start_job(interaction, "paint", params, rules)
            return
        self.check_attachment(image)
        # The place is held from here until the job is queued, so requests sent at once
        # beyond the cap are refused before their pictures are downloaded.
        async with self.preparing.place(self.bot, interaction, rules):
            # Downloading may take longer than the 3 s Discord gives the first answer. A
            # problem found after this takes the "thinking…" message away (see common.answer).
            await defer_publicly(interaction)
            data = await self.download_attachment(image)
            # Decoded now, in a thread, so a picture the worker could not read is refused to
            # the member alone, before it is queued and announced in the channel.
            await asyncio.to_thread(
                self.check_picture, data, image.filename, params, rules, size_given=size is not None
            )
            key = params["image_key"] = await self.store_upload(interaction, image, data)
            params["image_name"] = image.filename[:255]
            try:
                await start_job(interaction, "paint", params, rules, already_deferred=True)
            except (UserError, QueueFull):
                # Refused before a job existed: nothing will ever read the picture.
                await asyncio.to_thread(self.bot.store.delete, key)
                raise

    def paint_params(
        self,
        rules: GuildRules,
        *,
        prompt: str,
        effect: str | None,
        negative: str | None,
        seed: int | None,
        steps: int | None,
        guidance: float | None,
        size: str | None,
        model: str | None,
        has_image: bool,
        strength: float | None,
        picture_size: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """The job parameters for a /paint request, or :class:`UserError` saying what to change.

        ``model`` is the choice's value (see :func:`model_choice_value`); ``picture_size`` the
        attached picture's width and height where known, to pick the size when none is given.
        """
        s = self.bot.settings
        limit = s.discord.max_prompt_length
        prompt = (prompt or "").strip()
        if not prompt:
            raise UserError("The prompt is empty: describe what to paint.")
        if not is_visible(prompt):
            # Zero-width spaces, bidi marks and the like: painted, the result would have a
            # title nobody can see. Refused for every model, as an empty prompt is.
            raise UserError("The prompt has no visible characters: describe what to paint.")
        if len(prompt) > limit:
            raise UserError(f"The prompt is {len(prompt)} characters long; the limit is {limit}.")
        if negative is not None and len(negative) > limit:
            raise UserError(f"The negative prompt is {len(negative)} characters long; the limit is {limit}.")
        if negative is not None and not is_visible(negative):
            negative = None  # nothing to keep out
        effect = effect or s.painter.effect
        if effect not in EFFECTS:
            raise UserError(f"Unknown effect {quote(effect, 50)}; pick one of {', '.join(EFFECTS)}.")
        if seed is not None and not 0 <= seed <= MAX_SEED:
            raise UserError(f"The seed must be from 0 to {MAX_SEED}.")
        if steps is not None and not 1 <= steps <= rules.max_steps:
            raise UserError(f"Steps must be from 1 to {rules.max_steps} here.")
        if guidance is not None and not 0.0 <= guidance <= MAX_GUIDANCE:
            raise UserError(f"Guidance must be from 0 to {MAX_GUIDANCE:g}.")
        width, height = self.pick_size(size, rules, picture_size if has_image else None)
        if model is not None:
            # A client may also send the checkpoint's id itself (the value of a short one).
            model = self.model_by_value.get(model, model if model in self.models else None)
            if model is None:
                raise UserError("Unknown model; pick one from the list.")
        if strength is not None and not has_image:
            raise UserError("Strength only applies when you attach an image to paint from.")
        if strength is not None and not MIN_STRENGTH <= strength <= 1.0:
            raise UserError(f"Strength must be from {MIN_STRENGTH:g} to 1.")
        chosen_model = model or self.models[0]
        if chosen_model == "analytic" and not has_image:
            raise UserError("The analytic painter paints a picture you give it: attach an image.")
        if has_image and chosen_model != "analytic":
            # SDEdit runs int(steps × strength) steps: none at all fails in the worker after
            # the job was queued and announced. (The analytic painter uses no strength.)
            used = s.painter.strength if strength is None else strength
            try:
                check_img2img_steps(steps or s.painter.steps, used)
            except CaptureError as exc:
                text = f"{str(exc)[:1].upper()}{str(exc)[1:]}."
                if math.ceil(1 / used - 1e-9) > rules.max_steps:
                    lowest = math.ceil(100 / rules.max_steps) / 100
                    text += f" Steps go up to {rules.max_steps} here: use a strength of at least {lowest:g}."
                raise UserError(text) from None
        params: dict[str, Any] = {
            "prompt": prompt,
            "negative_prompt": negative or None,
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "effect": effect,
            "model": model,
            "strength": strength,
        }
        return {k: v for k, v in params.items() if v is not None}

    def pick_size(
        self, size: str | None, rules: GuildRules, picture_size: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """The chosen size, within the server's limit.

        When none is chosen: with a picture, the offered size whose shape is closest to its
        own (it is cropped to that shape, so a 600x400 photo gets 768x512, not a square);
        otherwise the configured default.
        """
        s = self.bot.settings.painter
        default = (s.width, s.height) if (s.width, s.height) in self.sizes else self.sizes[0]
        if size is None and picture_size is not None and min(picture_size) > 0:
            allowed = [pair for pair in self.sizes if max(pair) <= rules.max_side]
            if allowed:
                aspect = math.log(picture_size[0] / picture_size[1])

                def fit(pair: tuple[int, int]) -> tuple[float, bool, int]:
                    # Closest shape first (rounded: 768x512 and 1536x1024 tie), then the
                    # default size, then the size nearest the default's pixel count.
                    off = round(abs(math.log(pair[0] / pair[1]) - aspect), 6)
                    return off, pair != default, abs(pair[0] * pair[1] - default[0] * default[1])

                return min(allowed, key=fit)
        if size is None:
            chosen = default
        else:
            try:
                chosen = next(pair for pair in self.sizes if f"{pair[0]}x{pair[1]}" == size)
            except StopIteration:
                offered = ", ".join(f"{w}x{h}" for w, h in self.sizes)
                raise UserError(f"Size must be one of {offered}.") from None
        if max(chosen) > rules.max_side:
            raise UserError(f"This server allows pictures up to {rules.max_side} pixels a side.")
        return chosen

    def check_attachment(self, image: discord.Attachment) -> None:
        """Refuse a picture by what Discord says about it, before a single byte is downloaded."""
        limit = self.bot.settings.discord.max_image_bytes
        content_type = (image.content_type or "").split(";")[0].strip().lower()
        if content_type not in IMAGE_FORMATS:
            kind = content_type or "a file of unknown type"
            raise UserError(f"The attachment is {quote(kind, 80)}; attach a {ACCEPTED} picture.")
        if image.size > limit:
            raise UserError(
                f"The picture is {size_text(image.size)}; the limit is {size_text(limit)}. "
                "Attach a smaller one."
            )
        if image.width and image.height:
            # A decompression bomb (a small file claiming a huge canvas) is refused here, unread.
            try:
                check_dimensions(
                    image.width, image.height, IMAGE_FORMATS[content_type], name=picture_label(image.filename)
                )
            except ImageInputError as exc:
                raise UserError(f"{exc}.") from None

    def check_picture(
        self, data: bytes, filename: str, params: dict[str, Any], rules: GuildRules, *, size_given: bool
    ) -> None:
        """Decode the downloaded picture as the worker will; pick the size from its shape if not given.

        Runs in a thread (a decode takes up to a second or two). Sets ``params``' width and
        height; raises :class:`UserError` for a picture that is damaged, truncated, too large
        or not one of the accepted formats.
        """
        label = picture_label(filename)
        formats = tuple(IMAGE_FORMATS.values())
        try:
            info = probe_image(data, name=label, formats=formats)
            if not size_given:
                params["width"], params["height"] = self.pick_size(None, rules, info.upright_size)
            load_image(data, params["width"], params["height"], name=label, formats=formats)
        except ImageInputError as exc:
            raise UserError(f"{exc}.") from None

    async def download_attachment(self, image: discord.Attachment) -> bytes:
        """The attachment's bytes, or :class:`UserError` when Discord will not give them."""
        limit = self.bot.settings.discord.max_image_bytes
        try:
            data = await image.read()
        except (TimeoutError, discord.HTTPException, aiohttp.ClientError) as exc:
            log.warning("could not download attachment %s: %s", image.id, exc)
            raise UserError("The picture could not be downloaded from Discord; attach it again.") from None
        if len(data) > limit:
            raise UserError(f"The picture is larger than {size_text(limit)}.")
        return data

    async def store_upload(
        self, interaction: discord.Interaction, image: discord.Attachment, data: bytes
    ) -> str:
        """Keep the downloaded picture in the artifact store for the worker; returns its key."""
        suffix = mimetypes.guess_extension((image.content_type or "").split(";")[0].strip()) or ".img"
        key = f"uploads/{interaction.user.id}/{interaction.id}{suffix}"
        await asyncio.to_thread(self.bot.store.put_bytes, key, data)
        return key

    # -- "Repaint with…" ------------------------------------------------------------------

    async def repaint(self, interaction: discord.Interaction, public_id: str, effect: str) -> None:
        """Paint a stored result's trail again with another effect: no new generation."""
        rules = await rules_for(interaction)
        if effect not in EFFECTS:
            raise UserError(f"Unknown effect; pick one of {', '.join(EFFECTS)}.")
        result = await result_for_button(interaction, public_id, "repaint")
        if not result.trail_key:
            raise UserError(no_trail(result))
        params = {
            "prompt": result.prompt or f"repaint of {result.public_id}",
            "negative_prompt": result.negative_prompt or None,
            "trail_key": result.trail_key,
            "from_result": result.public_id,
            "effect": effect,
            # A repaint of a flagged result is delivered (or withheld) as the result was.
            "flagged": True if (result.params or {}).get("flagged") else None,
        }
        await start_job(interaction, "paint", {k: v for k, v in params.items() if v is not None}, rules)

    # -- "Cancel" under a progress reply -------------------------------------------------

    async def cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        """Cancel a job from its progress reply: its requester, or a moderator of its server, may.

        A moderator is a member with Manage Messages in the channel or Manage Server, in the
        server the job was asked for; the announcement then says a moderator cancelled it.
        A queued job ends at once, a running one at the worker's next step. The reply is
        edited in the same answer (the click's own token, so this works after the command's
        token expired); the watcher then delivers the cancellation as for any finished job.
        """
        from bot.delivery import failure_text, job_title
        from bot.progress import heading

        bot = painter_bot(interaction)
        try:
            job = await bot.queue.get(job_id)
        except LookupError:
            raise UserError("That job no longer exists; there is nothing to cancel.") from None
        by_moderator = job.user_id != interaction.user.id
        if by_moderator and not moderates(interaction, job.guild_id):
            raise UserError(f"Only <@{job.user_id}>, who asked for it, can cancel this job.")
        if not job.is_live:
            what = {"done": "it has finished", "failed": "it has failed", "cancelled": "it was cancelled"}
            await interaction.response.edit_message(view=None)  # a stale button goes
            why = what.get(job.status, job.status)
            await answer(interaction, f"{job_title(job)} cannot be cancelled: {why} already.")
            return
        try:
            if by_moderator:
                job = await bot.queue.cancel(job_id, by_moderator=True)
            else:
                job = await bot.queue.cancel(job_id, user_id=interaction.user.id)
        except JobNotFound:
            raise UserError("That job no longer exists; there is nothing to cancel.") from None
        if job.status == "cancelled":
            text = failure_text(job)  # the same words the delivery will use
        elif job.is_live:
            text = "Cancelling: the job stops at its next step."
        else:  # it finished between the two reads
            await interaction.response.edit_message(view=None)
            await answer(interaction, f"{job_title(job)} finished before it could be cancelled.")
            return
        if by_moderator:
            log.info("job %s of user %s cancelled by moderator %s", job_id, job.user_id, interaction.user.id)
        else:
            log.info("job %s cancelled by its requester %s", job_id, interaction.user.id)
        await interaction.response.edit_message(
            content=f"{heading(job)}\n{text}",
            embeds=[],
            attachments=[],
            view=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        bot.watcher.wake()


def moderates(interaction: discord.Interaction, guild_id: int | None) -> bool:
    """Whether the member may stop others' jobs of ``guild_id``: Manage Messages here, or Manage Server.

    Only in that server: a job asked for elsewhere (or in a direct message) is its requester's.
    """
    if interaction.guild_id is None or guild_id != interaction.guild_id:
        return False
    # Resolved for this channel by Discord, overwrites included (an administrator has every bit).
    permissions = interaction.permissions
    return permissions.administrator or permissions.manage_messages or permissions.manage_guild


async def setup(bot: LatentPainterBot) -> None:
    await bot.add_cog(PaintCog(bot))

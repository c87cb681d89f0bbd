"""Getting results to people: the job watcher, delivery in place or in the channel, once.

The :class:`JobWatcher` follows every job this bot queued for an interaction (and, after
a restart, every job the database says is still owed an answer). While a job waits or
runs, it edits the deferred reply with progress (:mod:`bot.progress`); when the job ends,
:class:`Deliverer` answers:

- with an interaction follow-up while the interaction token is valid (15 minutes), else
  with a channel message that mentions the requester;
- a cancelled job only has its reply edited to say so (the member usually clicked Cancel
  themselves): a message follows only when the reply cannot be edited;
- ``allowed_mentions`` lets the message ping the requester and nobody else, whatever
  the prompt says;
- the files together fit the interaction's attachment limit (the job was rendered for
  it; a video that does not fit beside the pictures is re-encoded smaller);
- a result the safety checker flagged is refused, or sent as spoilers in an
  age-restricted channel, as the server chose.

Jobs are delivered once: the :class:`DeliveryLedger` records each delivered job id
before the watcher forgets it, so a restart (or a job finished by a worker process
elsewhere) is answered exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from PIL import Image

from bot.progress import Tracked, interaction_webhook, token_usable
from bot.text import jump_link, quote, seconds
from bot.worker import forget_input, member_message
from db.models import Job, Result, utcnow
from db.queue import MODERATOR_CANCEL
from db.results import result_for_job, set_result_message
from painter.models import model_label

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.delivery")

FINISHED = ("done", "failed", "cancelled")
# Jobs that ended longer ago than this are not delivered after a restart.
REDELIVERY_WINDOW = timedelta(days=1)
MAX_DELIVERY_ATTEMPTS = 5
VIDEO_TYPES = {"mp4": "video/mp4", "gif": "image/gif", "webp": "image/webp"}


# -- once ---------------------------------------------------------------------------------


class DeliveryLedger:
    """Job ids whose outcome was delivered, one per line in a file that only grows.

    The first line holds the time the ledger was started: jobs that ended before it were
    never this bot's to deliver (a database older than the bot), so they are not owed.

    Job ids only mean something within one database (a new or reset one starts again at
    1), so the bot keeps one ledger per database (:meth:`for_database`): a ledger of
    another database's ids would have every new job up to its last id skipped as
    "delivered". ``path`` None keeps the ledger in memory only (see :meth:`for_store`).
    """

    # The one ledger of versions before databases had ids: whose jobs it lists is unknown.
    LEGACY_NAME = "delivered.txt"

    def __init__(self, path: Path | None, *, since: datetime | None = None) -> None:
        """Open (or start, from ``since``, by default now) the ledger in the file ``path``."""
        self.path = path
        self._done: set[int] = set()
        if path is None:
            self.since = since or utcnow()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            tmp = path.with_name(path.name + ".new")
            tmp.write_text(f"# since {(since or utcnow()).isoformat()}\n")
            os.replace(tmp, path)
        lines = path.read_text().splitlines()
        self.since = datetime.fromisoformat(lines[0].removeprefix("# since ").strip())
        for line in lines[1:]:
            if line.strip().isdigit():
                self._done.add(int(line))

    @classmethod
    def for_database(cls, directory: Path, database_id: str) -> DeliveryLedger:
        """The ledger of the jobs of one database: ``directory/delivered-<database id>.txt``.

        An old ``delivered.txt`` (from before databases had ids) is not trusted: the data
        directory may have been moved to another database before this version started, and
        its ids would then skip this database's jobs forever. Only its time is taken, once:
        a new ledger starts from the last delivery it recorded (the file's modification
        time), so jobs that ended after that (while the bot was being upgraded, say) are
        still delivered; those it lists ended before and are not owed. It is then renamed
        ``delivered.txt.replaced`` so that no later ledger starts from that old time.
        """
        path = directory / f"delivered-{database_id}.txt"
        legacy = directory / cls.LEGACY_NAME
        if path.exists() or not legacy.is_file():
            return cls(path)
        last_delivery = datetime.fromtimestamp(legacy.stat().st_mtime, utcnow().tzinfo)
        ledger = cls(path, since=min(last_delivery, utcnow()))
        os.replace(legacy, legacy.with_name(f"{cls.LEGACY_NAME}.replaced"))
        log.info(
            "delivery ledger %s starts from %s (the last delivery %s recorded)", path, ledger.since, legacy
        )
        return ledger

    @classmethod
    def for_store(cls, directory: Path, store: Any) -> DeliveryLedger:
        """The ledger of the database the artifact ``store`` belongs to (its marker, which the
        bot's start-up check, :func:`bot.storage_identity.check_data_dir`, verified).

        A store without a marker (a bot made without that check) gets a ledger in memory
        only, with a warning: forgetting deliveries at a restart sends a result twice at
        worst, where trusting another database's ledger would send it never.
        """
        from bot.artifacts import LocalArtifactStore
        from bot.storage_identity import read_marker

        identity = read_marker(store.root) if isinstance(store, LocalArtifactStore) else None
        if identity is None:
            log.warning(
                "the artifact store has no database marker (the start-up check did not run): "
                "deliveries are remembered only until the bot stops"
            )
            return cls(None)
        return cls.for_database(directory, identity)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._done

    def record(self, job_id: int) -> None:
        """Write the job id down (flushed to disk) before the watcher lets the job go."""
        if job_id in self._done:
            return
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(f"{job_id}\n")
                handle.flush()
                os.fsync(handle.fileno())
        self._done.add(job_id)


# -- files --------------------------------------------------------------------------------


@dataclass
class Attachment:
    """A file to send, kept as bytes so a second attempt (the channel fallback) can send it again."""

    filename: str
    data: bytes
    description: str | None = None  # alt text, read out by screen readers
    role: str = ""  # "video", "final" or "heatmap": what a fallback may leave out

    def file(self, *, spoiler: bool = False) -> discord.File:
        return discord.File(
            io.BytesIO(self.data), filename=self.filename, spoiler=spoiler, description=self.description
        )


def refit_video(data: bytes, fmt: str, limit: int) -> bytes:
    """Re-encode a video that is over ``limit`` bytes to fit it (bitrate, then fps, then size)."""
    import imageio_ffmpeg

    from painter.video import fit_to_budget, probe_frames

    workdir = Path(tempfile.mkdtemp(prefix="latent-painter-fit-"))
    try:
        master = workdir / f"master.{fmt}"
        master.write_bytes(data)
        frames, duration = probe_frames(master)
        fps = frames / duration if duration > 0 else 24.0
        reader = imageio_ffmpeg.read_frames(str(master))
        width, height = next(reader)["size"]
        reader.close()
        out = workdir / f"fitted.{fmt}"
        fit_to_budget(
            master, out, fmt, fps=fps, frames=max(1, frames), width=width, height=height, max_bytes=limit
        )
        return out.read_bytes()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def shrink_picture(data: bytes, limit: int) -> tuple[bytes, str]:
    """A PNG over the limit becomes a JPEG of falling quality (then smaller) until it fits."""
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    quality = 90
    while True:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality, optimize=True)
        if buffer.tell() <= limit or (quality <= 40 and min(picture.size) <= 64):
            return buffer.getvalue(), ".jpg"
        if quality > 40:
            quality -= 15
        else:
            picture = picture.resize((max(1, picture.width * 7 // 10), max(1, picture.height * 7 // 10)))


# Room for the message itself in the upload (its JSON, the multipart boundaries and headers).
MESSAGE_OVERHEAD = 16 * 1024


def fitted_files(store: Any, result: Result, limit: int) -> list[Attachment]:
    """The result's animation, final picture and heatmap, together within ``limit`` bytes.

    Discord's attachment limit applies to the whole upload, not to each file. The pictures
    are small and come first (each at most a quarter of the limit, else made smaller); the
    animation gets what is left, re-encoded smaller if it is over that.
    """
    pid = result.public_id
    alt = alt_texts(result)

    def read(key: str) -> bytes | None:
        try:
            return store.read_bytes(key)
        except FileNotFoundError:
            log.error("result %s: artifact %s is missing from the store", pid, key)
            return None

    pictures: list[Attachment] = []
    for role, key in (("final", result.image_key), ("heatmap", result.heatmap_key)):
        if not key or (data := read(key)) is None:
            continue
        suffix = ".png"
        if len(data) > limit // 4:
            data, suffix = shrink_picture(data, limit // 4)
        pictures.append(Attachment(f"{role}-{pid}{suffix}", data, alt[role], role=role))
    budget = limit - sum(len(p.data) for p in pictures) - min(MESSAGE_OVERHEAD, limit // 20)
    if result.video_key and (data := read(result.video_key)) is not None:
        fmt = Path(result.video_key).suffix.lstrip(".").lower() or (result.format or "mp4")
        if len(data) > budget > 0:
            log.info("result %s: video of %d bytes re-fitted to %d", pid, len(data), budget)
            try:
                data = refit_video(data, fmt, budget)
            except Exception:
                log.exception("result %s: re-encoding the video failed", pid)
        if len(data) <= budget:
            return [Attachment(f"painting-{pid}.{fmt}", data, alt["video"], role="video"), *pictures]
        # The encoder's floor (5 fps at its smallest size) is still too big for this budget.
        log.warning("result %s: video does not fit in %d bytes even re-encoded; left out", pid, budget)
    return pictures


def alt_texts(result: Result) -> dict[str, str]:
    """What each delivered file shows, in words (Discord's alt text, at most 1,024 characters)."""
    effect = result.effect or "strokes"
    what = "transition" if result.kind == "transition" else "painting"
    prompt = f": {result.prompt[:900]}" if result.prompt and result.kind != "transition" else ""
    if effect == "strokes":
        heatmap = "Stroke heatmap: brighter where the brush went more often"
    else:
        heatmap = (
            f"Update heatmap of the {effect} effect: dark where paint came early, bright where it came late"
        )
    return {
        "video": f"Animation of the {what}, {effect} effect",
        "final": f"The finished picture{prompt}",
        "heatmap": heatmap,
    }


# -- what is said -------------------------------------------------------------------------


def result_embed(result: Result, image_name: str | None) -> discord.Embed:
    """The embed under a delivered result: what was asked for and what made it."""
    p = result.params or {}
    if result.kind == "transition":
        title = f"Transition {p.get('from_result', '?')} → {p.get('to_result', '?')}"
    else:
        title = "Painting"
    embed = discord.Embed(
        title=title, description=quote(result.prompt, 1000) or None, colour=discord.Colour.teal()
    )
    if result.negative_prompt:
        embed.add_field(name="Negative prompt", value=quote(result.negative_prompt, 300), inline=False)
    facts: list[tuple[str, Any]] = [
        ("Seed", result.seed),
        ("Steps", result.steps),
        ("Guidance", f"{result.guidance:g}" if result.guidance is not None else None),
        ("Size", f"{result.width}x{result.height}" if result.width and result.height else None),
        # A local checkpoint by its folder's name: the server's paths are not for members.
        ("Model", quote(model_label(result.model_id), 100) if result.model_id else None),
        ("Effect", result.effect),
        ("Result id", f"`{result.public_id}`"),
    ]
    for name, value in facts:
        if value is not None and value != "":
            embed.add_field(name=name, value=str(value), inline=True)
    if image_name:
        embed.set_image(url=f"attachment://{image_name}")
    return embed


def safety_action(flagged: bool, policy: str, age_restricted: bool) -> str:
    """``deliver``, ``spoiler`` or ``refuse`` for a result, from the server's flagged-results policy."""
    if not flagged:
        return "deliver"
    if policy == "spoiler" and age_restricted:
        return "spoiler"
    return "refuse"


def job_title(job: Job) -> str:
    """What the member asked for, in their words (escaped): ``Your painting “a red boat”``."""
    p = job.params or {}
    if job.kind == "transition":
        source, destination = (quote(p.get(k) or "?", 20) for k in ("from_result", "to_result"))
        return f"Your transition {source} → {destination}"
    prompt = quote(p.get("prompt"), 200)
    if p.get("trail_key"):
        effect = quote(p.get("effect") or "strokes", 20)
        return f"Your repaint with {effect} of “{prompt}”" if prompt else f"Your repaint with {effect}"
    return f"Your painting “{prompt}”" if prompt else "Your painting"


def member_fault(job: Job) -> bool:
    """Whether the job failed because of the member's own request (told to them privately)."""
    return job.status == "failed" and member_message(job.error) is not None


def failure_text(job: Job) -> str:
    """Why a job ended without a result, for the member: their own mistake in full, ours briefly.

    Never the job's database id (members never see it) nor our internals: a storage key,
    a path or a model's name stays in the job's error column and the log. A job a server
    moderator cancelled says so (the note survives a restart: it is in the job's row).
    """
    title = job_title(job)
    if job.status == "cancelled":
        by_moderator = job.error == MODERATOR_CANCEL
        return f"{title} was cancelled by a moderator." if by_moderator else f"{title} was cancelled."
    mine = member_message(job.error)
    if mine is not None:
        return f"{title} could not be painted: {quote(mine, 600)}. It will not be retried."
    # A permanent error of ours was not retried: "after 1 attempt" would say nothing.
    when = f" after {job.attempts} attempts" if job.attempts > 1 else ""
    return (
        f"{title} failed on our side{when} and will not be retried. "
        "It has been logged; please try again later."
    )


# What each file is called when it has to be left out, in the order a message refused as
# too large (413) sheds them: the animation first, the final picture last.
LEFT_OUT_NAMES = {"video": "the animation", "heatmap": "the heatmap", "final": "the final picture"}


def too_large_note(roles: Iterable[str]) -> str:
    """``The animation is too large to attach here.`` for the files left out, said once."""
    names = [LEFT_OUT_NAMES[r] for r in LEFT_OUT_NAMES if r in set(roles)]
    if not names:
        return ""
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    verb = "is" if len(names) == 1 else "are"
    return f"{listed[0].upper()}{listed[1:]} {verb} too large to attach here."


SPOILER_NOTE = "It was flagged by the safety checker, so it is shown as spoilers."


@dataclass
class Outcome:
    """One message to deliver: a status line for the reply, and the message itself."""

    status: str
    content: str
    embed: discord.Embed | None = None
    files: tuple[Attachment, ...] = ()
    spoiler: bool = False
    view: discord.ui.View | None = None
    notes: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()  # roles of files too large to attach
    result_id: int | None = None  # the result row the message delivers
    public_id: str | None = None  # and its id, as members know it
    # The reply's last words once the message is out: the status line with a link to it.
    done: str | None = None
    private: bool = False  # the member's own mistake: told only to them (ephemeral)
    replaces_reply: bool = False  # once sent, the reply (a stale status line) is deleted
    # The status line in the reply says it all (a cancellation, usually the member's own
    # click): the message is sent only when the reply cannot be edited.
    reply_only: bool = False

    @property
    def text(self) -> str:
        """The message's content: what happened, notes, and (once) what was too large."""
        flagged = SPOILER_NOTE if self.spoiler else ""
        parts = (self.content, flagged, *self.notes, too_large_note(self.left_out))
        return " ".join(part for part in parts if part)

    def without_files(self, note: str) -> Outcome:
        """The same message with no files at all, saying why in ``note``."""
        embed = self.embed
        if embed is not None and embed.image:
            embed = embed.copy()
            embed.set_image(url=None)  # it pointed at an attachment
        return replace(self, embed=embed, files=(), left_out=(), notes=(*self.notes, note))

    def without(self, role: str) -> Outcome:
        """The same message with one more kind of file left out as too large."""
        embed = self.embed
        if role == "final" and embed is not None and embed.image:
            embed = embed.copy()
            embed.set_image(url=None)  # it pointed at the attachment that is left out
        return replace(self, embed=embed, left_out=(*self.left_out, role))


# -- delivery -----------------------------------------------------------------------------


def done_in(job: Job) -> str:
    """``Done in about 40 s``: from the request to the finished result, as the member waited."""
    if job.finished_at is None or job.created_at is None:
        return "Done"
    return f"Done in {seconds((job.finished_at - job.created_at).total_seconds())}"


class Deliverer:
    """Sends each finished job's outcome where its requester will see it."""

    def __init__(self, bot: LatentPainterBot) -> None:
        self.bot = bot

    async def outcome(self, job: Job) -> Outcome:
        """What to tell the requester about a finished job."""
        mention = f"<@{job.user_id}>"
        if job.status != "done":
            text = failure_text(job)
            if member_fault(job):
                return Outcome(status=text, content=text, private=True)
            failed = job.status == "failed"
            return Outcome(
                status=text,
                content=f"{mention} {text}",
                replaces_reply=failed,
                reply_only=job.status == "cancelled",
            )
        result = await result_for_job(self.bot.db, job.id)
        if result is None:
            log.error("job %s is done but has no result row", job.id)
            return Outcome(
                status="Failed: the result went missing.", content=f"{mention} Job {job.id} lost its result."
            )
        flagged = bool((result.params or {}).get("flagged"))
        action = "deliver"
        if flagged:
            from bot.cogs.common import guild_rules

            rules = await guild_rules(self.bot, job.guild_id)
            action = safety_action(True, rules.flagged_results, await self.age_restricted(job.channel_id))
        if action == "refuse":
            log.info("job %s: result %s flagged by the safety checker; withheld", job.id, result.public_id)
            text = f"Result `{result.public_id}` was flagged by the safety checker and is not shown" + (
                " here (this server shows flagged results only in age-restricted channels)."
                if flagged
                else "."
            )
            return Outcome(status=text, content=f"{mention} {text}")
        limit = int(job.params.get("max_bytes") or self.bot.settings.discord.upload_limit)
        files = await asyncio.to_thread(fitted_files, self.bot.store, result, limit)
        spoiler = action == "spoiler"
        image_name = next((f.filename for f in files if f.filename.startswith("final-")), None)
        from bot.views import result_view

        what = "transition" if result.kind == "transition" else "painting"
        notes = fit_notes(result)
        left_out: tuple[str, ...] = ()
        if result.video_key and not any(f.role == "video" for f in files):
            left_out = ("video",)
        return Outcome(
            # Not "below": in a busy channel other messages come between.
            status=f"Done: result `{result.public_id}`.",
            content=f"{mention} your {what} `{result.public_id}` is ready.",
            embed=result_embed(result, None if spoiler else image_name),
            files=tuple(files),
            spoiler=spoiler,
            view=result_view(
                result.public_id, in_guild=job.guild_id is not None, has_trail=bool(result.trail_key)
            ),
            notes=tuple(notes),
            left_out=left_out,
            result_id=result.id,
            public_id=result.public_id,
            done=f"{done_in(job)}: result `{result.public_id}`.",
        )

    async def age_restricted(self, channel_id: int | None) -> bool:
        """Whether the channel is age-restricted (NSFW); unknown channels count as not."""
        if channel_id is None:
            return False
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException:
                return False
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw()) if callable(is_nsfw) else False

    def _message(self, outcome: Outcome, job: Job, *, files: Iterable[Attachment]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "content": outcome.text,
            "allowed_mentions": discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(job.user_id)], replied_user=False
            ),
            "files": [f.file(spoiler=outcome.spoiler) for f in files],
        }
        if outcome.embed is not None:
            kwargs["embed"] = outcome.embed
        if outcome.view is not None:
            kwargs["view"] = outcome.view
        return kwargs

    async def deliver(self, job: Job, tracked: Tracked | None = None) -> bool:
        """Deliver a finished job's outcome; True once it needs no further attempt."""
        outcome = await self.outcome(job)
        files = list(outcome.files)
        if tracked is None or not tracked.token_dead:
            if token_usable(job):
                if outcome.private:
                    if await self._privately(job, outcome):
                        return True
                elif await self._in_place(job, outcome, files):
                    return True
        if outcome.private:
            # The channel is the only way left: a message that mentions only the requester.
            outcome = replace(outcome, content=f"<@{job.user_id}> {outcome.content}")
        return await self._in_channel(job, outcome, files)

    async def _privately(self, job: Job, outcome: Outcome) -> bool:
        """The member's own mistake, for their eyes only; False when the token no longer works.

        The deferred reply is public, so it goes first (as :func:`bot.cogs.common.answer`
        does): while it is still "thinking…" a follow-up would replace it and be public too.
        """
        assert job.interaction_token is not None
        webhook = interaction_webhook(self.bot, job.interaction_token)
        # It is the interaction's webhook; discord.py sends ephemeral messages only from one
        # it knows to be an application's (a partial webhook is taken for an incoming one).
        webhook.type = discord.WebhookType.application
        try:
            await webhook.delete_message("@original")  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            if exc.status == 401:
                return False
            log.info("job %s: reply not deletable (%s %s)", job.id, exc.status, exc.code)
        try:
            await webhook.send(
                content=outcome.text,
                ephemeral=True,
                wait=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException as exc:
            if exc.status in (401, 404):
                return False
            raise
        log.info("job %s: its failure was told to the requester privately", job.id)
        return True

    async def _in_place(self, job: Job, outcome: Outcome, files: list[Attachment]) -> bool:
        """The interaction follow-up; False when the token no longer works (use the channel).

        An outcome told by the reply alone (``reply_only``) sends the follow-up only when
        the reply could not be edited (deleted, say).
        """
        assert job.interaction_token is not None
        webhook = interaction_webhook(self.bot, job.interaction_token)
        try:
            # The reply becomes a status line first, so the follow-up is always a new
            # message (one that notifies the requester) whether or not progress was shown.
            await webhook.edit_message(  # type: ignore[arg-type]
                "@original",
                content=outcome.status,
                embeds=[],
                attachments=[],
                view=None,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException as exc:
            if exc.status == 401:
                return False
            # 404: the reply was deleted; a follow-up still works.
            log.info("job %s: reply not editable (%s %s)", job.id, exc.status, exc.code)
        else:
            if outcome.reply_only:
                # A follow-up would repeat the reply and ping the member for their own click.
                log.info("job %s: its reply says how it ended", job.id)
                return True
        try:
            message = await self._send_fitting(
                lambda **kwargs: webhook.send(wait=True, **kwargs), job, outcome, files
            )
        except discord.HTTPException as exc:
            if exc.status in (401, 404):
                log.info(
                    "job %s: follow-up refused (%s %s); posting in the channel", job.id, exc.status, exc.code
                )
                return False
            raise
        log.info("job %s delivered as an interaction follow-up", job.id)
        await self._remember(outcome, message.id)
        if outcome.done is not None and job.channel_id is not None:
            # In a busy channel other messages come between the reply and the result.
            link = jump_link(job.guild_id, job.channel_id, message.id)
            try:
                await webhook.edit_message(  # type: ignore[arg-type]
                    "@original",
                    content=f"{outcome.done} [Open it]({link})",
                    allowed_mentions=discord.AllowedMentions.none(),
                )
            except discord.HTTPException as exc:  # the status line without its link is enough
                log.info("job %s: reply not linked to its result (%s %s)", job.id, exc.status, exc.code)
        if outcome.replaces_reply:
            # One message says it all: the status line above it would only repeat it.
            try:
                await webhook.delete_message("@original")  # type: ignore[arg-type]
            except discord.HTTPException as exc:  # 404: gone already; anything else: it stays
                log.info("job %s: reply not deleted (%s %s)", job.id, exc.status, exc.code)
        return True

    async def _in_channel(self, job: Job, outcome: Outcome, files: list[Attachment]) -> bool:
        """A channel message mentioning the requester (the token expired or failed).

        Where the bot may not attach files, the message goes without them; where it may not
        post at all (or the channel is gone), the requester gets a direct message instead.
        """
        if job.channel_id is None:
            log.warning("job %s has no channel to deliver to; dropped", job.id)
            return True
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            message = await self._send_fitting(channel.send, job, outcome, files)
        except discord.HTTPException as exc:
            if exc.status not in (403, 404):
                raise
            log.warning(
                "job %s: cannot post in channel %s (%s %s)", job.id, job.channel_id, exc.status, exc.code
            )
            refusal = f"{exc.status} {exc.code}"
            message = None
            if exc.status == 403 and files:
                # Discord answers a missing Attach Files with the same 403 as a missing Send
                # Messages: the message without its files tells which it was.
                try:
                    message = await self._without_files(channel, job, outcome)
                except discord.HTTPException as again:
                    if again.status not in (403, 404):
                        raise
                    refusal = f"{again.status} {again.code}"
            if message is None:
                return await self._directly(job, outcome, files, refusal)
        log.info("job %s delivered as a channel message in %s", job.id, job.channel_id)
        await self._remember(outcome, message.id)
        return True

    async def _without_files(
        self, channel: discord.PartialMessageable, job: Job, outcome: Outcome
    ) -> discord.Message:
        """The channel message without its attachments, saying where the result can be found."""
        where = f"result `{outcome.public_id}`" if outcome.public_id else "it"
        bare = outcome.without_files(
            f"I'm not allowed to attach files in this channel, so they are left out; "
            f"find {where} in /history."
        )
        message = await channel.send(**self._message(bare, job, files=()))
        log.info("job %s: posted without its files in channel %s", job.id, job.channel_id)
        return message

    async def _directly(self, job: Job, outcome: Outcome, files: list[Attachment], refusal: str) -> bool:
        """A direct message to the requester, whose channel refused the message (``refusal``).

        Sent without the controls (they act in a server) and without a flagged result's
        pictures (a direct message is no age-restricted channel). When the member's privacy
        settings refuse it too, that is logged: the result stays in /history.
        """
        assert job.channel_id is not None
        channel_link = jump_link(job.guild_id, job.channel_id)
        notes = [f"I'm not allowed to post in [the channel you asked in]({channel_link}), so it comes here."]
        if outcome.spoiler:
            notes.append("It was flagged by the safety checker, so it is not shown in a direct message.")
            files = []
        notes.extend(outcome.notes)
        if outcome.public_id:
            notes.append(f"You can find result `{outcome.public_id}` in /history.")
        content = outcome.content.removeprefix(f"<@{job.user_id}> ")  # no one to ping in a DM
        direct = replace(
            outcome,
            content=content[:1].upper() + content[1:],
            notes=tuple(notes),
            spoiler=False,
            view=None,
        )
        try:
            dm = await self.bot.create_dm(discord.Object(job.user_id))
            await self._send_fitting(dm.send, job, direct, files)
        except discord.HTTPException as exc:
            if exc.status not in (400, 403, 404):
                raise
            log.warning(
                "job %s: result %s not delivered: channel %s refused it (%s) and user %s takes no "
                "direct messages from the bot (%s %s); it stays in /history",
                job.id,
                outcome.public_id,
                job.channel_id,
                refusal,
                job.user_id,
                exc.status,
                exc.code,
            )
            return True
        # Not recorded as the result's message: /history links to messages in its channel.
        log.info(
            "job %s delivered by direct message (channel %s refused it: %s)", job.id, job.channel_id, refusal
        )
        return True

    async def _send_fitting(
        self,
        send: Callable[..., Awaitable[discord.Message]],
        job: Job,
        outcome: Outcome,
        files: list[Attachment],
    ) -> discord.Message:
        """Send the message; refused as too large (413), send it again with fewer files.

        Discord's limit is on the whole upload, so each file fitting is not enough. The
        files go by kind, not position: the animation first (it may be absent already),
        then the heatmap, then the final picture; the message says once what was left out.
        """
        while True:
            try:
                return await send(**self._message(outcome, job, files=files))
            except discord.HTTPException as exc:
                role = next((r for r in LEFT_OUT_NAMES if any(f.role == r for f in files)), None)
                if exc.status != 413 or role is None:
                    raise
                log.info(
                    "job %s: message refused as too large (%s); leaving out the %s", job.id, exc.code, role
                )
                outcome = outcome.without(role)
                files = [f for f in files if f.role != role]

    async def _remember(self, outcome: Outcome, message_id: int) -> None:
        """Record which message delivered the result (for /history's links)."""
        if outcome.result_id is None:
            return
        try:
            await set_result_message(self.bot.db, outcome.result_id, message_id)
        except Exception:  # noqa: BLE001 - the result is delivered; a lost link is no reason to resend
            log.exception("result %s: could not record its message %s", outcome.result_id, message_id)


# -- the watcher --------------------------------------------------------------------------


class JobWatcher:
    """Follows jobs from queued to delivered: progress edits while live, one delivery at the end."""

    def __init__(self, bot: LatentPainterBot, ledger: DeliveryLedger, *, tick_seconds: float = 1.0) -> None:
        from bot.progress import PreviewBox, ProgressReporter

        self.bot = bot
        self.ledger = ledger
        self.tick_seconds = tick_seconds
        self.previews = PreviewBox()
        self.progress = ProgressReporter(bot, self.previews)
        self.deliverer = Deliverer(bot)
        self.tracked: dict[int, Tracked] = {}
        self.heartbeat_path = bot.settings.data_dir / "bot.heartbeat"
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # One task per job at a time, so one member's rate limit (discord.py waits out a
        # 429 inside the call) or a slow upload holds up nobody else's job.
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._delivering: set[int] = set()
        self._next_round = 0.0  # time.monotonic() of the next progress round

    def track(self, job_id: int) -> None:
        """Follow a job queued for an interaction this bot has acknowledged."""
        self.tracked.setdefault(job_id, Tracked(job_id))
        self.wake()

    def wake(self) -> None:
        """Look at the tracked jobs now rather than at the next tick."""
        self._wake.set()

    async def start(self) -> None:
        """Pick up jobs still owed an answer from before a restart, then start the loop."""
        await self.recover()
        self._task = asyncio.create_task(self._run(), name="latent-painter-job-watcher")

    async def stop(self, grace: float = 30.0) -> None:
        """Let the current deliveries finish (so they are recorded), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job_id, task in list(self._jobs.items()):
            if job_id not in self._delivering:
                task.cancel()  # a progress edit: nobody needs it now
        if self._jobs:
            done, pending = await asyncio.wait(list(self._jobs.values()), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    async def recover(self) -> None:
        """Track every job made from Discord that is live, or ended and is not yet delivered.

        Paged through oldest first and with no cap: after a restart with a long queue, the
        oldest waiting jobs are the next to run, and each must be followed to its delivery.
        """
        cutoff = max(self.ledger.since, utcnow() - REDELIVERY_WINDOW)
        found = 0
        for statuses, since in ((("queued", "running"), None), (FINISHED, cutoff)):
            after = 0
            while page := await self.bot.queue.jobs_after(after, statuses=statuses, finished_since=since):
                after = page[-1].id
                for job in page:
                    if job.channel_id is None or job.id in self.ledger or job.id in self.tracked:
                        continue
                    self.tracked[job.id] = Tracked(job.id)
                    found += 1
        if found:
            log.info("following %d job(s) left from before the restart", found)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
            except Exception:
                log.exception("job watcher: a tick failed; carrying on")
            self._beat()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)

    def _beat(self) -> None:
        # `latent-painter health` (the Docker HEALTHCHECK) reads this file's age.
        if self.bot.is_closed() or not self.bot.is_ready():
            return
        with contextlib.suppress(OSError):
            self.heartbeat_path.write_text(f"{time.time():.0f}\n")

    async def tick(self) -> None:
        """Start a progress edit for each live job and a delivery for each finished one.

        The tracked jobs are read together (one query per few hundred), not one by one.
        Replies are looked at in rounds, every ``progress_seconds``, and in between only
        for jobs whose own state changed (claimed, a step further, cancelled, retried):
        what the queue around a job does moves its place and ETA, and that waits for the
        round. A round reads the queue once (:meth:`~db.queue.JobQueue.snapshot`) for all
        the replies due; a reply whose text did not change starts no work at all.

        Each job's work runs in its own task, at most one per job at a time; a job whose
        previous work is still under way is left for a later tick. A progress edit still
        waiting (out a rate limit, say) when its job ends is cancelled: it is stale, and
        a reply must never go back to "Queued…" after its result.
        """
        if not self.tracked:
            return
        jobs = await self.bot.queue.get_many(list(self.tracked))
        now = time.monotonic()
        round_due = now >= self._next_round
        due: list[int] = []
        for job_id, tracked in list(self.tracked.items()):
            job = jobs.get(job_id)
            if job is None:
                self.tracked.pop(job_id, None)
                continue
            running = self._jobs.get(job_id)
            busy = running is not None and not running.done()
            if job.status in FINISHED:
                if busy and job_id in self._delivering:
                    continue  # its delivery is under way
                if busy:
                    assert running is not None
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                self._spawn(job_id, self._finish(job, tracked), delivering=True)
            elif not busy and self.progress.due(job, tracked, now):
                if round_due or tracked.state_changed(job):
                    due.append(job_id)
        if not due:
            return
        if round_due:
            self._next_round = now + self.progress.every
        # The due jobs are read again with the queue, so each one's place is consistent.
        snapshot = await self.bot.queue.snapshot(due)
        for job_id in due:
            job, tracked = snapshot.jobs.get(job_id), self.tracked.get(job_id)
            if job is None or tracked is None or not job.is_live:
                continue  # it moved on while the queue was read: the next tick sees it
            text = self.progress.text(job, snapshot)
            tracked.saw(job)
            if self.progress.worth_editing(job, tracked, text, now):
                edit = self.progress.update(job, tracked, snapshot, now=now)
                self._spawn(job_id, self._update(job, edit), delivering=False)

    def _spawn(self, job_id: int, work: Awaitable[None], *, delivering: bool) -> None:
        task = asyncio.ensure_future(work)
        self._jobs[job_id] = task
        if delivering:
            self._delivering.add(job_id)

        def done(finished: asyncio.Task[None]) -> None:
            if self._jobs.get(job_id) is finished:
                self._jobs.pop(job_id, None)
                self._delivering.discard(job_id)
            if not finished.cancelled() and finished.exception() is not None:
                log.error("job %s: watcher work failed", job_id, exc_info=finished.exception())

        task.add_done_callback(done)

    async def _update(self, job: Job, edit: Awaitable[None]) -> None:
        try:
            await edit
        except discord.HTTPException as exc:
            log.warning("job %s: progress edit failed: %s", job.id, exc)

    async def _finish(self, job: Job, tracked: Tracked) -> None:
        if job.id in self.ledger:
            self.tracked.pop(job.id, None)
            return
        try:
            delivered = await self.deliverer.deliver(job, tracked)
        except Exception as exc:  # noqa: BLE001 - a delivery never takes the watcher down
            # A Discord hiccup or a network error: try again on the next ticks, a few times.
            tracked.failures += 1
            ours = not isinstance(exc, discord.HTTPException | OSError)  # a bug: keep its traceback
            if tracked.failures < MAX_DELIVERY_ATTEMPTS:
                log.warning("job %s: delivery failed (%s); will retry", job.id, exc, exc_info=ours)
                return
            log.error(
                "job %s: delivery failed %d times (%s); giving up",
                job.id,
                tracked.failures,
                exc,
                exc_info=ours,
            )
            delivered = True
        if delivered:
            self.ledger.record(job.id)
            self.tracked.pop(job.id, None)
            self.previews.drop(job.id)
            await self._forget_upload(job)

    async def _forget_upload(self, job: Job) -> None:
        # A job cancelled while queued never reached a worker, which deletes it otherwise.
        await asyncio.to_thread(forget_input, self.bot.store, job)


def fit_notes(result: Any) -> list[str]:
    """A transition whose destination had another size says what was done to it (never stretched)."""
    params = result.params or {}
    note = params.get("fitted_note") if result.kind == "transition" else None
    if not note:
        return []
    return [
        f"Result `{params.get('to_result', '?')}` was {note} to match "
        f"`{params.get('from_result', '?')}`'s size."
    ]

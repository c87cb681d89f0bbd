"""Live progress in the deferred reply: queue position and ETA, then step n/N and frame f/F.

The reply is edited at most every ``[discord] progress_seconds`` and only when its text
changed, which keeps well inside Discord's rate limits for one interaction (discord.py
still waits out any 429). A small preview of the canvas is attached at most every
``[discord] preview_seconds``, when the worker runs in this process and its runner
offers frames (:class:`PreviewBox`).

Each edit carries the job's Cancel button (``lp:cancel:<job id>``) while the job can still
be cancelled. The interaction token that allows these edits expires after 15 minutes, so the
edits in the job's last :data:`FAREWELL_SECONDS` before the token is given up say where the
result will go; the Cancel button stays, since a click comes with its own token.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord
import numpy as np
from PIL import Image

from bot.text import quote, seconds
from db.models import Job, utcnow
from db.queue import QueuePosition, QueueSnapshot

if TYPE_CHECKING:
    from bot.discord_bot import LatentPainterBot

log = logging.getLogger("latent_painter.bot.progress")

PREVIEW_SIDE = 160
PREVIEW_NAME = "preview.png"
# The last edits before the interaction token is given up (``Job.token_expires_at``) say
# where the result will go; a minute leaves room for several ticks and a slow edit.
FAREWELL_SECONDS = 60.0
FAREWELL = (
    "Still working on it — I'll post the result in this channel and mention you "
    "(or send it to you directly if I can't post here)."
)


class PreviewBox:
    """The newest painted frame of each running job, handed over from the worker's thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[int, np.ndarray] = {}

    def offer(self, job_id: int, image: np.ndarray) -> None:
        """Keep ``image`` (an RGB uint8 array) as the job's newest frame; cheap, any thread."""
        with self._lock:
            self._frames[job_id] = image

    def take(self, job_id: int) -> np.ndarray | None:
        """The newest frame offered since the last take, or None."""
        with self._lock:
            return self._frames.pop(job_id, None)

    def drop(self, job_id: int) -> None:
        with self._lock:
            self._frames.pop(job_id, None)

    def waiting(self, job_id: int) -> bool:
        """Whether a frame was offered for the job since the last take."""
        with self._lock:
            return job_id in self._frames


def preview_png(image: np.ndarray, side: int = PREVIEW_SIDE) -> bytes:
    """A small PNG of a frame, at most ``side`` pixels on its longer side."""
    picture = Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8), "RGB")
    picture.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class Tracked:
    """What the watcher knows about one job it follows for its interaction."""

    job_id: int
    last_text: str | None = None
    last_edit: float = 0.0
    last_preview: float = 0.0
    token_dead: bool = False  # the interaction token stopped working: no more edits
    failures: int = 0  # failed delivery attempts
    seen_at: float = field(default_factory=time.monotonic)
    last_state: tuple[Any, ...] | None = None  # the job's own state when its text was last made

    @staticmethod
    def _state(job: Job) -> tuple[Any, ...]:
        # What of the job's own row its progress text shows; the rest is the queue around it.
        return (
            job.status,
            job.attempts,
            job.cancel_requested,
            job.error is not None,
            job.progress_step,
            job.progress_frame,
            job.progress_total,
        )

    def state_changed(self, job: Job) -> bool:
        """Whether the job's own state moved on since its text was last made (:meth:`saw`)."""
        return self.last_state != self._state(job)

    def saw(self, job: Job) -> None:
        """Note the job's state as the one its text was made from."""
        self.last_state = self._state(job)


def token_usable(job: Job) -> bool:
    """Whether the job's interaction token can still be used for edits and follow-ups."""
    return (
        bool(job.interaction_token) and job.token_expires_at is not None and job.token_expires_at > utcnow()
    )


def interaction_webhook(bot: LatentPainterBot, token: str) -> discord.Webhook:
    """The webhook for an interaction token: edits of @original and follow-ups, after restarts too."""
    application_id = bot.application_id or (bot.user.id if bot.user else 0)
    return discord.Webhook.partial(application_id, token, client=bot)


def heading(job: Job) -> str:
    """The first line of a job's progress message."""
    params = job.params
    if job.kind == "transition":
        return f"**Transition** {params.get('from_result', '?')} → {params.get('to_result', '?')}"
    if params.get("trail_key"):
        return f"**Repainting** with {params.get('effect', 'strokes')}: {quote(params.get('prompt'), 120)}"
    return f"**Painting** {quote(params.get('prompt'), 150)}"


class ProgressReporter:
    """Edits each tracked job's deferred reply as the job moves through the queue."""

    def __init__(self, bot: LatentPainterBot, previews: PreviewBox) -> None:
        self.bot = bot
        self.previews = previews
        self.every = bot.settings.discord.progress_seconds
        self.preview_every = bot.settings.discord.preview_seconds

    @staticmethod
    def token_ending(job: Job) -> bool:
        """Whether the job's reply is in its last edits (its token is about to be given up)."""
        expires = job.token_expires_at
        return expires is not None and (expires - utcnow()).total_seconds() <= FAREWELL_SECONDS

    def due(self, job: Job, tracked: Tracked, now: float) -> bool:
        """Whether the job's reply may be edited at ``now`` (``time.monotonic()``): its token
        still works and its last edit is ``progress_seconds`` old. No database, no Discord."""
        return not tracked.token_dead and token_usable(job) and now - tracked.last_edit >= self.every

    async def status(self, job: Job, snapshot: QueueSnapshot | None = None) -> str:
        """Where the job stands, in words: position and ETA, retry, step or frame.

        Its place in the queue comes from ``snapshot`` (taken with the job in it), else
        from a :meth:`~db.queue.JobQueue.position` of its own.
        """
        position = None
        if self._needs_position(job):
            position = (
                snapshot.position(job.id) if snapshot is not None else await self.bot.queue.position(job.id)
            )
        return self.describe(job, position)

    @staticmethod
    def _needs_position(job: Job) -> bool:
        return not job.cancel_requested and not (job.status == "queued" and job.attempts > 0 and job.error)

    def describe(self, job: Job, position: QueuePosition | None) -> str:
        """:meth:`status`'s words for the job at ``position`` (None where no position is shown)."""
        max_attempts = job.max_attempts
        if job.cancel_requested:
            return "Cancelling: the job stops at its next step."
        if job.status == "queued" and job.attempts > 0 and job.error:
            return (
                f"Attempt {job.attempts} of {max_attempts} failed on our side; "
                f"it will be retried (attempt {job.attempts + 1} of {max_attempts})."
            )
        assert position is not None
        eta = f" Ready in {seconds(position.eta_seconds)}." if position.eta_seconds is not None else ""
        if job.status == "queued":
            if position.ahead == 0:
                return f"Queued: yours is next.{eta}"
            ahead = f"{position.ahead} job{'s' if position.ahead != 1 else ''}"
            return f"Queued: {ahead} ahead of yours.{eta}"
        if job.progress_total and job.progress_frame:
            share = 100 * job.progress_frame / job.progress_total
            return f"Painting frame {job.progress_frame}/{job.progress_total} ({share:.0f}%).{eta}"
        if job.progress_step:
            # The painter's own count (an img2img run takes steps × strength of them).
            steps = job.progress_total or job.params.get("steps") or self.bot.settings.painter.steps
            return f"Generating: step {min(job.progress_step, steps)}/{steps}.{eta}"
        return f"Starting…{eta}"

    def text(self, job: Job, snapshot: QueueSnapshot | None) -> str:
        """The whole reply for the job, its place read from ``snapshot`` (no database; None
        only where the text shows no place: a job being cancelled or waiting for a retry)."""
        position = None
        if self._needs_position(job):
            assert snapshot is not None, "a snapshot places the job"
            position = snapshot.position(job.id)
        text = f"{heading(job)}\n{self.describe(job, position)}"
        if self.token_ending(job):
            text += f"\n{FAREWELL}"
        return text

    def worth_editing(self, job: Job, tracked: Tracked, text: str, now: float) -> bool:
        """Whether an edit would change the reply: new text, or a preview frame due and waiting."""
        if text != tracked.last_text:
            return True
        return now - tracked.last_preview >= self.preview_every and self.previews.waiting(job.id)

    async def update(
        self,
        job: Job,
        tracked: Tracked,
        snapshot: QueueSnapshot | None = None,
        *,
        now: float | None = None,
    ) -> None:
        """Edit the job's reply if an edit is due and something changed.

        ``snapshot`` (taken with the job in it) places the job in the queue without a
        read of its own; ``now`` is the ``time.monotonic()`` the caller judged it due at.
        """
        now = time.monotonic() if now is None else now
        if not self.due(job, tracked, now):
            return
        if snapshot is None and self._needs_position(job):
            snapshot = await self.bot.queue.snapshot([job.id])
        text = self.text(job, snapshot)
        frame = None
        if now - tracked.last_preview >= self.preview_every:
            frame = self.previews.take(job.id)
        if text == tracked.last_text and frame is None:
            return
        from bot.views import cancel_view

        kwargs: dict[str, Any] = {
            "content": text,
            "allowed_mentions": discord.AllowedMentions.none(),
            # Sent with every edit: a job being cancelled loses its button.
            "view": None if job.cancel_requested else cancel_view(job.id),
        }
        if frame is not None:
            data = await asyncio.to_thread(preview_png, frame)
            embed = discord.Embed(colour=discord.Colour.dark_teal())
            embed.set_image(url=f"attachment://{PREVIEW_NAME}")
            kwargs["embed"] = embed
            kwargs["attachments"] = [discord.File(io.BytesIO(data), filename=PREVIEW_NAME)]
        assert job.interaction_token is not None
        try:
            await interaction_webhook(self.bot, job.interaction_token).edit_message("@original", **kwargs)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            if exc.status in (401, 404):
                # Expired, or the reply was deleted: the result will go to the channel.
                log.info("job %s: its reply can no longer be edited (%s %s)", job.id, exc.status, exc.code)
                tracked.token_dead = True
                return
            raise
        tracked.last_edit = now
        tracked.last_text = text
        if frame is not None:
            tracked.last_preview = now

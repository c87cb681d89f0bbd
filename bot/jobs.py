"""The queue's job runner: what a worker does with a claimed ``paint`` or ``transition`` job.

Runs in the worker's thread (never on the event loop). Every file is written into the
job's private work directory; the worker stores them and writes the result row. A
cancel or shutdown stops the job at its next denoising step or painted frame.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bot.config import ConfigError, Settings, load_settings, with_overrides
from bot.paint_job import ModelCache, PaintRequest, run_paint
from bot.worker import JobContext, JobOutput, MemberError, PermanentJobError

log = logging.getLogger(__name__)

# One per worker process: pipelines stay loaded between jobs.
MODELS = ModelCache(long_running=True)

# Job parameter → (settings section, key).
SETTING_PARAMS = {
    "effect": ("painter", "effect"),
    "steps": ("painter", "steps"),
    "guidance": ("painter", "guidance"),
    "width": ("painter", "width"),
    "height": ("painter", "height"),
    "fps": ("painter", "fps"),
    "duration": ("painter", "duration"),
    "theta": ("painter", "theta"),
    "neighbourhood": ("painter", "neighbourhood"),
    "release": ("painter", "release"),
    "move_sigma": ("painter", "move_sigma"),
    "strength": ("painter", "strength"),
    "scheduler": ("model", "scheduler"),
    "model": ("model", "id"),
    "format": ("render", "format"),
    "max_bytes": ("render", "max_bytes"),
}


def job_settings(base: Settings, params: dict[str, Any]) -> Settings:
    """The worker's settings with the job's own choices applied on top."""
    overrides: dict[str, dict[str, Any]] = {}
    for name, (section, key) in SETTING_PARAMS.items():
        if params.get(name) is not None:
            overrides.setdefault(section, {})[key] = params[name]
    return with_overrides(base, overrides, "job parameter")


def _member_errors() -> tuple[type[BaseException], ...]:
    """The painter's input errors the member caused (their picture, prompt or parameters).

    A :class:`~painter.models.ModelError` is the server's model or its configuration, not
    the member's doing: it is among :func:`_server_errors`.
    """
    from painter import input_errors
    from painter.models import ModelError

    return tuple(e for e in input_errors() if not issubclass(e, ModelError))


def _server_errors() -> tuple[type[BaseException], ...]:
    """Permanent failures of ours: the model, the configuration, the store's own files."""
    from bot.artifacts import ArtifactKeyError, ArtifactNotFound
    from painter.models import ModelError

    return (ConfigError, ModelError, ArtifactKeyError, ArtifactNotFound)


class _Reporter:
    """Turns painter callbacks into queue progress and cancellation checks.

    ``checker``: the pipeline whose safety checker judges the job's pictures (None when
    the model has none). A live preview is the canvas before the job's verdict, shown
    unblurred to the whole channel, so with a checker each preview is offered only once
    the checker has cleared it. Previews are shown at most every ``[discord]
    preview_seconds``, so frames are put before the checker no more often than that.
    ``pictures=False``: no previews at all (a repaint or transition of a flagged result).
    """

    def __init__(
        self, ctx: JobContext, settings: Settings, checker: Any = None, *, pictures: bool = True
    ) -> None:
        self.ctx = ctx
        self.steps = 0
        self.pictures = pictures
        self.checker = checker
        self.check_every = settings.discord.preview_seconds
        self.last_check = -float("inf")

    def step(self, done: int, total: int) -> None:
        self.ctx.raise_if_cancelled()
        self.steps = done
        # The painter's own count: img2img with a strength runs fewer steps than asked for.
        self.ctx.progress(done, 0, total)

    def frame(self, done: int, total: int, image: Any = None) -> None:
        self.ctx.raise_if_cancelled()
        self.ctx.progress(self.steps, done, total)
        # The bot's in-process worker offers the newest frame as a live preview.
        preview = getattr(self.ctx, "preview", None)
        if preview is None or image is None or not self.pictures:
            return
        if self.checker is None:
            preview(image)
            return
        now = time.monotonic()
        if now - self.last_check < self.check_every:
            return
        self.last_check = now
        from painter.safety import flagged

        if flagged(self.checker, [image]) is False:
            preview(image)


# Marks the trail of a result the safety checker flagged (``TrailMeta.extra``), so what is
# made from it later (a repaint, a transition) is flagged too, wherever its job runs.
FLAGGED_MARK = "flagged"


def mark_flagged(trail: Any, path: Path) -> None:
    """Record in a trail file that its result was flagged (rewriting the file, once)."""
    if trail.meta.extra.get(FLAGGED_MARK):
        return
    trail.meta.extra[FLAGGED_MARK] = True
    trail.save(path)


class _DerivedCheck:
    """Whether a repaint or a transition is flagged: by what it was made from, or by the checker.

    A paint job's frames and final picture are checked as they are made (see
    :class:`bot.paint_job.SafetySampler`); a repaint or a transition shows new frames of
    pictures made earlier, so they are checked the same way. What it was made from counts
    first: a trail marked flagged (:func:`mark_flagged`), or ``params["flagged"]`` where the
    job's parameters carry it.
    """

    def __init__(self, ctx: JobContext, settings: Settings, pipeline: Any, sources: Sequence[Any]) -> None:
        self.pipeline = pipeline
        self.sources_flagged = bool(ctx.params.get("flagged")) or any(
            t.meta.extra.get(FLAGGED_MARK) for t in sources
        )
        # A flagged source is in the frames from the first: none is shown as a preview.
        self.forward = _Reporter(ctx, settings, pipeline, pictures=not self.sources_flagged).frame
        self.sampler: Any = None

    def on_frame(self, done: int, total: int, image: Any) -> None:
        from bot.paint_job import SafetySampler

        if self.sampler is None and self.pipeline is not None:
            # The frame count is first known here.
            self.sampler = SafetySampler(self.pipeline, total, None)
        if self.sampler is not None:
            self.sampler.on_frame(done, total, image)
        self.forward(done, total, image)

    def flagged(self, final_picture: Path) -> bool | None:
        """True if a source trail or the job was flagged, or the checker flags this job's pictures.

        None when there is nothing to go by (no flagged source, no checker).
        """
        if self.sources_flagged:
            return True
        if self.pipeline is None:
            return None
        import numpy as np
        from PIL import Image

        from bot.paint_job import SafetySampler

        with Image.open(final_picture) as picture:
            final = np.asarray(picture.convert("RGB"))
        return (self.sampler or SafetySampler(self.pipeline, 0, None)).verdict(final)


def _checker(settings: Settings, model_ids: Sequence[str], space: str = "latent") -> Any:
    """The pipeline of the first of ``model_ids`` that has a safety checker, or None.

    The models are the ones the job loads anyway (from the worker's cache); one that
    does not load is skipped here and reported by the painter itself.
    """
    from painter.models import ANALYTIC_ID, ModelError
    from painter.safety import has_safety_checker

    if space == "pixel":
        return None
    for model_id in dict.fromkeys(model_ids):
        if model_id == ANALYTIC_ID:
            continue
        try:
            model = MODELS.model(replace(settings, model=replace(settings.model, id=model_id)))
        except ModelError:
            continue
        if has_safety_checker(model.pipeline):
            return model.pipeline
    return None


# Kept of a member's file name: letters, digits, punctuation and spaces, this many at most.
PICTURE_NAME_LIMIT = 100


def member_file_name(name: Any) -> str | None:
    """The member's file name for their picture, made safe to record and show; None if nothing is left.

    Only the last path part is kept; control and format characters (a right-to-left
    override, say) are dropped and whitespace is collapsed.
    """
    if not isinstance(name, str):
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(ch for ch in base if not unicodedata.category(ch).startswith(("C", "Z")) or ch == " ")
    kept = " ".join(kept.split())
    if len(kept) > PICTURE_NAME_LIMIT:
        kept = kept[: PICTURE_NAME_LIMIT - 1] + "…"
    return kept or None


def _store(settings: Settings):
    from bot.artifacts import LocalArtifactStore

    return LocalArtifactStore(settings.data_dir / "artifacts")


def _read_artifact(settings: Settings, key: str, into: Path, *, gone: str | None = None) -> Path:
    """Copy a stored input into the work directory.

    ``gone`` is what to tell the member when it is missing (a result they chose was
    deleted); without it a missing input is our fault, not theirs.
    """
    from bot.artifacts import ArtifactNotFound

    try:
        with _store(settings).open(key) as src:
            into.write_bytes(src.read())
    except ArtifactNotFound as exc:
        if gone is None:
            raise
        # Named MemberError (not a subclass): the bot reads the class name from the error column.
        raise MemberError(gone, detail=str(exc)) from exc
    return into


def _stored_trail(path: Path, public_id: str | None) -> Any:
    """A result's stored trail; one that cannot be read is our failure, not the member's.

    (A damaged or truncated file on our disk: its message names a path of ours, and
    :func:`run_job` would take a :class:`~painter.trail.TrailError` for bad input.)
    """
    from painter.trail import Trail, TrailError

    try:
        return Trail.load(path)
    except TrailError as exc:
        what = f"result {public_id}" if public_id else "the source result"
        raise PermanentJobError(f"the stored trail of {what} is unreadable: {exc}") from exc


def _deleted(public_id: str | None, what: str, prompt: str | None = None) -> str:
    """``result ABCD was deleted before it could be repainted``; by its prompt when the id is unknown.

    Plain text: the bot escapes the whole message when it shows it.
    """
    if public_id:
        name = f"result {public_id}"
    elif prompt:
        name = f"the painting “{prompt[:100]}{'…' if len(prompt) > 100 else ''}”"
    else:
        name = "the result you chose"
    return f"{name} was deleted before {what}"


def warm_up(settings: Settings | None) -> None:
    """Before the first claim: load ``[model] id`` and prepare what its first job would.

    Loading a checkpoint, compiling the decoder (``[render] compile``, ~30 s on a GPU),
    fitting its batch to ``[render] decode_memory_mb`` and loading the strokes planner's
    compiled loop would otherwise all land on the first person to ``/paint`` after a
    start. The worker runs this once, in the runner's thread; a failure is logged and the
    first job tries again.
    """
    import numpy as np
    import torch

    from painter.effects.strokes import plan_strokes
    from painter.models import ANALYTIC_ID

    settings = settings if settings is not None else load_settings()
    plan_strokes(torch.from_numpy(np.linspace(0, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8)))
    if settings.model.id == ANALYTIC_ID:
        return  # the closed-form model: nothing to load or compile
    model = MODELS.model(settings)
    decoder = MODELS.decoder(settings, model)
    if decoder.device.type == "cpu" and not decoder.compiled:
        return  # nothing a first decode would prepare
    p = settings.painter
    channels = int(model.vae.config.get("latent_channels", 4))
    canvases = torch.zeros(decoder.batch_size, channels, p.height // decoder.scale, p.width // decoder.scale)
    decoder.decode_float(canvases.to(decoder.device))


def run_job(ctx: JobContext) -> JobOutput:
    """Run one claimed job; user-caused failures are permanent (retrying cannot fix them)."""
    base = ctx.settings if ctx.settings is not None else load_settings()
    try:
        settings = job_settings(base, ctx.params)
    except ConfigError as exc:
        # The job's own parameters (the worker's settings loaded above, outside this try).
        raise MemberError(str(exc)) from exc
    try:
        if ctx.kind == "paint":
            return _paint(ctx, settings)
        if ctx.kind == "transition":
            return _transition(ctx, settings)
    except _member_errors() as exc:
        raise MemberError(str(exc)) from exc
    except _server_errors() as exc:
        # Its text (a model path, a storage key) is for operators: the error column keeps it.
        raise PermanentJobError(f"{type(exc).__name__}: {exc}") from exc
    raise PermanentJobError(f"unknown job kind {ctx.kind!r}")


def _paint(ctx: JobContext, settings: Settings) -> JobOutput:
    params = ctx.params
    out = ctx.workdir / f"painting.{settings.render.format}"
    if params.get("trail_key"):
        # "Repaint with…": another effect over a stored trail, no new generation.
        from bot.paint_job import repaint

        source = _read_artifact(
            settings,
            params["trail_key"],
            ctx.workdir / "source.trail.safetensors",
            # Repaint jobs queued before they carried from_result name their prompt instead.
            gone=_deleted(params.get("from_result"), "it could be repainted", params.get("prompt")),
        )
        trail = _stored_trail(source, params.get("from_result"))
        pipeline = _checker(settings, [trail.meta.model_id], trail.meta.space)
        check = _DerivedCheck(ctx, settings, pipeline, [trail])
        outputs = repaint(settings, trail, out, models=MODELS, on_frame=check.on_frame)
        # The new result keeps its own copy, so it can be repainted or transitioned too, and
        # deleting the result it came from takes nothing away from it.
        outputs = replace(outputs, trail_path=source, flagged=check.flagged(outputs.image))
    else:
        image = None
        if params.get("image_key"):
            image = _read_artifact(settings, params["image_key"], ctx.workdir / "input-image")
        request = PaintRequest(
            prompt=params.get("prompt", ""),
            negative_prompt=params.get("negative_prompt", ""),
            seed=params.get("seed"),
            image=image,
            # The member's own file name when the bot passed it on (jobs queued before did not).
            image_name=member_file_name(params.get("image_name")) or "the attached picture",
            start_from_image=bool(params.get("start_from_image", False)),
            save_trail=True,
        )
        reporter = _Reporter(ctx, settings, _checker(settings, [settings.model.id]))
        outputs = run_paint(
            settings, request, out, models=MODELS, on_step=reporter.step, on_frame=reporter.frame
        )
    files = {"video": outputs.video, "image": outputs.image, "heatmap": outputs.heatmap}
    if outputs.trail_path is not None:
        files["trail"] = outputs.trail_path
    if outputs.flagged and outputs.trail_path is not None:
        mark_flagged(outputs.trail, outputs.trail_path)
    fields = result_fields(outputs.trail.meta, outputs.animation, settings)
    if outputs.flagged is not None:
        fields["flagged"] = outputs.flagged
    return JobOutput(files=files, result=fields)


def _transition(ctx: JobContext, settings: Settings) -> JobOutput:
    from bot.cli_transition import run_transition

    params = ctx.params
    keys = [params.get("from_trail"), params.get("to_trail")]
    if not all(keys):
        raise PermanentJobError("a transition job needs the trail artifacts of both results")
    ids = [params.get("from_result"), params.get("to_result")]
    trails = [
        _stored_trail(
            _read_artifact(
                settings,
                key,
                ctx.workdir / f"hop{i}.trail",
                gone=_deleted(public_id, "the transition could be made"),
            ),
            public_id,
        )
        for i, (key, public_id) in enumerate(zip(keys, ids, strict=True))
    ]
    out = ctx.workdir / f"transition.{settings.render.format}"
    pipeline = _checker(settings, [t.meta.model_id for t in trails], trails[0].meta.space)
    check = _DerivedCheck(ctx, settings, pipeline, trails)
    outputs = run_transition(
        settings,
        trails,
        out,
        depth=float(params.get("depth", 1.0)),
        guidance="interpolate" if params.get("interpolate") else "schedule",
        resize=bool(params.get("resize", False)),
        models=MODELS,
        on_frame=check.on_frame,
    )
    meta = outputs.plan.meta
    fields: dict[str, Any] = {
        "model_id": ",".join(dict.fromkeys(meta.model_ids)),
        "vae_id": meta.vae_id,
        "width": meta.width,
        "height": meta.height,
        **animation_fields(outputs.animation, settings),
    }
    if meta.fitted:
        from bot.cli_transition import fit_note

        # "cropped from 512x768 to 512x512 (…)": the member is told in the delivery.
        fields["fitted_note"] = fit_note(meta)
    flagged = check.flagged(outputs.image)
    if flagged is not None:
        fields["flagged"] = flagged
    return JobOutput(
        files={"video": outputs.video, "image": outputs.image, "heatmap": outputs.heatmap},
        result=fields,
    )


def animation_fields(animation: Any, settings: Settings) -> dict[str, Any]:
    video = animation.video
    return {
        "effect": settings.painter.effect,
        "format": video.format,
        "frames": video.frames,
        "duration_seconds": round(video.frames / video.fps, 3),
    }


def result_fields(meta: Any, animation: Any, settings: Settings) -> dict[str, Any]:
    """The result row's columns for a paint job.

    The closed-form painter (pixel space) has no noise, guidance or sampler: its result
    shows none rather than numbers that meant nothing.
    """
    generated = meta.space != "pixel"
    return {
        "prompt": meta.prompt,
        "negative_prompt": meta.negative_prompt,
        "seed": meta.seed if generated else None,
        "steps": meta.steps,
        "guidance": meta.guidance if generated else None,
        "width": meta.width,
        "height": meta.height,
        "scheduler": meta.scheduler if generated else None,
        "model_id": meta.model_id,
        "vae_id": meta.vae_id,
        **animation_fields(animation, settings),
    }


# The Worker calls its runner's ``warm_up`` (when it has one) once before its first claim.
run_job.warm_up = warm_up  # type: ignore[attr-defined]

"""One paint job, start to finish: settings and a request in, animation, picture, heatmap and trail out.

``latent-painter paint``, the demo and the queue's worker all paint through
:func:`run_paint`, so a job looks the same whichever way it was asked for.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bot.config import Settings
from bot.quiet import quiet_loaded
from painter.animate import Animation, AnimationSpec, decode_image, save_png
from painter.capture import CaptureError, Generation, capture, check_img2img_steps, validate_generation
from painter.decode import Decoder, LatentScaling, parse_colour
from painter.images import image_to_tensor, load_image
from painter.models import (
    ANALYTIC_ID,
    LoadedModel,
    ModelError,
    load_pipeline,
    load_taesd,
    model_label,
    set_scheduler,
)
from painter.trail import Trail, TrailMeta

StepCallback = Callable[[int, int], None]
FrameCallback = Callable[[int, int, np.ndarray], None]


@dataclass
class PaintRequest:
    """What is asked beyond the settings: the prompt, the seed and an optional picture."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    image: str | Path | bytes | None = None
    image_name: str | None = None
    start_from_image: bool = False
    save_trail: bool = True


@dataclass
class PaintOutputs:
    """The files a paint job wrote, and what they were made from."""

    video: Path
    image: Path
    heatmap: Path
    trail_path: Path | None
    trail: Trail
    animation: Animation
    # The pipeline's safety checker's verdict on the final image and sampled frames;
    # None when the pipeline has no checker.
    flagged: bool | None = None

    def paths(self) -> list[Path]:
        return [p for p in (self.video, self.image, self.heatmap, self.trail_path) if p is not None]


class ModelCache:
    """Keeps loaded pipelines between jobs: loading is slow, painting with one is not.

    ``long_running``: the cache serves many jobs (the worker, the bot), so a compiled
    decoder's one-off compile pays for itself (``[render] compile = "auto"``).
    """

    def __init__(self, *, long_running: bool = False) -> None:
        self.long_running = long_running
        self._models: dict[tuple[str, str, str], tuple[LoadedModel, Any]] = {}
        self._taesd: dict[str, Any] = {}
        self._lock = threading.Lock()

    def model(self, settings: Settings) -> LoadedModel:
        """The loaded model of ``[model]``, with ``[model] scheduler`` in place for this job."""
        m = settings.model
        key = (m.id, m.device, m.dtype)
        with self._lock:
            if key not in self._models:
                quiet_loaded()
                loaded = load_pipeline(m.id, data_dir=settings.data_dir, device=m.device, dtype=m.dtype)
                self._models[key] = (loaded, loaded.pipeline.scheduler)
            loaded, checkpoint_scheduler = self._models[key]
        # Each job starts from the checkpoint's own scheduler, so "default" means that.
        loaded.pipeline.scheduler = checkpoint_scheduler
        set_scheduler(loaded.pipeline, m.scheduler)
        return loaded

    def decoder(self, settings: Settings, model: LoadedModel) -> Decoder:
        m = settings.model
        vae: Any = model.vae
        if m.decoder == "taesd":
            with self._lock:
                if m.taesd_id not in self._taesd:
                    quiet_loaded()
                    self._taesd[m.taesd_id] = load_taesd(m.taesd_id, device=model.device, dtype=model.dtype)
                vae = self._taesd[m.taesd_id]
        return Decoder(
            vae,
            **LatentScaling.of(model.vae.config).kwargs(),
            device=model.device,
            dtype=model.dtype,
            batch_size=settings.render.batch_size,
            compile=self.compiles(settings, model),
            memory_mb=settings.render.decode_memory_mb,
            upcast=model.upcasts_vae if vae is model.vae else None,  # TAESD: its own config
        )

    def image_decoder(self, settings: Settings, model: LoadedModel) -> Decoder:
        """The decoder of the delivered picture: always the pipeline's own VAE.

        TAESD, when ``[model] decoder`` paints the animation with it, approximates the
        VAE for speed; the finished image people keep is decoded by the VAE itself, one
        frame, eager (compiling for a single decode would not pay).
        """
        if settings.model.decoder == "vae":
            return self.decoder(settings, model)
        from dataclasses import replace

        own = replace(
            settings,
            model=replace(settings.model, decoder="vae"),
            render=replace(settings.render, compile="never"),
        )
        return self.decoder(own, model)

    def compiles(self, settings: Settings, model: LoadedModel) -> bool:
        """Whether this cache's decoders for ``model`` decode through ``torch.compile``."""
        mode = settings.render.compile
        if mode == "auto":
            return self.long_running and model.device.type == "cuda"
        return mode == "always"


def effect_params(settings: Settings, effect: str, *, analytic: bool = False) -> dict[str, Any]:
    """The effect's parameters from ``[painter]`` (those it takes); the closed-form model
    paints with its own brush and release, tuned for pixel space."""
    from painter.effects import default_params

    p = settings.painter
    params: dict[str, Any] = {
        "theta": p.theta,
        "neighbourhood": p.neighbourhood,
        "release": p.release,
        "move_sigma": p.move_sigma,
        "pacing": p.pacing,
    }
    if analytic:
        from painter.analytic import ANALYTIC_PAINT_DEFAULTS

        params.update(ANALYTIC_PAINT_DEFAULTS)
    accepted = default_params(effect)
    return {name: value for name, value in params.items() if name in accepted}


def animation_spec(settings: Settings, effect: str, *, analytic: bool = False) -> AnimationSpec:
    """How to render, from ``[painter]`` and ``[render]``."""
    return AnimationSpec(
        effect=effect,
        fps=settings.painter.fps,
        duration=settings.painter.duration,
        format=settings.render.format,
        max_bytes=settings.render.max_bytes,
        paper=parse_colour(settings.render.paper_color),
        crf=settings.render.crf,
        batch_size=settings.render.batch_size,
        render=settings.render.mode,
        tolerance_db=settings.render.tolerance_db,
        encoder_processes=settings.render.encoder_processes,
        params=effect_params(settings, effect, analytic=analytic),
    )


def output_paths(out: str | Path) -> tuple[Path, Path, Path, Path]:
    """``x.mp4`` → ``x.mp4``, ``x.png``, ``x.heatmap.png``, ``x.trail.safetensors``."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in (".mp4", ".gif", ".webp") else out
    return (
        out,
        stem.with_name(stem.name + ".png"),
        stem.with_name(stem.name + ".heatmap.png"),
        stem.with_name(stem.name + ".trail.safetensors"),
    )


def check_writable(path: Path, what: str = "the animation") -> None:
    """Refuse an output path that cannot be written, before any work, in one line."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CaptureError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CaptureError(f"output directory {parent} is not writable")
    if path.is_dir():
        raise CaptureError(f"output path {path} is a directory; name a file such as {path / 'painting.mp4'}")
    if path.exists() and not path.is_file():
        # Outputs are written beside and renamed over: a device or a pipe would be replaced.
        raise CaptureError(f"output path {path} exists and is not a regular file")
    # os.access says yes to root anywhere, also where nothing can be made (/sys, /proc,
    # a read-only mount): writing a file there is the only sure test.
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as exc:
        raise CaptureError(f"cannot write {what}: {path}: {exc.strerror or exc}") from None
    os.close(handle)
    os.unlink(probe)


def check_not_the_picture(picture: Any, outputs: Iterator[Path | None] | tuple[Path | None, ...]) -> None:
    """Refuse outputs that would be written over the picture being painted from.

    ``paint --image photo.png --out photo.mp4`` writes its final image to ``photo.png``:
    the member's own picture would be replaced by the painting, silently.
    """
    if not isinstance(picture, (str, Path)):
        return
    source = Path(picture)
    for path in outputs:
        if path is None or not path.exists():
            continue
        try:
            same = os.path.samefile(path, source)
        except OSError:
            continue
        if same:
            raise CaptureError(
                f"the output {path} is the picture being painted ({source}); it would be "
                "overwritten: choose another --out name"
            )


def new_seed() -> int:
    return secrets.randbelow(2**32)


def _generation(settings: Settings, request: PaintRequest, image: Any) -> Generation:
    p = settings.painter
    return Generation(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed if request.seed is not None else new_seed(),
        steps=p.steps,
        guidance=p.guidance,
        width=p.width,
        height=p.height,
        image=image,
        strength=p.strength,
    )


def check_paint_request(settings: Settings, *, has_image: bool, start_from_image: bool) -> None:
    """Refuse a paint the job's settings cannot make, before any picture is read or job queued.

    ``run_paint`` checks the whole generation again (prompt, seed) once it has the picture.
    """
    p = settings.painter
    if settings.model.id == ANALYTIC_ID:
        if not has_image:
            raise CaptureError("the analytic model paints a picture: give one with --image")
        if not 1 <= p.steps <= p.max_steps:
            raise CaptureError(f"steps {p.steps} must be between 1 and {p.max_steps}")
        check_analytic_size(p.width, p.height, p.max_side)
        if start_from_image:
            raise CaptureError(
                "the analytic model paints your picture itself: starting from it would show the "
                "finished picture first and then blur it; leave out --start-from-image"
            )
        return
    for name, value in (("width", p.width), ("height", p.height)):
        if value % 8 or not 64 <= value <= p.max_side:
            raise CaptureError(f"{name} {value} must be a multiple of 8 between 64 and {p.max_side}")
    if not 1 <= p.steps <= p.max_steps:
        raise CaptureError(f"steps {p.steps} must be between 1 and {p.max_steps}")
    if has_image:
        check_img2img_steps(p.steps, p.strength)


def check_analytic_size(width: int, height: int, max_side: int) -> None:
    """The closed-form painter's size limits: the same bound a model's generation has.

    It needs no multiple of 8 (there is no VAE), but its trail is pixels: a side over
    ``[painter] max_side`` costs gigabytes (2048² took 4 GB and most of a minute).
    """
    for name, value in (("width", width), ("height", height)):
        if not 16 <= value <= max_side:
            raise CaptureError(f"{name} {value} must be between 16 and {max_side} ([painter] max_side)")


def run_paint(
    settings: Settings,
    request: PaintRequest,
    out: str | Path,
    *,
    models: ModelCache | None = None,
    on_step: StepCallback | None = None,
    on_frame: FrameCallback | None = None,
) -> PaintOutputs:
    """Generate (or build the closed-form trail), paint it and write every output.

    Outputs appear only when the whole job succeeded; on any error none is left.
    """
    models = models or ModelCache()
    video_path, image_path, heatmap_path, trail_path = output_paths(out)
    check_writable(video_path)
    check_not_the_picture(request.image, (video_path, image_path, heatmap_path, trail_path))
    p = settings.painter
    analytic = settings.model.id == ANALYTIC_ID
    has_image = request.image is not None
    check_paint_request(settings, has_image=has_image, start_from_image=request.start_from_image)
    picture = None
    if request.image is not None:
        picture = load_image(request.image, p.width, p.height, name=request.image_name)
    gen = _generation(settings, request, picture)
    if not analytic:
        validate_generation(gen, max_side=p.max_side, max_steps=p.max_steps)
    with all_or_nothing() as written:
        start: torch.Tensor | None = None
        backdrop: torch.Tensor | None = None
        if analytic:
            from painter.analytic import analytic_trail, paper_canvas

            trail = analytic_trail(picture, p.steps, prompt=request.prompt)
            trail.meta.seed = gen.seed
            decoder = Decoder(None, batch_size=settings.render.batch_size)
            # In pixel space zeros are mid-grey: paint on paper, so brush edges fade into it.
            paper = parse_colour(settings.render.paper_color)
            start = (
                image_to_tensor(picture)
                if request.start_from_image
                else paper_canvas(p.height, p.width, paper)
            )
            if on_step is not None:
                on_step(p.steps, p.steps)
        else:
            model = models.model(settings)
            decoder = models.decoder(settings, model)
            _, trail = capture(model, gen, on_step=on_step)
            if request.start_from_image and picture is not None:
                # The canvas starts at the picture's latent and the picture itself shows
                # until painted over, so the first frame is exactly the input.
                start = encode_picture(model, picture)
                backdrop = (image_to_tensor(picture) + 1) / 2
        if picture is not None:
            # Which picture was painted (or painted from): its file name is enough.
            trail.meta.extra["picture"] = picture_name(request)
        spec = animation_spec(settings, p.effect, analytic=analytic)
        plan = trail.latents.to(decoder.device)
        watcher = SafetySampler(None if analytic else model.pipeline, spec.total_frames, on_frame)
        final = decode_image(decoder if analytic else models.image_decoder(settings, model), trail.final)
        saved_trail = trail_path if request.save_trail else None
        with files_beside(written, final, image_path, png_text(trail, p.effect), trail, saved_trail):
            animation = animate_to(
                plan,
                decoder,
                spec,
                video_path,
                start=start,
                backdrop=backdrop,
                trail=trail,
                on_frame=watcher.on_frame,
            )
            written.append(video_path)
        verdict = watcher.verdict(np.asarray(final))
        write_heatmap(written, animation, heatmap_path)
    return PaintOutputs(video_path, image_path, heatmap_path, saved_trail, trail, animation, verdict)


@contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
    """Collects the paths a job writes; if the job fails, every one of them is removed."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


@contextmanager
def files_beside(
    written: list[Path],
    final: Any,
    image_path: Path,
    text: dict[str, Any],
    trail: Trail | None = None,
    trail_path: Path | None = None,
) -> Iterator[None]:
    """Write the final picture (its parameters as PNG text) and the trail file in a thread
    while the body renders the animation; each path goes into ``written`` once written.

    Both need only the generation, so they come off the job's critical path. The
    picture is decoded before (one frame, before the animation's decodes take the GPU
    memory). Leaving waits for the files, so a failure on either side still finds every
    written path in ``written`` for :func:`all_or_nothing` to remove.
    """

    def write() -> None:
        save_png(final, image_path, text)
        written.append(image_path)
        if trail is not None and trail_path is not None:
            trail.save(trail_path)
            written.append(trail_path)

    with ThreadPoolExecutor(1, thread_name_prefix="paint-files") as pool:
        files = pool.submit(write)
        yield
        files.result()


def write_heatmap(written: list[Path], animation: Animation, heatmap_path: Path) -> None:
    """The animation's stroke (or update) heatmap; recorded in ``written``."""
    kind = "stroke" if animation.effect == "strokes" else "update"
    save_png(animation.heatmap, heatmap_path, {"Description": f"{kind} heatmap ({animation.effect})"})
    written.append(heatmap_path)


class SafetySampler:
    """Keeps a few frames as they are rendered, for the pipeline's safety checker."""

    def __init__(self, pipeline: Any, total: int, forward: FrameCallback | None) -> None:
        from painter.safety import has_safety_checker, sample_indices

        self.pipeline = pipeline if pipeline is not None and has_safety_checker(pipeline) else None
        self.wanted = sample_indices(total) if self.pipeline is not None else set()
        self.samples: list[np.ndarray] = []
        self.forward = forward

    def on_frame(self, done: int, total: int, image: np.ndarray) -> None:
        if done in self.wanted:
            self.samples.append(image.copy())
        if self.forward is not None:
            self.forward(done, total, image)

    def verdict(self, final: np.ndarray) -> bool | None:
        """The checker's verdict on the final image and the kept frames."""
        if self.pipeline is None:
            return None
        from painter.safety import flagged

        return flagged(self.pipeline, [final, *self.samples])


def decoder_for_trails(
    settings: Settings,
    model_ids: list[str],
    vae_id: str,
    space: str,
    models: ModelCache,
    *,
    image: bool = False,
) -> Decoder:
    """The decoder for stored trails: the VAE they were made with, loaded through their model.

    Any of the models will do when they share the VAE; each is checked against the
    recorded VAE fingerprint, so a model that changed since is never used to decode.
    ``image``: the decoder of the delivered picture (``ModelCache.image_decoder``), not
    the animation's.
    """
    from dataclasses import replace

    if space == "pixel":
        return Decoder(None, batch_size=settings.render.batch_size)
    problems: list[str] = []
    for model_id in dict.fromkeys(model_ids):
        model_settings = replace(settings, model=replace(settings.model, id=model_id))
        try:
            model = models.model(model_settings)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        if model.vae_id != vae_id:
            problems.append(f"model {model_id!r} now has VAE {model.vae_id!r}")
            continue
        return models.image_decoder(model_settings, model) if image else models.decoder(model_settings, model)
    raise ModelError(
        f"cannot decode: no model named in the trails loads with their VAE {vae_id!r} ({'; '.join(problems)})"
    )


def repaint(
    settings: Settings,
    trail: Trail,
    out: str | Path,
    *,
    models: ModelCache | None = None,
    on_frame: FrameCallback | None = None,
) -> PaintOutputs:
    """Paint a stored trail again with ``[painter] effect``: no new generation."""
    models = models or ModelCache()
    video_path, image_path, heatmap_path, _ = output_paths(out)
    check_writable(video_path)
    meta = trail.meta
    decoder = decoder_for_trails(settings, [meta.model_id], meta.vae_id, meta.space, models)
    effect = settings.painter.effect
    analytic = meta.space == "pixel"
    start = None
    if analytic:
        from painter.analytic import paper_canvas

        start = paper_canvas(meta.height, meta.width, parse_colour(settings.render.paper_color))
    with all_or_nothing() as written:
        spec = animation_spec(settings, effect, analytic=analytic)
        plan = trail.latents.to(decoder.device)
        ids = [meta.model_id]
        image_decoder = decoder_for_trails(settings, ids, meta.vae_id, meta.space, models, image=True)
        final = decode_image(image_decoder, trail.final)
        with files_beside(written, final, image_path, png_text(trail, effect)):
            animation = animate_to(
                plan, decoder, spec, video_path, start=start, trail=trail, on_frame=on_frame
            )
            written.append(video_path)
        write_heatmap(written, animation, heatmap_path)
    return PaintOutputs(video_path, image_path, heatmap_path, None, trail, animation)


def animate_to(
    plan: torch.Tensor,
    decoder: Decoder,
    spec: AnimationSpec,
    out: Path,
    *,
    start: torch.Tensor | None,
    trail: Trail,
    on_frame: FrameCallback | None,
    backdrop: torch.Tensor | None = None,
) -> Animation:
    """Render one plan; a separate function so transitions and paints share it."""
    from painter.animate import animate

    if start is not None:
        start = start.to(plan.device)
    return animate(
        plan, decoder, spec, out, start=start, backdrop=backdrop, space=trail.meta.space, on_frame=on_frame
    )


@torch.inference_mode()
def encode_picture(model: LoadedModel, picture: Any) -> torch.Tensor:
    """The VAE latent of a picture, as the first canvas for ``--start-from-image``."""
    vae = model.vae
    dtype = vae.dtype
    # A VAE that overflows in fp16 (SDXL's) encodes in fp32, as its pipelines do.
    upcast = dtype == torch.float16 and model.upcasts_vae
    if upcast:
        vae.to(torch.float32)
    try:
        pixels = image_to_tensor(picture)[None].to(model.device, vae.dtype)
        latent = vae.encode(pixels).latent_dist.mean
    finally:
        if upcast:
            vae.to(dtype)
    return LatentScaling.of(vae.config).to_unet(latent)[0].float()


def picture_name(request: PaintRequest) -> str | None:
    """The name a paint's picture goes by: its file name, or the name it was given."""
    if request.image is None:
        return None
    if request.image_name:
        return request.image_name
    if isinstance(request.image, (str, Path)):
        return Path(request.image).name
    return "a picture"


def is_analytic(meta: TrailMeta) -> bool:
    """A closed-form trail: no sampler, guidance, negative prompt or seed took part."""
    return meta.model_id == ANALYTIC_ID


def parameters_line(meta: TrailMeta) -> str:
    """How a trail was made, in the ``Key: value, …`` style of SD front-ends; only what applies.

    The closed-form model has no sampler, guidance, negative prompt or seed, so none is
    named; it names the picture it painted. An SD paint from a picture names the picture
    and its denoising strength.
    """
    picture = meta.extra.get("picture")
    if is_analytic(meta):
        fields = [f"Steps: {meta.steps}", "Model: analytic (closed-form posterior mean of the picture)"]
        fields += [f"Picture: {picture}"] if picture else []
        return ", ".join(fields + [f"Size: {meta.width}x{meta.height}"])
    fields = [
        f"Steps: {meta.steps}",
        f"Sampler: {meta.scheduler}",
        f"CFG scale: {meta.guidance}",
        f"Seed: {meta.seed}",
        f"Size: {meta.width}x{meta.height}",
        f"Model: {model_label(meta.model_id)}",
    ]
    if picture:
        fields.append(f"Picture: {picture}")
    if meta.strength is not None:
        fields.append(f"Denoising strength: {meta.strength:g}")
    return ", ".join(fields)


def generation_text(meta: TrailMeta) -> str:
    """The prompt (and negative prompt, where one applies) over the parameters line."""
    head = meta.prompt
    if meta.negative_prompt and not is_analytic(meta):
        head += f"\nNegative prompt: {meta.negative_prompt}"
    return f"{head}\n{parameters_line(meta)}"


def png_text(trail: Trail, effect: str) -> dict[str, Any]:
    """Generation parameters as PNG text, the way SD front-ends record them.

    Only what took part is recorded: an analytic paint has no sampler, guidance, seed
    or negative prompt, and says which picture it painted.
    """
    m = trail.meta
    analytic = is_analytic(m)
    text: dict[str, Any] = {
        "parameters": f"{generation_text(m)}, Effect: {effect}",
        "prompt": m.prompt,
    }
    if not analytic:
        text.update(negative_prompt=m.negative_prompt, seed=m.seed, guidance=m.guidance, sampler=m.scheduler)
    if m.extra.get("picture"):
        text["picture"] = m.extra["picture"]
    # Pictures are public: a local checkpoint is named by its folder, not the server's path.
    text.update(steps=m.steps, model=model_label(m.model_id))
    if m.vae_id:
        text["vae"] = m.vae_id
    text.update(effect=effect, Software="latent-painter")
    return text

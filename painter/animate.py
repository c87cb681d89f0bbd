"""From a plan to a finished animation: paint → decode → lay on paper → encode → fit.

This is the one place the painter's stages meet, used alike by ``latent-painter
paint``, transitions and the queue's worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from painter.decode import DEFAULT_PAPER, Decoder, lay_on_paper, to_uint8
from painter.effects import paint
from painter.heatmap import HeatmapAccumulator
from painter.render import RENDER_MODES, render_batches
from painter.video import FORMATS, FrameEncoder, VideoInfo, encoder_processes, fit_to_budget

FrameCallback = Callable[[int, int, np.ndarray], None]


class AnimationError(ValueError):
    """Animation settings that cannot be rendered; the message is meant for the user."""


@dataclass
class AnimationSpec:
    """How the animation should look and how large it may be."""

    effect: str = "strokes"
    fps: int = 30
    duration: float = 15.0
    # The finished picture stays on screen this long at the end (inside ``duration``,
    # at most a quarter of it).
    hold: float = 1.0
    # The canvas before the first stroke shows this long at the start (at least one
    # frame): a transition opens on its source picture.
    lead_in: float = 0.0
    format: str = "mp4"
    max_bytes: int = 10 * 1024 * 1024
    paper: tuple[int, int, int] = DEFAULT_PAPER
    crf: int = 20
    batch_size: int = 8
    # adaptive: decode some frames, interpolate the rest where a check against a decoded
    # frame holds within tolerance_db (painter/render.py); exact: decode every frame.
    render: str = "adaptive"
    tolerance_db: float = 35.0
    # x264 processes encoding segments side by side (painter/video.py); 0: by core count.
    encoder_processes: int = 1
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def total_frames(self) -> int:
        return max(1, round(self.fps * self.duration))

    @property
    def hold_frames(self) -> int:
        return min(round(self.hold * self.fps), self.total_frames // 4)

    @property
    def lead_in_frames(self) -> int:
        room = self.total_frames - self.hold_frames - 1
        return max(0, min(max(1, round(self.lead_in * self.fps)), room // 4 if self.lead_in else room))

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise AnimationError(f"unknown format {self.format!r}; use {', '.join(FORMATS)}")
        if not 1 <= self.fps <= 120:
            raise AnimationError(f"fps {self.fps} must be between 1 and 120")
        if not 0.5 <= self.duration <= 600:
            raise AnimationError(f"duration {self.duration} s must be between 0.5 and 600")
        if self.max_bytes < 10_000:
            raise AnimationError(f"max bytes {self.max_bytes} must be at least 10000")
        if self.render not in RENDER_MODES:
            raise AnimationError(f"unknown render mode {self.render!r}; use {' or '.join(RENDER_MODES)}")
        if not 20 <= self.tolerance_db <= 99:
            raise AnimationError(f"tolerance {self.tolerance_db} dB must be between 20 and 99")
        if not 0 <= self.encoder_processes <= 16:
            raise AnimationError(f"encoder processes {self.encoder_processes} must be between 0 and 16")


@dataclass
class Animation:
    """What was written, with the pictures a caller shows beside the video."""

    video: VideoInfo
    heatmap: Image.Image
    last_frame: np.ndarray
    frames_painted: int
    effect: str = "strokes"


def animate(
    plan: torch.Tensor,
    decoder: Decoder,
    spec: AnimationSpec,
    out: str | Path,
    *,
    start: torch.Tensor | None = None,
    backdrop: torch.Tensor | None = None,
    space: str = "latent",
    on_frame: FrameCallback | None = None,
    heat_from: int | None = None,
) -> Animation:
    """Paint ``plan`` with ``spec.effect`` and write the animation to ``out``.

    The first frame shows the canvas before any stroke: blank paper when ``start`` is
    None; the decoded ``start`` canvas otherwise (a transition's source picture); or,
    with ``backdrop`` (an RGB picture ``[3, H, W]`` in [0, 1]), that picture, which
    then shows wherever nothing has been painted yet (repainting a photo). The last
    frame is the plan's last entry exactly, decoded, held for ``spec.hold`` seconds.
    ``out`` appears only when complete. ``heat_from``: the plan step where a transition's
    destination half starts; the heatmap then shows how the destination was painted.
    """
    spec.validate()
    out = Path(out)
    total, hold = spec.total_frames, spec.hold_frames
    lead_in = spec.lead_in_frames
    painted_frames = total - hold - lead_in
    _, channels, height, width = plan.shape
    canvas0 = torch.zeros(plan.shape[1:], dtype=plan.dtype, device=plan.device) if start is None else start
    frames = paint(plan, spec.effect, start=start, frames=painted_frames, **spec.params)
    shows_start = start is not None and backdrop is None
    painted = torch.full((height, width), shows_start, dtype=torch.bool, device=plan.device)
    paper = spec.paper if backdrop is None else backdrop
    # strokes: where strokes landed (a count); the other effects: when each cell changed.
    heat = HeatmapAccumulator(
        (channels, height, width),
        device=plan.device,
        start=None if spec.effect == "strokes" else canvas0,
        from_step=heat_from,
    )
    master = out.with_name(f".{out.name}.master.mp4")
    done = 0
    last: np.ndarray | None = None
    encoder: FrameEncoder | None = None
    start_rgb: torch.Tensor | None = None
    try:
        if lead_in:
            # The opening still, decoded once however long it is held (a transition's
            # half second of source picture was 15 decodes of one canvas); blank paper
            # needs no decode at all.
            rgb = torch.zeros(1, 3, height * decoder.scale, width * decoder.scale, device=plan.device)
            if painted.any():
                rgb = start_rgb = decoder.decode_float(canvas0[None])
            still = to_uint8(lay_on_paper(rgb, painted[None], paper))[0]
            encoder = _encoder(master, still, spec)
            for _ in range(lead_in):
                encoder.write(still)
                done += 1
                if on_frame is not None:
                    on_frame(done, total, still)
            last = still
        rendered = render_batches(
            frames,
            decoder,
            start=canvas0,
            painted=painted,
            paper=paper,
            batch_size=spec.batch_size,
            mode=spec.render,
            tolerance_db=spec.tolerance_db,
            start_rgb=start_rgb,
        )
        for batch, rgb in rendered:
            for frame in batch:
                heat.add(frame.mask, frame.canvas, frame.step)
            images = to_uint8(rgb)
            if encoder is None:
                encoder = _encoder(master, images[0], spec)
            for image in images:
                encoder.write(image)
                done += 1
                if on_frame is not None:
                    on_frame(done, total, image)
            last = images[-1]
        if encoder is None or last is None:
            raise AnimationError("the effect produced no frames")
        for _ in range(hold):
            encoder.write(last)
            done += 1
            if on_frame is not None:
                on_frame(done, total, last)
        encoder.__exit__(None, None, None)
        encoder = None
        video = fit_to_budget(
            master,
            out,
            spec.format,
            fps=spec.fps,
            frames=done,
            width=last.shape[1],
            height=last.shape[0],
            max_bytes=spec.max_bytes,
        )
    except BaseException:
        if encoder is not None:
            encoder.__exit__(None, None, None)
        master.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        raise
    heatmap = heat.image((last.shape[1], last.shape[0]), space=space)
    return Animation(
        video=video, heatmap=heatmap, last_frame=last, frames_painted=painted_frames, effect=spec.effect
    )


def _encoder(master: Path, first: np.ndarray, spec: AnimationSpec) -> FrameEncoder:
    """The master's encoder, sized by the first frame ``[H, W, 3]``."""
    return FrameEncoder(
        master,
        size=(first.shape[1], first.shape[0]),
        fps=spec.fps,
        crf=spec.crf,
        processes=encoder_processes(spec.encoder_processes),
    ).__enter__()


def decode_image(decoder: Decoder, latent: torch.Tensor) -> Image.Image:
    """The final picture: one latent ``[C, H, W]`` decoded to a PIL image."""
    return Image.fromarray(decoder.decode(latent[None])[0], "RGB")


def save_png(image: Image.Image, path: str | Path, text: dict[str, Any] | None = None) -> Path:
    """Write a PNG with ``text`` as its tEXt metadata, atomically."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(str(key), str(value))
    tmp = path.with_name(f".{path.name}.partial")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

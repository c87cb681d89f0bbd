"""Rendering frames to RGB, exactly (one decode per frame) or fast (one decode per painting run).

Exact rendering decodes every frame's canvas. Fast rendering decodes only the last
frame of each *run* — consecutive frames painting toward the same plan step, at most
``key_every`` of them — and shows the frames inside a run as the previous key's
picture with the strokes composited in pixel space:

    rgb_f = rgb_prev + w_f · (rgb_key − rgb_prev)

where ``w_f`` is, per pixel, the fraction of latent channels the run has changed by
frame f, upsampled (bilinear) from the latent grid. A key frame is exact; frames
between keys are approximate: the decoder is not linear and a latent cell reaches
pixels beyond its own 8×8 block, and when a stroke paints one latent channel the
exact picture shifts colour, where the composite fades partway to the key.
:func:`psnr` measures the error against exact decoding (bench/bench_fast_render.py).

Both modes take the frame stream of :func:`painter.effects.paint` and yield
``(frames, rgb)`` batches, so a caller switches mode without changing its loop. A
canvas already in RGB (``decoder.vae is None``) costs nothing to decode: fast mode is
then the exact one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from painter.decode import Decoder
from painter.frame import Frame

RENDER_MODES = ("exact", "fast")

Batch = tuple[list[Frame], torch.Tensor]


def render_batches(
    frames: Iterable[Frame],
    decoder: Decoder,
    *,
    start: torch.Tensor,
    batch_size: int = 8,
    mode: str = "exact",
    key_every: int | None = None,
) -> Iterator[Batch]:
    """The frames in batches of at most ``batch_size``, each with its RGB ``[B, 3, H, W]`` in [0, 1].

    ``start`` is the canvas before the first frame (what the effect painted from).
    ``mode="fast"`` decodes one key frame per run of at most ``key_every`` frames
    painting the same step (None: no limit) and composites the rest; ``"exact"``
    decodes every frame. Frames come out in order, each exactly once.
    """
    if mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {mode!r}; use {' or '.join(RENDER_MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if key_every is not None and key_every < 1:
        raise ValueError(f"key_every must be at least 1 or None, got {key_every}")
    if mode == "exact" or decoder.vae is None:
        return _exact(frames, decoder, batch_size)
    return _fast(frames, decoder, start, batch_size, key_every)


def _exact(frames: Iterable[Frame], decoder: Decoder, batch_size: int) -> Iterator[Batch]:
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == batch_size:
            yield batch, decoder.decode_float(torch.stack([f.canvas for f in batch]))
            batch = []
    if batch:
        yield batch, decoder.decode_float(torch.stack([f.canvas for f in batch]))


class _Run:
    """Frames painting toward one step since the last key, with their coverage on the latent grid."""

    def __init__(self, step: int, layer: tuple[int, ...]) -> None:
        self.step = step
        self.layer = layer
        self.frames: list[Frame] = []
        self.cover: list[torch.Tensor] = []  # per frame: [h, w] fraction of channels changed so far
        self.changed: torch.Tensor | None = None

    def add(self, frame: Frame) -> None:
        self.changed = frame.mask.clone() if self.changed is None else self.changed | frame.mask
        self.frames.append(frame)
        self.cover.append(self.changed.float().mean(dim=0))


def _fast(
    frames: Iterable[Frame], decoder: Decoder, start: torch.Tensor, batch_size: int, key_every: int | None
) -> Iterator[Batch]:
    previous = decoder.decode_float(start[None])
    run: _Run | None = None
    for frame in frames:
        touched = tuple(frame.mask.flatten(1).any(dim=1).nonzero().flatten().tolist())
        layer = run.layer if run is not None and not touched else touched
        if run is not None and (frame.step != run.step or layer != run.layer or len(run.frames) == key_every):
            previous = yield from _finish(run, previous, decoder, batch_size)
            run = None
        if run is None:
            run = _Run(frame.step, layer)
        run.add(frame)
    if run is not None:
        yield from _finish(run, previous, decoder, batch_size)


def _finish(run: _Run, previous: torch.Tensor, decoder: Decoder, batch_size: int) -> Iterator[Batch]:
    """Yield a finished run's frames: the last decoded exactly, the others composited; return the key."""
    key = decoder.decode_float(run.frames[-1].canvas[None])
    height, width = key.shape[-2:]
    last = len(run.frames) - 1
    for lo in range(0, len(run.frames), batch_size):
        hi = min(lo + batch_size, len(run.frames))
        cover = torch.stack(run.cover[lo:hi])[:, None].to(key.device)
        if cover.shape[-2:] != (height, width):
            cover = F.interpolate(cover, size=(height, width), mode="bilinear", align_corners=False)
        rgb = previous + cover * (key - previous)
        if hi - 1 == last:
            rgb[-1] = key[0]  # the key frame is the decoded canvas itself
        yield run.frames[lo:hi], rgb
    return key


def psnr(reference: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image ``[B, ...]`` in [0, 1]; ``inf`` where identical."""
    mse = (reference.float() - approx.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)

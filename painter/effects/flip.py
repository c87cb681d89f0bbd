"""Flip (Appendix C): a page-flip sweep that ignores the content.

Each painted step, a straight sweep line crosses the image at constant speed and
reveals D_t behind it: diagonally from the top-left corner to the bottom-right, or
horizontally from left to right.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from painter.effects.params import FRAMES_PER_STEP, PACING, RELEASE, Param, resolve
from painter.effects.reveal import paint_reveal, reveal_by_threshold
from painter.frame import Frame

PARAMS: dict[str, Param] = {
    "release": RELEASE,
    "frames_per_step": FRAMES_PER_STEP,
    "pacing": PACING,
    "direction": Param("diagonal", "choice", choices=("diagonal", "horizontal")),
}


def sweep(delta: torch.Tensor, n: int, step: int, *, direction: str) -> list[torch.Tensor]:
    """Release maps: everything behind a line that moves 1/n of the way each sub-frame."""
    _, h, w = delta.shape
    # Cell centres in [0, 1] so the sweep's speed does not depend on the aspect ratio.
    ys = (torch.arange(h, device=delta.device, dtype=torch.float32)[:, None] + 0.5) / h
    xs = (torch.arange(w, device=delta.device, dtype=torch.float32)[None, :] + 0.5) / w
    position = xs.expand(h, w) if direction == "horizontal" else xs + ys
    return reveal_by_threshold(position, n)


def paint_flip(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the flip effect."""
    p = resolve("flip", PARAMS, params)
    schedule = partial(sweep, direction=p["direction"])
    return paint_reveal(plan, start, frames, schedule, p)

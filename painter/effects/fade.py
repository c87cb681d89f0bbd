"""Fade (Appendix C): the update released uniformly.

Each painted step, the canvas moves toward D_t by equal fractions of ΔD over the
step's frames, everywhere at once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from painter.effects.params import FRAMES_PER_STEP, PACING, RELEASE, Param, resolve
from painter.effects.reveal import paint_reveal
from painter.frame import Frame

PARAMS: dict[str, Param] = {"release": RELEASE, "frames_per_step": FRAMES_PER_STEP, "pacing": PACING}


def fractions(delta: torch.Tensor, n: int, step: int) -> list[float]:
    """Release maps: 1/n, 2/n, … of ΔD."""
    return [j / n for j in range(1, n)]


def paint_fade(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the fade effect."""
    p = resolve("fade", PARAMS, params)
    return paint_reveal(plan, start, frames, fractions, p)

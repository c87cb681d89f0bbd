"""Dissolve (Appendix C): cells switch to D_t one by one, by content or at random.

``mode="content"``: the cells with the largest |ΔD| are released first, each frame
an equal share of the step's change. ``mode="random"``: a random order, seeded by
``seed`` and the step (the same seed gives the same animation on any device), each
frame an equal number of cells.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import torch

from painter.effects.params import FRAMES_PER_STEP, PACING, RELEASE, Param, resolve
from painter.effects.reveal import cell_mass, paint_reveal, reveal_in_order
from painter.frame import Frame

PARAMS: dict[str, Param] = {
    "release": RELEASE,
    "frames_per_step": FRAMES_PER_STEP,
    "pacing": PACING,
    "mode": Param("content", "choice", choices=("content", "random")),
    "seed": Param(0, "int", low=0, high=2**63 - 1),
}


def scatter(delta: torch.Tensor, n: int, step: int, *, mode: str, seed: int) -> list[torch.Tensor]:
    """Release maps: cells by decreasing |ΔD| (content) or in a seeded random order."""
    _, h, w = delta.shape
    if mode == "content":
        mass = cell_mass(delta)
        return reveal_in_order(-mass, n, mass=mass)
    generator = torch.Generator().manual_seed((seed * 1_000_003 + step) % 2**63)
    order = torch.randperm(h * w, generator=generator).to(delta.device)
    return reveal_in_order(order.view(h, w), n)


def paint_dissolve(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the dissolve effect."""
    p = resolve("dissolve", PARAMS, params)
    schedule = partial(scatter, mode=p["mode"], seed=p["seed"])
    return paint_reveal(plan, start, frames, schedule, p)

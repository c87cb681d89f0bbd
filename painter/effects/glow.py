"""Glow (Appendix C): the update radiates concentrically from its mass centre.

Each painted step's differential update ΔD = D_t − Z is collected at its mass centre
(cells weighted by |ΔD|) and released in rings of growing radius; each ring carries
an equal share of the step's |ΔD|, so rings are thin where much changes and wide where
little does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from painter.effects.params import FRAMES_PER_STEP, PACING, RELEASE, Param, resolve
from painter.effects.reveal import cell_mass, paint_reveal, reveal_in_order
from painter.frame import Frame

PARAMS: dict[str, Param] = {"release": RELEASE, "frames_per_step": FRAMES_PER_STEP, "pacing": PACING}


def rings(delta: torch.Tensor, n: int, step: int) -> list[torch.Tensor]:
    """Release maps: discs around the |ΔD|-weighted centre, each holding 1/n more of the mass."""
    mass = cell_mass(delta)
    h, w = mass.shape
    ys = torch.arange(h, device=delta.device, dtype=torch.float32)[:, None]
    xs = torch.arange(w, device=delta.device, dtype=torch.float32)[None, :]
    total = mass.sum()
    if float(total) > 0:
        cy, cx = (mass * ys).sum() / total, (mass * xs).sum() / total
    else:
        cy, cx = torch.tensor((h - 1) / 2.0), torch.tensor((w - 1) / 2.0)
    distance2 = (ys - cy) ** 2 + (xs - cx) ** 2
    return reveal_in_order(distance2, n, mass=mass)


def paint_glow(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the glow effect."""
    p = resolve("glow", PARAMS, params)
    return paint_reveal(plan, start, frames, rings, p)

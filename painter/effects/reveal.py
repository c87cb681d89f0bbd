"""Releasing each painted step's change over several frames: the engine of glow, flip,
fade and dissolve (Appendix C).

The policy picks the steps (:func:`~painter.effects.policy.painted_steps`), frames are
shared out by what each step changes (raised to ``pacing``), and within a step an effect's
schedule says how much of the differential update ΔD = D_t − Z each sub-frame shows.
The step's last sub-frame is ``D_t`` itself, so the animation ends on ``plan[-1]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from painter.effects.policy import allocate_frames, painted_steps
from painter.frame import Frame

# A schedule gets ΔD [C, H, W], the number of sub-frames n and the plan step, and
# returns n − 1 release maps for sub-frames 1 … n − 1: a bool [H, W] (cells shown
# at their target) or a float (that fraction of ΔD everywhere). Sub-frame n is D_t.
Schedule = Callable[[torch.Tensor, int, int], list[torch.Tensor | float]]


def paint_reveal(
    plan: torch.Tensor,
    start: torch.Tensor,
    frames: int | None,
    schedule: Schedule,
    p: dict[str, Any],
) -> Iterator[Frame]:
    """Frames of a release effect: ``frames`` in all, or ``p["frames_per_step"]`` per painted step.

    ``p`` holds the effect's resolved ``release``, ``frames_per_step`` and ``pacing``.
    """
    steps = painted_steps(plan, start, p["release"])
    total = frames if frames is not None else p["frames_per_step"] * len(steps)
    counts = allocate_frames([change ** p["pacing"] if change > 0 else 0.0 for _, change in steps], total)
    canvas = start  # the canvas at the start of the step
    shown = start  # the last frame's canvas
    for (t, _), n in zip(steps, counts, strict=True):
        if n == 0:
            continue  # too little change for a frame of its own: it goes with the next step
        target = plan[t]
        delta = target - canvas
        for release_map in [*schedule(delta, n, t), None]:
            if release_map is None:
                new = target.clone()
            elif isinstance(release_map, float):
                new = canvas + release_map * delta
            else:
                new = torch.where(release_map, target, canvas)
            yield Frame(new, new != shown, t)
            shown = new
        canvas = target


def _snap_to_ties(sorted_keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    # Cells with equal keys (one ring, one sweep line) are shown together.
    at = sorted_keys[(counts - 1).clamp_min(0)]
    snapped = torch.searchsorted(sorted_keys, at, right=True)
    return torch.where(counts > 0, snapped, counts)


def reveal_in_order(key: torch.Tensor, n: int, *, mass: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Release maps for sub-frames 1 … n − 1 that show cells in ascending ``key [H, W]``.

    With ``mass`` (|ΔD| per cell) each sub-frame shows an equal share of the step's
    mass, so the change is released evenly; without it, an equal number of cells.
    Cells with equal keys are shown in the same sub-frame.
    """
    flat = key.flatten()
    sorted_keys, order = torch.sort(flat, stable=True)
    cells = flat.numel()
    fractions = torch.arange(1, n, device=key.device, dtype=torch.float64) / n
    if mass is not None and float(mass.sum()) > 0:
        cumulative = torch.cumsum(mass.flatten()[order].double(), dim=0)
        counts = torch.searchsorted(cumulative, fractions * cumulative[-1]) + 1
    else:
        counts = torch.floor(fractions * cells).long()
    counts = _snap_to_ties(sorted_keys, counts.clamp(0, cells))
    rank = torch.empty_like(order)
    rank[order] = torch.arange(cells, device=key.device)
    rank = rank.view_as(key)
    return [rank < c for c in counts]


def reveal_by_threshold(key: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Release maps that show cells whose ``key`` lies below a threshold moving at constant
    speed from the smallest key to the largest: a sweep that ignores the content."""
    low, high = float(key.min()), float(key.max())
    return [key <= low + (high - low) * j / n for j in range(1, n)]


def cell_mass(delta: torch.Tensor) -> torch.Tensor:
    """|ΔD| summed over channels, ``[H, W]``: how much each cell changes in this step."""
    return delta.abs().sum(dim=0, dtype=torch.float32)

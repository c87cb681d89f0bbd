"""Sharpen: the baseline the paper improves on, the plain x0-hat sequence.

One frame per plan entry showing D_t itself. With ``frames=N`` the entries are
spread over N frames: some are held (repeated with an empty mask) when N is larger
than the plan, some skipped when it is smaller; the last frame is always the last entry.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from painter.effects.params import Param, resolve
from painter.frame import Frame

PARAMS: dict[str, Param] = {}


def paint_sharpen(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the sharpen baseline."""
    resolve("sharpen", PARAMS, params)
    steps = plan.shape[0]
    count = steps if frames is None else frames
    shown = start
    for j in range(count):
        t = -(-(j + 1) * steps // count) - 1  # ⌈(j + 1)·T / N⌉ − 1: first frame entry 0 when N ≥ T
        new = plan[t].clone()
        yield Frame(new, new != shown, t)
        shown = new

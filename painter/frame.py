"""One animation frame as the effects produce it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Frame:
    """The canvas after one frame of painting.

    ``canvas`` is ``[C, H, W]`` in the plan's space; ``mask`` is a bool ``[C, H, W]``
    of the cells that changed in this frame; ``step`` indexes the plan entry being
    painted towards.
    """

    canvas: torch.Tensor
    mask: torch.Tensor
    step: int

"""Stroke and update heatmaps: where the painter put paint, one colour per channel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# One hue per latent channel (SD has 4); RGB-space trails use red, green, blue.
CHANNEL_COLOURS = (
    (230, 80, 60),
    (60, 170, 90),
    (60, 110, 230),
    (230, 190, 40),
    (170, 80, 200),
    (40, 190, 200),
)
RGB_COLOURS = ((220, 50, 50), (50, 180, 70), (50, 90, 230))


class HeatmapAccumulator:
    """Counts, per channel and cell, how often a frame changed it."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device | str = "cpu") -> None:
        self.counts = torch.zeros(shape, dtype=torch.float32, device=device)

    def add(self, mask: torch.Tensor) -> None:
        """Add one frame's change mask ``[C, H, W]``."""
        self.counts += mask.to(self.counts.device, torch.float32)

    def image(self, size: tuple[int, int], *, space: str = "latent") -> Image.Image:
        """The heatmap as an RGB picture of ``size`` (width, height) on a dark ground.

        Each channel's counts are log-scaled to [0, 1] and tinted with its colour;
        channels add, so a cell painted in every channel shows nearly white.
        """
        counts = self.counts.float().cpu()
        palette = RGB_COLOURS if space == "pixel" and counts.shape[0] == 3 else CHANNEL_COLOURS
        level = torch.log1p(counts)
        peak = level.flatten(1).amax(dim=1).clamp_min(1e-6)[:, None, None]
        level = level / peak
        colours = torch.tensor(
            [palette[c % len(palette)] for c in range(counts.shape[0])], dtype=torch.float32
        )
        rgb = torch.einsum("chw,cd->dhw", level, colours) / max(1.0, counts.shape[0] / 2)
        ground = torch.tensor((18.0, 18.0, 24.0)).view(3, 1, 1)
        rgb = (ground + rgb).clamp(0, 255)
        width, height = size
        rgb = F.interpolate(rgb[None], size=(height, width), mode="nearest")[0]
        array = rgb.round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")

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
        self.counts.add_(mask.to(self.counts.device))  # bool adds as 0/1 without a float copy

    def image(self, size: tuple[int, int], *, space: str = "latent") -> Image.Image:
        """The heatmap as an RGB picture of ``size`` (width, height) on a dark ground.

        Each channel's counts are scaled by their 99th percentile and tinted with the
        channel's colour; channels add. When every stroke painted all channels at once
        (pixel-space painting) one channel says it all, shown on a heat colour scale.
        """
        counts = self.counts.float().cpu()
        joint = bool((counts == counts[:1]).all())
        if joint:
            level = _normalise(counts[:1])[0]
            rgb = _heat_colours(level)
        else:
            palette = RGB_COLOURS if space == "pixel" and counts.shape[0] == 3 else CHANNEL_COLOURS
            level = _normalise(counts)
            colours = torch.tensor(
                [palette[c % len(palette)] for c in range(counts.shape[0])], dtype=torch.float32
            )
            rgb = torch.einsum("chw,cd->dhw", level, colours) / max(1.0, counts.shape[0] / 2)
            rgb = rgb + torch.tensor((18.0, 18.0, 24.0)).view(3, 1, 1)
        rgb = rgb.clamp(0, 255)
        width, height = size
        mode = "nearest" if rgb.shape[-1] < width else "area"
        rgb = F.interpolate(rgb[None], size=(height, width), mode=mode)[0]
        array = rgb.round().to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _normalise(counts: torch.Tensor) -> torch.Tensor:
    """Per channel, counts to [0, 1] against the 99th percentile, square-rooted for contrast."""
    flat = counts.flatten(1)
    top = torch.quantile(flat, 0.99, dim=1).clamp_min(1.0)[:, None, None]
    return (counts / top).clamp(0, 1).sqrt()


# A dark-to-bright heat scale (black, purple, red, orange, pale yellow).
_HEAT_STOPS = torch.tensor(
    [(10, 8, 20), (80, 18, 110), (190, 40, 70), (245, 130, 30), (252, 240, 170)], dtype=torch.float32
)


def _heat_colours(level: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` levels in [0, 1] to ``[3, H, W]`` colours on the heat scale."""
    pos = level.clamp(0, 1) * (len(_HEAT_STOPS) - 1)
    low = pos.floor().long().clamp(max=len(_HEAT_STOPS) - 2)
    frac = (pos - low)[..., None]
    rgb = _HEAT_STOPS[low] * (1 - frac) + _HEAT_STOPS[low + 1] * frac
    return rgb.permute(2, 0, 1)

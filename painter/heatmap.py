"""Stroke and update heatmaps: where, and when, the painter put paint.

The stroke heatmap (``strokes``) counts, per channel and cell, the frames that painted
it: one colour per latent channel, brighter where the brush went more often. The other
effects change every cell in every painted step, so a count would be flat; their update
heatmap shows *when* each cell got its paint instead — the frame of each change, averaged
with the size of the change as weight, from dark (early) to bright (late): glow's rings,
flip's sweep, dissolve's order and, for fade and sharpen, the details arriving last;
it is one heat scale over all channels. Pixel-space trails (R, G, B) are shown on the
heat scale too, not tinted per channel: R, G and B painted together add up to grey.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# One hue per latent channel (SD has 4).
CHANNEL_COLOURS = (
    (230, 80, 60),
    (60, 170, 90),
    (60, 110, 230),
    (230, 190, 40),
    (170, 80, 200),
    (40, 190, 200),
)


class HeatmapAccumulator:
    """Per channel and cell: how often a frame changed it or, with ``start``, when it changed."""

    def __init__(
        self,
        shape: tuple[int, int, int],
        device: torch.device | str = "cpu",
        *,
        start: torch.Tensor | None = None,
    ) -> None:
        self.counts = torch.zeros(shape, dtype=torch.float32, device=device)
        # With a start canvas: Σ |canvas − previous canvas| in counts, and the same weighted
        # by the frame's index in timed; their ratio is when the cell changed, on average.
        self._previous = None if start is None else start.detach().to(device, torch.float32)
        self.timed = torch.zeros_like(self.counts) if start is not None else None
        self.frames = 0

    def add(self, mask: torch.Tensor, canvas: torch.Tensor | None = None) -> None:
        """Add one frame: its change mask ``[C, H, W]``, and its canvas when weighing by change."""
        self.frames += 1
        if self._previous is None or self.timed is None:
            self.counts.add_(mask.to(self.counts.device))  # bool adds as 0/1 without a float copy
            return
        if canvas is None:
            raise ValueError("an update heatmap (made with start=) needs each frame's canvas")
        canvas = canvas.detach().to(self.counts.device, torch.float32)
        change = (canvas - self._previous).abs_()
        self.counts.add_(change)
        self.timed.add_(change, alpha=float(self.frames))
        self._previous = canvas

    def image(self, size: tuple[int, int], *, space: str = "latent") -> Image.Image:
        """The heatmap as an RGB picture of ``size`` (width, height) on a dark ground.

        Stroke counts are scaled by each channel's 99th percentile and each channel is
        tinted with its colour; channels add. When every stroke painted all channels at
        once (joint strokes) one channel says it all, and in pixel space the channels
        are summed; those, and update times (over all channels), are shown on a heat
        colour scale.
        """
        counts = self.counts.float().cpu()
        if self.timed is None:
            level = _normalise(counts.sum(dim=0, keepdim=True) if space == "pixel" else counts)
        else:
            # Mean frame of the change over all channels, stretched from the earliest
            # cells (1st percentile) to the latest (99th); unchanged cells stay dark.
            counts = counts.sum(dim=0, keepdim=True)
            when = self.timed.float().cpu().sum(dim=0, keepdim=True) / counts.clamp_min(1e-12)
            low, high = (torch.quantile(when.flatten(1), q, dim=1)[:, None, None] for q in (0.01, 0.99))
            level = ((when - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
            level = torch.where(counts > 0, level, 0.0)
        if bool((level == level[:1]).all()):
            rgb = _heat_colours(level[0])
        else:
            tints = [CHANNEL_COLOURS[c % len(CHANNEL_COLOURS)] for c in range(counts.shape[0])]
            colours = torch.tensor(tints, dtype=torch.float32)
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

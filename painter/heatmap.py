"""Stroke and update heatmaps: where, and when, the painter put paint.

The stroke heatmap (``strokes``) counts, per channel and cell, the frames that painted
it: one colour per latent channel, brighter where the brush went more often. The other
effects change every cell in every painted step, so a count would be flat; their update
heatmap shows *when* each cell got its paint instead — the frame of each change, averaged
with the size of the change as weight, from dark (early) to bright (late): glow's rings,
flip's sweep, dissolve's order and, for fade and sharpen, the details arriving last;
it is one heat scale over all channels. Pixel-space trails (R, G, B) are shown on the
heat scale too, not tinted per channel: R, G and B painted together add up to grey.

A transition (``from_step``: the plan index where the destination's half starts) counts
only the destination's half: the source un-painting says nothing of where the new
picture's paint went. Its steps each change every cell a little, so the frame of a
change mostly tells which step it came from and every effect looked the same (edges
late); the update heatmap of a transition shows instead *when within its step* each
cell got its paint — glow's rings, flip's sweep, dissolve's order — and, for effects
that release a step everywhere at once (fade, sharpen), the frame as above.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# A transition's heatmap shows the within-step timing when it spans at least this much of
# a step between its 1st and 99th percentile cells (glow 0.93, flip 0.86, dissolve 0.78;
# fade 0.05: it changes every cell in every sub-frame).
PHASE_SPREAD = 0.25

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
        from_step: int | None = None,
    ) -> None:
        self.counts = torch.zeros(shape, dtype=torch.float32, device=device)
        # With a start canvas: Σ |canvas − previous canvas| in counts, and the same weighted
        # by the frame's index in timed; their ratio is when the cell changed, on average.
        self._previous = None if start is None else start.detach().to(device, torch.float32)
        self.timed = torch.zeros_like(self.counts) if start is not None else None
        self.frames = 0
        self.from_step = from_step
        # Transitions: Σ |change| × (sub-frame / sub-frames of its step), per cell over all
        # channels, gathered per step (its length is known when the next step begins).
        self.phased: torch.Tensor | None = None
        self._step: int | None = None
        self._step_frames = 0
        self._step_timed: torch.Tensor | None = None

    def add(self, mask: torch.Tensor, canvas: torch.Tensor | None = None, step: int | None = None) -> None:
        """Add one frame: its change mask ``[C, H, W]``, its canvas when weighing by change,
        and its plan step (needed with ``from_step``)."""
        self.frames += 1
        counted = self.from_step is None or (step is not None and step >= self.from_step)
        if self.from_step is not None and step is None:
            raise ValueError("a transition's heatmap (made with from_step=) needs each frame's plan step")
        if self._previous is None or self.timed is None:
            if counted:
                self.counts.add_(mask.to(self.counts.device))  # bool adds as 0/1 without a float copy
            return
        if canvas is None:
            raise ValueError("an update heatmap (made with start=) needs each frame's canvas")
        canvas = canvas.detach().to(self.counts.device, torch.float32)
        change = (canvas - self._previous).abs_()
        self._previous = canvas
        if not counted:
            return
        self.counts.add_(change)
        self.timed.add_(change, alpha=float(self.frames))
        if self.from_step is not None:
            if step != self._step:
                self._close_step()
                self._step, self._step_frames = step, 0
            self._step_frames += 1
            cell = change.sum(dim=0)
            if self._step_timed is None:
                self._step_timed = torch.zeros_like(cell)
            self._step_timed.add_(cell, alpha=float(self._step_frames))

    def _close_step(self) -> None:
        """Fold the finished step's sub-frame times, as fractions of its length, into ``phased``."""
        if self._step_timed is None or not self._step_frames:
            return
        part = self._step_timed / self._step_frames
        self.phased = part if self.phased is None else self.phased.add_(part)
        self._step_timed = None

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
            phase = self._phase(counts)
            if phase is not None:
                when = phase
            level = _stretch(when, counts > 0)
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

    def _phase(self, counts: torch.Tensor) -> torch.Tensor | None:
        """A transition's mean time of change within its step ``[1, H, W]``, when it has a
        spatial pattern (spread over ``PHASE_SPREAD`` of a step); otherwise None."""
        self._close_step()
        if self.from_step is None or self.phased is None:
            return None
        phase = (self.phased.float().cpu() / counts[0].clamp_min(1e-12))[None]
        changed = phase[counts > 0]
        if changed.numel() < 2:
            return None
        low, high = (float(torch.quantile(changed, q)) for q in (0.01, 0.99))
        return phase if high - low >= PHASE_SPREAD else None


def _stretch(when: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """Times ``[1, H, W]`` to [0, 1] from the earliest cells (1st percentile) to the latest
    (99th); cells that never changed stay dark."""
    low, high = (torch.quantile(when.flatten(1), q, dim=1)[:, None, None] for q in (0.01, 0.99))
    level = ((when - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return torch.where(changed, level, 0.0)


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

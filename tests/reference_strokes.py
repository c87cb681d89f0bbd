"""A straightforward, slow implementation of the strokes effect (Alg. 1), the tests' oracle.

It follows Alg. 1 line by line and recomputes everything for every stroke from the
whole canvas: the gain, the region, the move cost as a fresh Gaussian around the
last stroke, the neighbourhood sums, the round brush's weights over the whole
canvas. Nothing is incremental, windowed or batched, so it is easy to check against
the paper; painter.effects.strokes must produce the same strokes and frames.

It shares with the fast painter only what defines the algorithm: the parameter table,
the move-cost floor, the tie tolerance, the brush's feather profile and the Stroke type.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from painter.effects.params import resolve
from painter.effects.strokes import MOVE_COST_FLOOR, PARAMS, TIE_RTOL, Stroke, brush_weight
from painter.frame import Frame


def _cell_gain(canvas: torch.Tensor, target: torch.Tensor, cell: int) -> torch.Tensor:
    """|Z − D| averaged over cell×cell blocks (partial blocks average their own pixels), float64."""
    diff = (canvas - target).abs().double()
    if cell == 1:
        return diff
    ones = torch.ones_like(diff)
    sums = F.avg_pool2d(diff[None], cell, ceil_mode=True, divisor_override=1)[0]
    counts = F.avg_pool2d(ones[None], cell, ceil_mode=True, divisor_override=1)[0]
    return sums / counts


def _neighbourhood_sums(v: torch.Tensor, k: int) -> torch.Tensor:
    """Σ of ``v`` over the k×k neighbourhood of every cell, zero outside the grid."""
    h = k // 2
    padded = F.pad(v, (h, h, h, h))
    out = torch.zeros_like(v)
    for dy in range(k):
        for dx in range(k):
            out += padded[dy : dy + v.shape[0], dx : dx + v.shape[1]]
    return out


def _move_cost(shape: tuple[int, int], y: int, x: int, sigma: float) -> torch.Tensor:
    """Inverse-Gaussian move-cost multiplier around the stroke at (y, x)."""
    yy = torch.arange(shape[0], dtype=torch.float64)[:, None]
    xx = torch.arange(shape[1], dtype=torch.float64)[None, :]
    d2 = (yy - y) ** 2 + (xx - x) ** 2
    return MOVE_COST_FLOOR + (1.0 - MOVE_COST_FLOOR) * torch.exp(-d2 / (2.0 * sigma * sigma))


def _round_weight(h: int, w: int, y: int, x: int, p: dict) -> torch.Tensor:
    """The round brush's weight at every pixel of the canvas for a stroke at cell (y, x)."""
    s, k = p["cell"], p["neighbourhood"]
    cy, cx = y * s + (s - 1) / 2.0, x * s + (s - 1) / 2.0
    yy = torch.arange(h, dtype=torch.float64)[:, None] - cy
    xx = torch.arange(w, dtype=torch.float64)[None, :] - cx
    distance = torch.sqrt(yy**2 + xx**2)
    inner = k * s / 2.0
    weight = brush_weight(distance.numpy(), inner, p["brush_scale"] * inner)
    return torch.from_numpy(weight).float()


def reference_strokes(plan: torch.Tensor, start: torch.Tensor | None = None, **params) -> list[Stroke]:
    """Alg. 1 along ``plan``: the strokes in order (what the benchmark times)."""
    return _run(plan, start, False, params)[0]


def reference_frames(
    plan: torch.Tensor, start: torch.Tensor | None = None, **params
) -> tuple[list[Stroke], list[Frame]]:
    """Alg. 1 along ``plan``: the strokes, and the frames with ``frames=None`` grouping
    (one frame per ``strokes_per_frame`` strokes of one step and channel, then the flush)."""
    return _run(plan, start, True, params)


def _run(
    plan: torch.Tensor, start: torch.Tensor | None, record: bool, params: dict
) -> tuple[list[Stroke], list[Frame]]:
    p = resolve("strokes", PARAMS, params)
    T, C, H, W = plan.shape
    s, k, theta = p["cell"], p["neighbourhood"], p["theta"]
    Z = torch.zeros(C, H, W, dtype=plan.dtype) if start is None else start.clone()
    largest = 0.0
    strokes: list[Stroke] = []
    masks: list[torch.Tensor] = []  # per stroke: the cells it touched
    canvases: list[torch.Tensor] = []  # per stroke: the canvas after it
    for t in range(T):
        D = plan[t]
        # Policy P.
        total = float((Z - D).abs().double().sum(dim=(1, 2)).sum())
        admitted = total >= p["release"] * largest
        largest = max(largest, total)
        if not admitted:
            continue
        channel_totals = [float((Z[c] - D[c]).abs().double().sum()) for c in range(C)]
        if p["channels"] == "joint":
            layers = [list(range(C))]
        else:
            order = sorted(range(C), key=lambda c: -channel_totals[c])
            layers = [[c] for c in order]
        budget = p["step_budget"]
        for chans in layers:
            gain = _cell_gain(Z[chans], D[chans], s).sum(dim=0)
            R = gain > theta
            if not R.any():
                continue
            M = torch.ones_like(gain)
            while bool(R.any()) and (budget is None or budget > 0):
                G = _cell_gain(Z[chans], D[chans], s).sum(dim=0) * R
                V = G * M
                S = _neighbourhood_sums(V, k)
                best = S.max()
                if best <= 0:
                    break
                first = int(torch.nonzero((S >= best * (1.0 - TIE_RTOL)).flatten())[0])
                y, x = divmod(first, S.shape[1])
                strokes.append(Stroke(t, -1 if p["channels"] == "joint" else chans[0], y, x))
                if budget is not None:
                    budget -= 1
                mask = torch.zeros(C, H, W, dtype=torch.bool)
                y0, y1 = max(0, y - k // 2), y + k // 2 + 1
                x0, x1 = max(0, x - k // 2), x + k // 2 + 1
                if p["brush"] == "square":
                    for c in chans:
                        Z[c, y0 * s : y1 * s, x0 * s : x1 * s] = D[c, y0 * s : y1 * s, x0 * s : x1 * s]
                        mask[c, y0 * s : y1 * s, x0 * s : x1 * s] = True
                else:
                    w = _round_weight(H, W, y, x, p).to(plan.dtype)
                    for c in chans:
                        Z[c] = Z[c] + w * (D[c] - Z[c])
                        mask[c] = w > 0
                R[y0:y1, x0:x1] = False
                if p["move_sigma"] > 0:
                    M = _move_cost(tuple(gain.shape), y, x, p["move_sigma"])
                if record:
                    masks.append(mask)
                    canvases.append(Z.clone())
    frames: list[Frame] = []
    if not record:
        return strokes, frames
    i = 0
    while i < len(strokes):
        j = i
        mask = torch.zeros(C, H, W, dtype=torch.bool)
        while (
            j < len(strokes)
            and j - i < p["strokes_per_frame"]
            and (strokes[j].step, strokes[j].channel) == (strokes[i].step, strokes[i].channel)
        ):
            mask |= masks[j]
            j += 1
        frames.append(Frame(canvases[j - 1], mask, strokes[i].step))
        i = j
    frames.append(Frame(plan[-1].clone(), Z != plan[-1], T - 1))
    return strokes, frames


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x [C, H, W]`` (reflected borders)."""
    if sigma < 0.3:
        return x.clone()
    r = min(int(3 * sigma) + 1, min(x.shape[1:]) - 1)
    taps = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = taps / taps.sum()
    c = x.shape[0]
    y = F.pad(x[None], (r, r, 0, 0), mode="reflect")
    y = F.conv2d(y, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.pad(y, (0, 0, r, r), mode="reflect")
    return F.conv2d(y, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)[0]


def converging_plan(steps: int = 30, channels: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A trail shaped like SD's x0-hat: coarse blobs first, detail later, most change early.

    The final picture has per-channel std about 1 (like SD latents times the VAE's
    scaling factor); step t shows it low-passed (blur shrinking fast) and faded in,
    plus a little step noise, so nearly all the change happens in the first few steps.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (channels, size, size)
    final = _blur(torch.randn(shape, generator=g), size / 16)
    final = final / final.std() * 0.9 + 0.4 * torch.randn(shape, generator=g)
    trail = []
    for t in range(steps - 1):
        progress = 1.0 - math.exp(-(t + 1) / 1.5)
        coarse = _blur(final, size / 8 * math.exp(-t / 1.5))
        noise = (0.1 * (1.0 - progress) + 0.005) * torch.randn(shape, generator=g)
        trail.append(progress * coarse + noise)
    trail.append(final)
    return torch.stack(trail)

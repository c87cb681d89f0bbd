"""Strokes: the paper's Alg. 1 with the move cost of Appendix B.

Per plan step ``t`` (the target ``D_t``):

1. Policy P (:class:`~painter.effects.policy.ReleasePolicy`): paint the step only if
   Σ|Z − D_t| is at least ``release`` × the largest total seen at an earlier step;
   otherwise the difference stays as residue for a later step. The channels C̄ to
   paint are those with a cell whose gain exceeds θ, largest total gain first (ties:
   lower channel first).
2. For each channel c in C̄: R = cells whose gain G = |Z_c − D_t,c| exceeds θ;
   M = 1. Until R is empty (no cell of R has gain left) or the step's stroke budget
   E is spent: V = G·M on R (G is 0 outside R); the stroke goes to the cell whose
   k×k neighbourhood N has the largest Σ V (zero outside the canvas); Z ← D_t on N;
   R ← R \\ N; M ← the move cost around the stroke.
3. After the last step the residue is flushed: the last frame is ``plan[-1]``.

Parameters: θ ``theta``, N ``neighbourhood`` (cells per side, odd), E
``step_budget`` (strokes per step, all channels together; None: unlimited), release
``release``, σ of the move cost ``move_sigma`` (cells; 0 turns the move cost off),
``strokes_per_frame``. In the code: R ``region``, G ``gain`` (``restricted``: G on R),
M ``move``, V ``motivation``, Σ_N V ``sums``, Z ``canvas``, D_t ``plan[t]``.

Move cost: the effort of moving the brush grows with distance, so the motivation
multiplier is an inverse Gaussian of the cost, ``M = f + (1 − f)·exp(−d²/2σ²)``,
d the distance in cells from the last stroke. The floor ``f`` =
:data:`MOVE_COST_FLOOR` keeps far cells reachable: a distant cell wins only when its
gain is more than 1/f times the nearby gain, so the brush finishes an area before it
jumps, as a painter would.

Ties: a neighbourhood sum within a relative :data:`TIE_RTOL` of the maximum counts
as tied with it, and the first tied cell in row-major order wins. The tolerance
makes the choice independent of floating-point summation order, so any correct
implementation (tests/reference_strokes.py) picks the same strokes.

Pixel-space options (the closed-form painter paints RGB pictures): ``channels="joint"``
paints every channel with one stroke (gain summed over channels, one pass per step,
strokes have ``channel == -1``); ``cell`` > 1 makes decisions on a grid of
cell×cell blocks (gain = mean |Z − D| over the block; the neighbourhood counts
cells; canvas and masks stay full resolution); ``brush="round"`` paints a feathered
disc of radius ``brush_scale`` × half the neighbourhood, blending Z ← Z + w·(D − Z),
so neighbouring strokes overlap and leave no gaps; the k×k cells it claims leave R
as usual, and the frame mask marks where w > 0.

Speed: the stroke choice is a long chain of small dependent argmax decisions, so it
runs on the CPU whatever the plan's device (one copy of the plan, no per-stroke device
syncs). For the square brush each channel's loop runs compiled with numba
(:mod:`painter.effects.strokes_compiled`: stroke by stroke in a window around the last
stroke, provably the same choice as the whole grid); the round brush, and any plan when
numba cannot be imported, use the NumPy loop here, where each stroke updates only its
own cells and the move cost is a shifted view into one precomputed Gaussian table. Both
choose identical strokes. The environment variable ``LATENT_PAINTER_PLANNER`` picks
the loop for each plan: ``auto`` (the default: compiled when numba imports),
``numpy`` (always the NumPy loop) or ``compiled`` (an error when numba is missing). The
frames are painted on the plan's device by replaying the strokes.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import numpy as np
import torch

from painter.effects.params import RELEASE, Param, check_inputs, resolve
from painter.effects.policy import ReleasePolicy, spread
from painter.frame import Frame

MOVE_COST_FLOOR = 0.1
TIE_RTOL = 1e-9
PLANNER_ENV = "LATENT_PAINTER_PLANNER"
PLANNERS = ("auto", "numpy", "compiled")

log = logging.getLogger(__name__)

PARAMS: dict[str, Param] = {
    "theta": Param(0.08, "float", low=0.0),
    "neighbourhood": Param(3, "int", low=1, odd=True),
    "release": RELEASE,
    "move_sigma": Param(6.0, "float", low=0.0),
    "strokes_per_frame": Param(1, "int", low=1),
    "step_budget": Param(None, "int", low=1, optional=True),
    "channels": Param("each", "choice", choices=("each", "joint")),
    "cell": Param(1, "int", low=1),
    "brush": Param("square", "choice", choices=("square", "round")),
    "brush_scale": Param(1.5, "float", low=1.0),
}


@dataclass(frozen=True)
class Stroke:
    """One stroke: the plan step it paints toward, its channel (-1: all) and its cell."""

    step: int
    channel: int
    y: int  # decision-grid row of the neighbourhood's centre
    x: int  # decision-grid column


def brush_weight(distance: np.ndarray, inner: float, outer: float) -> np.ndarray:
    """The round brush's weight at ``distance`` pixels from its centre (float64 in, float64 out).

    1 inside ``inner``, 0 beyond ``outer``, a smoothstep between them (the feather).
    """
    if outer <= inner:
        return (distance <= inner).astype(np.float64)
    ramp = np.clip((outer - distance) / (outer - inner), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


class Geometry:
    """Where a stroke at decision cell (y, x) claims cells and puts paint."""

    def __init__(self, shape: tuple[int, int, int], cell: int, neighbourhood: int, brush: str, scale: float):
        _, self.height, self.width = shape
        self.cell = cell
        self.k = neighbourhood
        self.half = neighbourhood // 2
        self.grid = (-(-self.height // cell), -(-self.width // cell))
        self.window: np.ndarray | None = None
        if brush == "round":
            inner = neighbourhood * cell / 2.0
            outer = scale * inner
            reach = math.ceil(outer) + 1
            # Pixel offsets from the stroke cell's top-left pixel; the cell's centre sits
            # at (cell - 1) / 2 from it, the same for every cell, so one window fits all.
            offsets = np.arange(-reach, cell + reach, dtype=np.float64) - (cell - 1) / 2.0
            distance = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2)
            weight = brush_weight(distance, inner, outer)
            used = np.flatnonzero(weight.any(axis=0))
            lo, hi = int(used[0]), int(used[-1]) + 1
            self.window = weight[lo:hi, lo:hi].astype(np.float32)
            self.window_origin = lo - reach
        # Pixel spans of a stroke at each grid row / column, looked up per stroke.
        self.rows = [self._span(i, self.height) for i in range(self.grid[0])]
        self.cols = [self._span(i, self.width) for i in range(self.grid[1])]

    def _span(self, i: int, size: int) -> tuple[int, int, slice | None]:
        s = self.cell
        if self.window is None:
            return max(0, i - self.half) * s, min(size, (i + self.half + 1) * s), None
        first = i * s + self.window_origin
        lo, hi = max(0, first), min(size, first + self.window.shape[0])
        return lo, hi, slice(lo - first, hi - first)

    def footprint(self, y: int, x: int) -> tuple[int, int, int, int, tuple[slice, slice] | None]:
        """Pixel rows and columns ``(y0, y1, x0, x1)`` the stroke at cell (y, x) paints, and
        the slice of the round brush's weight window over them (None for the square brush)."""
        y0, y1, wy = self.rows[y]
        x0, x1, wx = self.cols[x]
        return y0, y1, x0, x1, (None if wy is None else (wy, wx))


def block_mean(absdiff: np.ndarray, cell: int) -> np.ndarray:
    """Mean of ``absdiff [..., h, w]`` over cell×cell blocks, float64; partial blocks at the
    bottom and right edges average only their own pixels."""
    if cell == 1:
        return absdiff.astype(np.float64, copy=False)
    h, w = absdiff.shape[-2:]
    gh, gw = -(-h // cell), -(-w // cell)
    padded = np.zeros((*absdiff.shape[:-2], gh * cell, gw * cell), dtype=np.float64)
    padded[..., :h, :w] = absdiff
    sums = padded.reshape(*absdiff.shape[:-2], gh, cell, gw, cell).sum(axis=(-3, -1))
    rows = np.minimum(cell, h - cell * np.arange(gh))
    cols = np.minimum(cell, w - cell * np.arange(gw))
    return sums / (rows[:, None] * cols[None, :])


def _numpy_dtype(dtype: torch.dtype) -> torch.dtype:
    # The planner mirrors the canvas arithmetic in the plan's own precision where
    # NumPy has it, so its picture of the canvas is the painted one.
    return dtype if dtype in (torch.float16, torch.float32, torch.float64) else torch.float32


@cache
def _import_compiled() -> ModuleType | ImportError:
    """The compiled loop's module, or why it cannot be imported (asked once per process)."""
    try:
        from painter.effects import strokes_compiled
    except ImportError as exc:  # numba missing, or built for another NumPy
        log.warning("strokes: numba unavailable (%s); the square brush uses the slower NumPy loop", exc)
        return exc
    return strokes_compiled


def compiled_loop() -> ModuleType | None:
    """:mod:`~painter.effects.strokes_compiled` when the square brush's loop is to run
    compiled (see ``LATENT_PAINTER_PLANNER`` in the module docstring), else None."""
    choice = os.environ.get(PLANNER_ENV, "").strip().lower() or "auto"
    if choice not in PLANNERS:
        raise ValueError(f"{PLANNER_ENV}={choice!r}: choose one of {', '.join(PLANNERS)}")
    if choice == "numpy":
        return None
    module = _import_compiled()
    if isinstance(module, ImportError):
        if choice == "compiled":
            raise ImportError(f"{PLANNER_ENV}=compiled needs numba ({module}); pip install numba") from module
        return None
    return module


class _Planner:
    """Runs Alg. 1 on a CPU copy of the canvas and returns the strokes in order."""

    def __init__(self, plan: torch.Tensor, start: torch.Tensor, p: dict) -> None:
        dtype = _numpy_dtype(plan.dtype)
        self.plan = plan.detach().to("cpu", dtype).contiguous().numpy()
        # A NumPy copy, not torch's clone: one parallel torch op fewer (see run()).
        self.canvas = start.detach().to("cpu", dtype).contiguous().numpy().copy()
        self.p = p
        self.geo = Geometry(
            tuple(plan.shape[1:]), p["cell"], p["neighbourhood"], p["brush"], p["brush_scale"]
        )
        gh, gw = self.geo.grid
        h = self.geo.half
        self.padded_shape = (gh + 2 * h, gw + 2 * h)
        self.move_table = self._move_table() if p["move_sigma"] > 0 else None
        self.compiled = compiled_loop() if self.geo.window is None else None
        # Strokes the compiled loop decided in each of its windows, then on the whole grid.
        self.decided_by = np.zeros(0 if self.compiled is None else len(self.compiled.WINDOWS) + 1, np.int64)

    def _move_table(self) -> np.ndarray:
        """M for every offset a stroke can have from any padded cell; M around a stroke is a view."""
        ph, pw = self.padded_shape
        dy = np.arange(-(ph - 1), ph, dtype=np.float64)
        dx = np.arange(-(pw - 1), pw, dtype=np.float64)
        d2 = dy[:, None] ** 2 + dx[None, :] ** 2
        sigma = self.p["move_sigma"]
        return MOVE_COST_FLOOR + (1.0 - MOVE_COST_FLOOR) * np.exp(-d2 / (2.0 * sigma * sigma))

    def run(self) -> list[Stroke]:
        p = self.p
        policy = ReleasePolicy(p["release"])
        strokes: list[Stroke] = []
        for t in range(self.plan.shape[0]):
            # All in NumPy, no torch op per step: on a busy machine each of torch's parallel
            # ops can wait a whole scheduler slice, which costs more than a small plan's strokes.
            # Totals summed in another order than the reference's differ only in the last bits,
            # and equal channels still tie exactly (a stable sort keeps the lower one first).
            absdiff = np.abs(self.canvas - self.plan[t]).astype(np.float64)
            channel_totals = absdiff.sum(axis=(1, 2))
            if not policy.admit(float(channel_totals.sum())):
                continue
            gains = block_mean(absdiff, p["cell"])
            if p["channels"] == "joint":
                layers = [(-1, gains.sum(axis=0))]
            else:
                order = np.argsort(-channel_totals, kind="stable").tolist()
                layers = [(c, gains[c]) for c in order]
            budget = p["step_budget"]
            for channel, gain in layers:
                if budget is not None and budget <= 0:
                    break
                if not (gain > p["theta"]).any():
                    continue
                painted = self._paint_layer(t, channel, gain, budget, strokes)
                if budget is not None:
                    budget -= painted
        return strokes

    def _paint_layer(
        self, t: int, channel: int, gain: np.ndarray, budget: int | None, out: list[Stroke]
    ) -> int:
        """Alg. 1's inner loop for one channel (or all, joint); appends strokes, returns how many."""
        geo, k, h = self.geo, self.geo.k, self.geo.half
        gh, gw = geo.grid
        ph, pw = self.padded_shape
        region = gain > self.p["theta"]
        # G restricted to R, with a zero border of h cells: the neighbourhood sums then
        # need no clipping, and border cells count as zero gain.
        restricted = np.zeros(self.padded_shape)
        restricted[h : h + gh, h : h + gw][region] = gain[region]
        chans = slice(None) if channel < 0 else slice(channel, channel + 1)
        if self.compiled is not None:
            return self._paint_layer_compiled(t, channel, chans, restricted, budget, out)
        motivation = np.empty(self.padded_shape)
        rows = np.empty((ph, gw))
        sums = np.empty((gh, gw))
        flat = sums.reshape(-1)
        table = self.move_table
        square = geo.window is None
        count = 0
        move: np.ndarray | None = None
        while budget is None or count < budget:
            # V = G·M, then its k×k neighbourhood sums, separably (rows, then columns).
            if move is None:
                np.copyto(motivation, restricted)
            else:
                np.multiply(restricted, move, out=motivation)
            np.copyto(rows, motivation[:, 0:gw])
            for i in range(1, k):
                np.add(rows, motivation[:, i : i + gw], out=rows)
            np.copyto(sums, rows[0:gh])
            for i in range(1, k):
                np.add(sums, rows[i : i + gh], out=sums)
            best = flat.max()
            if best <= 0.0:
                break  # no cell of R has gain left
            y, x = divmod(int(np.argmax(flat >= best * (1.0 - TIE_RTOL))), gw)
            out.append(Stroke(t, channel, y, x))
            count += 1
            self._apply(t, chans, y, x)
            # R minus N; in padded coordinates the neighbourhood of (y, x) starts at (y, x).
            if square:
                # A square stroke copies D onto whole cells: their gain is now exactly zero.
                restricted[y : y + k, x : x + k] = 0.0
            else:
                region[max(0, y - h) : y + h + 1, max(0, x - h) : x + h + 1] = False
                self._regain(t, chans, y, x, region, restricted)
            if table is not None:
                move = table[ph - 1 - y - h : 2 * ph - 1 - y - h, pw - 1 - x - h : 2 * pw - 1 - x - h]
        return count

    def _paint_layer_compiled(
        self,
        t: int,
        channel: int,
        chans: slice,
        restricted: np.ndarray,
        budget: int | None,
        out: list[Stroke],
    ) -> int:
        """The square brush's loop, compiled: the same strokes as the NumPy loop."""
        geo = self.geo
        picks, painted = self.compiled.square_layer(
            restricted,
            self.move_table,
            self.p["move_sigma"],
            MOVE_COST_FLOOR,
            geo.k,
            geo.grid,
            budget,
            TIE_RTOL,
            self.decided_by,
        )
        out.extend(Stroke(t, channel, y, x) for y, x in picks.tolist())
        if len(picks):
            # Every square stroke of the layer copies D_t, so painting their union at once
            # leaves the canvas the strokes one by one would.
            s = geo.cell
            pixels = painted.repeat(s, axis=0).repeat(s, axis=1)[: geo.height, : geo.width]
            np.copyto(self.canvas[chans], self.plan[t, chans], where=pixels)
        return len(picks)

    def _apply(self, t: int, chans: slice, y: int, x: int) -> None:
        y0, y1, x0, x1, win = self.geo.footprint(y, x)
        z = self.canvas[chans, y0:y1, x0:x1]
        d = self.plan[t, chans, y0:y1, x0:x1]
        if win is None:
            z[...] = d
        else:
            w = self.geo.window[win].astype(z.dtype)
            z[...] = z + w * (d - z)

    def _regain(
        self, t: int, chans: slice, y: int, x: int, region: np.ndarray, restricted: np.ndarray
    ) -> None:
        """After a round stroke: the gain of every cell its feathered disc touched, again."""
        s, h = self.geo.cell, self.geo.half
        y0, y1, x0, x1, _ = self.geo.footprint(y, x)
        gy0, gy1, gx0, gx1 = y0 // s, -(-y1 // s), x0 // s, -(-x1 // s)
        py1, px1 = min(self.geo.height, gy1 * s), min(self.geo.width, gx1 * s)
        absdiff = np.abs(
            self.canvas[chans, gy0 * s : py1, gx0 * s : px1]
            - self.plan[t, chans, gy0 * s : py1, gx0 * s : px1]
        )
        gain = block_mean(absdiff, s).sum(axis=0)
        restricted[gy0 + h : gy1 + h, gx0 + h : gx1 + h] = np.where(region[gy0:gy1, gx0:gx1], gain, 0.0)


def plan_strokes(plan: torch.Tensor, start: torch.Tensor | None = None, **params) -> list[Stroke]:
    """The strokes Alg. 1 paints along ``plan [T, C, H, W]`` from ``start`` (default zeros), in order.

    ``params`` are the strokes effect's parameters (see :data:`PARAMS`); a stroke's
    ``(y, x)`` is a decision-grid cell (the pixel itself when ``cell`` is 1).
    """
    p = resolve("strokes", PARAMS, params)
    return _Planner(plan.detach(), check_inputs(plan, start), p).run()


class _Replay:
    """Paints strokes onto a canvas on the plan's device, a frame's worth at a time.

    Masks are drawn in NumPy on the CPU and sent to the device once per frame. Square
    strokes of one step all copy the same D_t, so their order does not matter and a
    frame applies them in one masked copy; round strokes blend, so they go one by one.
    """

    def __init__(self, plan: torch.Tensor, start: torch.Tensor, geo: Geometry) -> None:
        self.plan = plan
        self.canvas = start.clone()
        self.geo = geo
        self.shape = tuple(plan.shape[1:])
        if geo.window is not None:
            self.weight = torch.from_numpy(geo.window).to(plan.device, plan.dtype)
            self.touched = geo.window > 0

    def _mark(
        self, mask: np.ndarray, s: Stroke
    ) -> tuple[slice, int, int, int, int, tuple[slice, slice] | None]:
        y0, y1, x0, x1, win = self.geo.footprint(s.y, s.x)
        chans = slice(None) if s.channel < 0 else slice(s.channel, s.channel + 1)
        if win is None:
            mask[chans, y0:y1, x0:x1] = True
        else:
            mask[chans, y0:y1, x0:x1] |= self.touched[win]
        return chans, y0, y1, x0, x1, win

    def paint(self, group: list[Stroke]) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``group``'s strokes in order; return a fresh canvas and the frame's mask."""
        device = self.plan.device
        mask = np.zeros(self.shape, dtype=bool)
        if not group:
            return self.canvas.clone(), torch.from_numpy(mask).to(device)
        if self.geo.window is None:
            i = 0
            while i < len(group):
                step = group[i].step
                step_mask = mask if group[-1].step == step and i == 0 else np.zeros(self.shape, dtype=bool)
                while i < len(group) and group[i].step == step:
                    self._mark(step_mask, group[i])
                    i += 1
                self.canvas = torch.where(
                    torch.from_numpy(step_mask).to(device), self.plan[step], self.canvas
                )
                if step_mask is not mask:
                    mask |= step_mask
            return self.canvas, torch.from_numpy(mask).to(device)
        for s in group:
            chans, y0, y1, x0, x1, win = self._mark(mask, s)
            z = self.canvas[chans, y0:y1, x0:x1]
            d = self.plan[s.step, chans, y0:y1, x0:x1]
            # Same arithmetic as the planner's NumPy blend, so both canvases agree bit for bit.
            z.copy_(z + self.weight[win] * (d - z))
        return self.canvas.clone(), torch.from_numpy(mask).to(device)


def _frame_groups(strokes: list[Stroke], per_frame: int, frames: int | None) -> list[list[Stroke]]:
    """The strokes of each display frame (the final flush frame not included)."""
    if frames is None:
        groups: list[list[Stroke]] = []
        run_key = None
        for s in strokes:
            key = (s.step, s.channel)
            if key != run_key or len(groups[-1]) == per_frame:
                groups.append([])
                run_key = key
            groups[-1].append(s)
        return groups
    groups = [[] for _ in range(frames - 1)]
    if frames == 1:
        return groups
    for s, slot in zip(strokes, spread(len(strokes), frames - 1), strict=True):
        groups[slot].append(s)
    return groups


def paint_strokes(plan: torch.Tensor, start: torch.Tensor, frames: int | None, **params) -> Iterator[Frame]:
    """Frames of the strokes effect: one per ``strokes_per_frame`` strokes of one channel
    and step (or exactly ``frames`` frames), then the flush to ``plan[-1]``."""
    p = resolve("strokes", PARAMS, params)
    planner = _Planner(plan, start, p)
    strokes = planner.run()
    groups = _frame_groups(strokes, p["strokes_per_frame"], frames)
    replay = _Replay(plan, start, planner.geo)
    step = strokes[0].step if strokes else 0
    for group in groups:
        canvas, mask = replay.paint(group)
        step = group[-1].step if group else step
        yield Frame(canvas, mask, step)
    # The flush; with a single frame it also carries every stroke.
    _, mask = replay.paint(strokes if frames == 1 else [])
    final = plan[-1].clone()
    yield Frame(final, mask | (replay.canvas != final), plan.shape[0] - 1)

"""A proposed faster strokes planner: Alg. 1's inner loop compiled with numba, stroke by stroke in a window.

Not used by the product: this is the patch the painter benchmark measures beside the
current planner (``bench_painter.py`` adds its column when numba is importable) and
checks for identical strokes. For painter/effects/strokes.py it would replace the
square-brush branch of ``_Planner._paint_layer``, keeping the NumPy path where numba is
missing and for the round brush.

Why it is exact: each stroke's motivation sums are computed first only in a window
around the last stroke, with the same float operations in the same order as the full
grid (so every cell's value is bit-identical), and the window's choice is taken only
when no cell outside it can reach the tie band: outside a window of half-width w the
move cost is at most ``M(w + 1 − h)``, and a cell's Σ_N(G·M) is at most that times
Σ_N G, whose maximum is kept up to date (Σ_N G only changes near each stroke). Windows
of 12, 24 and 48 cells are tried in turn, then the whole grid. Why it is fast: a
stroke usually lands near the last one (that is what the move cost is for), so most
strokes cost a 27×27-cell window instead of the whole grid, in compiled loops without
NumPy's per-call overhead (which is why the same idea in NumPy was no faster).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from painter.effects import strokes as S


@njit(cache=True)
def _sums_into(restricted, table, oy, ox, use_move, k, y0, y1, x0, x1, sums):
    """Σ_N (G·M) for grid cells [y0:y1, x0:x1] into sums[y0:y1, x0:x1], with strokes.py's float order."""
    ph = y1 - y0 + k - 1
    pw = x1 - x0 + k - 1
    mot = np.empty((ph, pw))
    for py in range(ph):
        for px in range(pw):
            if use_move:
                mot[py, px] = restricted[y0 + py, x0 + px] * table[oy + y0 + py, ox + x0 + px]
            else:
                mot[py, px] = restricted[y0 + py, x0 + px]
    rows = np.empty((ph, x1 - x0))
    for py in range(ph):
        for x in range(x1 - x0):
            acc = mot[py, x]
            for i in range(1, k):
                acc = acc + mot[py, x + i]
            rows[py, x] = acc
    best = 0.0
    for y in range(y1 - y0):
        for x in range(x1 - x0):
            acc = rows[y, x]
            for i in range(1, k):
                acc = acc + rows[y + i, x]
            sums[y0 + y, x0 + x] = acc
            if acc > best:
                best = acc
    return best


@njit(cache=True)
def _box_into(restricted, k, a, b, c, e, sg):
    for y in range(a, b):
        for x in range(c, e):
            acc = 0.0
            for dy in range(k):
                for dx in range(k):
                    acc += restricted[y + dy, x + dx]
            sg[y, x] = acc


@njit(cache=True)
def _first_at_least(sums, band, y0, y1, x0, x1):
    for y in range(y0, y1):
        for x in range(x0, x1):
            if sums[y, x] >= band:
                return y, x
    return -1, -1


@njit(cache=True)
def _window_layer(
    restricted,
    table,
    use_move,
    k,
    gh,
    gw,
    budget,
    tie,
    canvas,
    plan_t,
    c0,
    c1,
    cell,
    height,
    width,
    out,
    windows,
    outside_m,
):
    h = k // 2
    ph, pw = restricted.shape
    sums = np.empty((gh, gw))
    sg = np.empty((gh, gw))
    _box_into(restricted, k, 0, gh, 0, gw, sg)
    sg_max = sg.max()
    count = 0
    ly = -1
    lx = -1
    while budget < 0 or count < budget:
        by = -1
        bx = -1
        fresh = False
        best = 0.0
        covers = False
        if ly >= 0:
            oy = ph - 1 - ly - h
            ox = pw - 1 - lx - h
            # Windows of growing size around the last stroke; each is used only when no cell
            # outside it can reach the tie band (M there is at most outside_m[tier]).
            for tier in range(len(windows)):
                w = windows[tier]
                y0 = max(0, ly - w)
                y1 = min(gh, ly + w + 1)
                x0 = max(0, lx - w)
                x1 = min(gw, lx + w + 1)
                covers = y0 == 0 and x0 == 0 and y1 == gh and x1 == gw
                best = _sums_into(restricted, table, oy, ox, True, k, y0, y1, x0, x1, sums)
                if best > 0.0:
                    band = best * (1.0 - tie)
                    ok = covers
                    if not ok:
                        ok = band > outside_m[tier] * sg_max * (1.0 + 1e-9)
                        if not ok and not fresh:
                            sg_max = sg.max()
                            fresh = True
                            ok = band > outside_m[tier] * sg_max * (1.0 + 1e-9)
                    if ok:
                        by, bx = _first_at_least(sums, band, y0, y1, x0, x1)
                        break
                elif covers:
                    break
                if covers:
                    break
            if by < 0 and best <= 0.0 and covers:
                break
        if by < 0:
            oy = ph - 1 - ly - h
            ox = pw - 1 - lx - h
            best = _sums_into(restricted, table, oy, ox, ly >= 0, k, 0, gh, 0, gw, sums)
            if best <= 0.0:
                break
            by, bx = _first_at_least(sums, best * (1.0 - tie), 0, gh, 0, gw)
        out[count, 0] = by
        out[count, 1] = bx
        count += 1
        y0 = max(0, by - h) * cell
        y1 = min(height, (by + h + 1) * cell)
        x0 = max(0, bx - h) * cell
        x1 = min(width, (bx + h + 1) * cell)
        for c in range(c0, c1):
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    canvas[c, yy, xx] = plan_t[c, yy, xx]
        for py in range(by, by + k):
            for px in range(bx, bx + k):
                restricted[py, px] = 0.0
        _box_into(restricted, k, max(0, by - k + 1), min(gh, by + k), max(0, bx - k + 1), min(gw, bx + k), sg)
        if use_move:
            ly = by
            lx = bx
    return count


class CompiledPlanner(S._Planner):
    """strokes.py's planner with the square-brush inner loop compiled; round brushes as before."""

    windows = (12, 24, 48)

    def _paint_layer(self, t, channel, gain, budget, out):
        geo = self.geo
        if geo.window is not None:
            return super()._paint_layer(t, channel, gain, budget, out)
        k, h = geo.k, geo.half
        gh, gw = geo.grid
        region = gain > self.p["theta"]
        restricted = np.zeros(self.padded_shape)
        restricted[h : h + gh, h : h + gw][region] = gain[region]
        c0, c1 = (0, self.canvas.shape[0]) if channel < 0 else (channel, channel + 1)
        table = self.move_table if self.move_table is not None else np.ones((1, 1))
        limit = budget if budget is not None else int(region.sum()) + 1
        picks = np.empty((max(limit, 1), 2), dtype=np.int64)
        sigma = self.p["move_sigma"]
        windows = np.array(self.windows, dtype=np.int64)
        d = windows + 1 - h
        # The most M can be anywhere in the neighbourhood of a cell outside each window.
        if sigma > 0:
            outside_m = S.MOVE_COST_FLOOR + (1 - S.MOVE_COST_FLOOR) * np.exp(-d * d / (2 * sigma * sigma))
        else:
            outside_m = np.ones(len(windows))
        n = _window_layer(
            restricted,
            table,
            self.move_table is not None,
            k,
            gh,
            gw,
            -1 if budget is None else budget,
            S.TIE_RTOL,
            self.canvas,
            self.plan[t],
            c0,
            c1,
            geo.cell,
            geo.height,
            geo.width,
            picks,
            windows,
            outside_m,
        )
        out.extend(S.Stroke(t, channel, int(y), int(x)) for y, x in picks[:n])
        return n


def compiled_plan_strokes(plan: torch.Tensor, start: torch.Tensor | None = None, **params) -> list[S.Stroke]:
    """``plan_strokes`` through :class:`CompiledPlanner`: the same strokes, sooner."""
    p = S.resolve("strokes", S.PARAMS, params)
    return CompiledPlanner(plan.detach(), S.check_inputs(plan, start), p).run()

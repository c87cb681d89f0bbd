"""The strokes planner's square-brush inner loop (Alg. 1, one channel), compiled with numba.

:mod:`painter.effects.strokes` calls :func:`square_layer` for each channel (or the joint
layer) of each step when numba is importable and the brush is square; the NumPy loop
there stays for the round brush, for a missing numba, and when the environment variable
``LATENT_PAINTER_PLANNER=numpy`` asks for it. Both choose identical strokes.

Why it is exact: each stroke's motivation sums Σ_N (G·M) are computed first only in a
window around the last stroke, with the same float operations in the same order as the
NumPy loop over the whole grid (rows first, then columns, left to right), so every
cell's sum is bit-identical. The window's choice is taken only when no cell outside it
can reach the tie band: outside a window of half-width w, every cell of a
neighbourhood is at least w + 1 − h cells from the last stroke, so its M is at most
``M(w + 1 − h)`` and its Σ_N (G·M) at most that times Σ_N G, whose maximum is kept up
to date (Σ_N G only changes near each stroke, and only downward). Windows of
:data:`WINDOWS` cells are tried in turn, then the whole grid; a window's tie band then
holds every candidate of the whole grid, and row-major order inside a rectangle is the
whole grid's order, so the first tied cell is the same.

Why it is fast: a stroke usually lands near the last one (that is what the move cost
is for), so most strokes cost a 25×25-cell window instead of the whole grid, in
compiled loops without NumPy's per-call overhead. The same idea in NumPy was no faster
(bench/RESULTS.md).

Compilation: every kernel takes float64 C-contiguous arrays, int64 scalars and one
bool, so each compiles once (a few seconds, on the first plan of a process) and
``cache=True`` keeps the machine code in ``__pycache__`` beside this file, or in the
user's cache directory when that is read-only, or in ``NUMBA_CACHE_DIR`` when set.
When no cache directory is writable at all (a read-only install run by a user without
a home), the kernels compile without a cache in every process instead of failing.

Threads: the kernels release the GIL (``nogil``) so a bot's event loop keeps running
while a worker thread plans, and they touch only the arrays passed in, which each call
owns; numba serialises compilation itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Half-widths (cells) of the windows tried around the last stroke before the whole grid.
WINDOWS = (12, 24, 48)


def _compile(fn):
    """``fn`` compiled without the GIL, cached on disk when some cache directory is writable."""
    try:
        return njit(cache=True, nogil=True)(fn)
    except RuntimeError:
        # numba raises "no locator available" when neither __pycache__ nor a user cache
        # directory can be written; compiling per process is slower to start, not wrong.
        return njit(cache=False, nogil=True)(fn)


@_compile
def _sums_into(restricted, table, oy, ox, use_move, k, y0, y1, x0, x1, sums):
    """Σ_N (G·M) of grid cells [y0:y1, x0:x1] into ``sums`` in the NumPy loop's float order; their max."""
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


@_compile
def _box_into(restricted, k, y0, y1, x0, x1, box):
    """Σ_N G (no move cost) of grid cells [y0:y1, x0:x1] into ``box``: the bound's ingredient."""
    for y in range(y0, y1):
        for x in range(x0, x1):
            acc = 0.0
            for dy in range(k):
                for dx in range(k):
                    acc += restricted[y + dy, x + dx]
            box[y, x] = acc


@_compile
def _first_at_least(sums, band, y0, y1, x0, x1):
    """The first cell of [y0:y1, x0:x1] in row-major order whose sum reaches ``band``."""
    for y in range(y0, y1):
        for x in range(x0, x1):
            if sums[y, x] >= band:
                return y, x
    return -1, -1


@_compile
def _layer(restricted, table, use_move, k, budget, tie, windows, outside_m, picks, painted, decided_by):
    """Alg. 1's loop over one layer; the strokes' cells go to ``picks``, returns how many."""
    h = k // 2
    ph, pw = restricted.shape
    gh, gw = painted.shape
    sums = np.empty((gh, gw))
    box = np.empty((gh, gw))
    _box_into(restricted, k, 0, gh, 0, gw, box)
    box_max = box.max()
    count = 0
    ly = -1  # the last stroke, -1 before the first one (and always without a move cost)
    lx = -1
    while budget < 0 or count < budget:
        by = -1
        bx = -1
        fresh = False  # box_max is exact (not just an upper bound) for this stroke
        best = 0.0
        covers = False
        oy = ph - 1 - ly - h  # M around the last stroke is table[oy:, ox:] (strokes.py's view)
        ox = pw - 1 - lx - h
        if ly >= 0:
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
                    # 1e-9 covers the sums' rounding (relative ~k²·eps) in the bound.
                    ok = covers or band > outside_m[tier] * box_max * (1.0 + 1e-9)
                    if not ok and not fresh:
                        box_max = box.max()  # the stale max only ever overestimates
                        fresh = True
                        ok = band > outside_m[tier] * box_max * (1.0 + 1e-9)
                    if ok:
                        by, bx = _first_at_least(sums, band, y0, y1, x0, x1)
                        decided_by[tier] += 1
                        break
                if covers:
                    break
            if by < 0 and covers:
                break  # a window held the whole grid and no cell of R has gain left
        if by < 0:
            best = _sums_into(restricted, table, oy, ox, ly >= 0, k, 0, gh, 0, gw, sums)
            if best <= 0.0:
                break  # no cell of R has gain left
            by, bx = _first_at_least(sums, best * (1.0 - tie), 0, gh, 0, gw)
            if ly >= 0:
                decided_by[len(windows)] += 1
        picks[count, 0] = by
        picks[count, 1] = bx
        count += 1
        # R minus N: in padded coordinates the neighbourhood of (by, bx) starts at (by, bx).
        for py in range(by, by + k):
            for px in range(bx, bx + k):
                restricted[py, px] = 0.0
        for gy in range(max(0, by - h), min(gh, by + h + 1)):
            for gx in range(max(0, bx - h), min(gw, bx + h + 1)):
                painted[gy, gx] = True
        # Σ_N G changed only for cells whose neighbourhood overlaps the stroke's.
        y0 = max(0, by - k + 1)
        x0 = max(0, bx - k + 1)
        _box_into(restricted, k, y0, min(gh, by + k), x0, min(gw, bx + k), box)
        if use_move:
            ly = by
            lx = bx
    return count


def square_layer(
    restricted: np.ndarray,
    move_table: np.ndarray | None,
    move_sigma: float,
    move_floor: float,
    k: int,
    grid: tuple[int, int],
    budget: int | None,
    tie_rtol: float,
    decided_by: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Alg. 1's strokes for one layer with the square brush.

    ``restricted`` is G on R, float64 ``[gh + 2h, gw + 2h]`` with a zero border of h =
    k // 2 cells (it is consumed: R's cells are zeroed as strokes claim them);
    ``move_table`` strokes.py's table of M by offset (None: no move cost), built with
    ``move_sigma`` and ``move_floor``; ``budget`` the most strokes (None: until R is
    empty). Returns the strokes' decision cells ``[n, 2]`` (row, column) in order and
    the decision cells they painted, bool ``[gh, gw]``. ``decided_by`` (int64, one more
    than :data:`WINDOWS`) counts the strokes decided in each window and, last, those
    that needed the whole grid after the windows.
    """
    gh, gw = grid
    windows = np.array(WINDOWS, dtype=np.int64)
    # The largest M anywhere in the neighbourhood of a cell outside each window.
    d = np.maximum(windows + 1 - k // 2, 0).astype(np.float64)
    if move_table is not None:
        outside_m = move_floor + (1.0 - move_floor) * np.exp(-d * d / (2.0 * move_sigma * move_sigma))
        table = move_table
    else:
        outside_m = np.ones(len(WINDOWS))
        table = np.ones((1, 1))
    limit = budget if budget is not None else int(np.count_nonzero(restricted)) + 1
    picks = np.empty((max(limit, 1), 2), dtype=np.int64)
    painted = np.zeros((gh, gw), dtype=np.bool_)
    n = _layer(
        np.ascontiguousarray(restricted, dtype=np.float64),
        np.ascontiguousarray(table, dtype=np.float64),
        move_table is not None,
        int(k),
        -1 if budget is None else int(budget),
        float(tie_rtol),
        windows,
        outside_m,
        picks,
        painted,
        decided_by,
    )
    return picks[:n], painted

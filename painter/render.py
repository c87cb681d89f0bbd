"""Painted frames to RGB on paper: exactly (a decode per frame) or adaptively (decode some, interpolate).

Decoding dominates a painting job: 300 frames through SD 1.5's VAE take longer than the
generation they animate (bench/RESULTS.md). Neighbouring frames differ by a few strokes,
so most of them can be interpolated in pixel space between frames that are decoded:

    rgb_t = rgb_lo + w_t · (rgb_hi − rgb_lo)

where ``w_t`` is, per latent cell, how far the canvas has gone from frame ``lo`` towards
frame ``hi`` (:func:`progress`), upsampled to pixels. The decoder is not linear and a
cell reaches pixels beyond its own block, so this is exact only at decoded frames.

*Adaptive* rendering checks itself. It decodes every ``span``-th frame and the last frame
of every *run* (frames painting the same step and channels: where a run changes, a cell
can hold some channels of its new value and not others, a colour no blend of two decoded
frames shows), then the midpoint of each interval, and compares that midpoint
interpolated across the whole interval with its decode, as the viewer sees it (laid on
paper). Within ``tolerance_db`` (PSNR), the frames of both halves are interpolated —
each half half as wide as the span checked; otherwise the halves are split again, down
to decoding every frame. Every decoded frame is shown, so a decoder too non-local to
interpolate costs what exact rendering costs, never more decodes; a local one costs a
fraction: 2 decodes per ``span`` frames at best.

Both modes lay frames on paper (unpainted cells show the paper, or a backdrop picture;
the last frame shows every cell) and yield ``(frames, rgb)`` batches in order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from painter.decode import DEFAULT_PAPER, Decoder, lay_on_paper
from painter.frame import Frame

RENDER_MODES = ("exact", "adaptive")

Batch = tuple[list[Frame], torch.Tensor]
Paper = tuple[int, int, int] | torch.Tensor
Covered = tuple[Frame, torch.Tensor]


def render_batches(
    frames: Iterable[Frame],
    decoder: Decoder,
    *,
    start: torch.Tensor,
    painted: torch.Tensor | None = None,
    paper: Paper = DEFAULT_PAPER,
    batch_size: int = 8,
    mode: str = "exact",
    span: int = 32,
    tolerance_db: float | None = 35.0,
    start_rgb: torch.Tensor | None = None,
) -> Iterator[Batch]:
    """The frames in order, in batches of at most ``batch_size``, with their RGB ``[B, 3, H, W]`` on paper.

    ``start`` is the canvas the effect painted from and ``painted`` (bool ``[h, w]``,
    default none) the cells already showing before the first frame. ``mode="adaptive"``
    decodes every ``span``-th frame, each run's last, and as many more as the check at
    ``tolerance_db`` asks for (None: no check — the widest interpolation, for measuring);
    ``start_rgb`` is ``start`` already decoded (``[1, 3, H, W]``), saving that decode.
    Settings are checked before any decode.
    """
    if mode not in RENDER_MODES:
        raise ValueError(f"unknown render mode {mode!r}; use {' or '.join(RENDER_MODES)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if span < 2:
        raise ValueError(f"span must be at least 2, got {span}")
    if painted is None:
        painted = torch.zeros(start.shape[-2:], dtype=torch.bool, device=start.device)
    covered = _covered(frames, painted.clone())
    if mode == "exact" or decoder.vae is None:  # an RGB canvas costs nothing to decode
        return _exact(covered, decoder, paper, batch_size)
    return _adaptive(covered, decoder, start, start_rgb, paper, batch_size, span, tolerance_db)


def _covered(frames: Iterable[Frame], painted: torch.Tensor) -> Iterator[Covered]:
    """Each frame with the cells showing by then; the last frame shows every cell."""
    it = iter(frames)
    frame = next(it, None)
    while frame is not None:
        following = next(it, None)
        painted |= frame.mask.amax(dim=0)  # any(), but 3-10x faster on CPU bool tensors
        # The finished picture shows everywhere, even where no frame changed a cell.
        yield frame, (painted.clone() if following is not None else torch.ones_like(painted))
        frame = following


def _chunks(items: Iterator[Covered], size: int) -> Iterator[list[Covered]]:
    chunk: list[Covered] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _exact(covered: Iterator[Covered], decoder: Decoder, paper: Paper, batch_size: int) -> Iterator[Batch]:
    for chunk in _chunks(covered, batch_size):
        rgb = decoder.decode_float(torch.stack([frame.canvas for frame, _ in chunk]))
        yield [frame for frame, _ in chunk], lay_on_paper(rgb, torch.stack([c for _, c in chunk]), paper)


def _adaptive(
    covered: Iterator[Covered],
    decoder: Decoder,
    start: torch.Tensor,
    start_rgb: torch.Tensor | None,
    paper: Paper,
    batch_size: int,
    span: int,
    tolerance_db: float | None,
) -> Iterator[Batch]:
    anchor = start
    anchor_rgb = (decoder.decode_float(start[None]) if start_rgb is None else start_rgb)[0]
    last = None
    # A window holds a few spans, so each round of decodes is a batch or more; its decoded
    # frames wait on the decoder's device until shown (at most 64: 200 MB at 512²).
    window = span * max(1, min(batch_size, 64 // span))
    for chunk in _chunks(covered, window):
        canvases = [anchor] + [frame.canvas for frame, _ in chunk]  # position p is frame p - 1
        covers = [torch.ones_like(chunk[0][1])] + [cover for _, cover in chunk]
        n = len(chunk)
        ends, last = _run_ends(chunk, last)
        exact = {0: anchor_rgb}
        keys = sorted({*range(span, n + 1, span), *ends, n})
        _decode(decoder, canvases, keys, exact)
        bounds = [0, *keys]
        open_ = [(lo, hi) for lo, hi in zip(bounds, bounds[1:], strict=False) if hi - lo > 1]
        between: dict[int, tuple[int, int]] = {}  # interpolated position -> its decoded ends
        while open_:
            mids = [(lo + hi) // 2 for lo, hi in open_]
            _decode(decoder, canvases, mids, exact)
            split = []
            for (lo, hi), mid in zip(open_, mids, strict=True):
                halves = ((lo, mid), (mid, hi))
                # Halves of one frame each hold nothing to interpolate: no check needed.
                if hi - lo > 2 and tolerance_db is not None:
                    if not _holds(canvases, exact, covers[mid], paper, (lo, mid, hi), tolerance_db):
                        split += [half for half in halves if half[1] - half[0] > 1]
                        continue
                between.update((t, half) for half in halves for t in range(half[0] + 1, half[1]))
            open_ = split
        for lo in range(1, n + 1, batch_size):
            idx = range(lo, min(lo + batch_size, n + 1))
            rgb = [exact[t] if t in exact else _interpolate(canvases, exact, t, *between[t]) for t in idx]
            cover = torch.stack([covers[t] for t in idx])
            yield [chunk[t - 1][0] for t in idx], lay_on_paper(torch.stack(rgb), cover, paper)
        anchor, anchor_rgb = canvases[n], exact[n]


def _run_ends(chunk: list[Covered], last: tuple | None) -> tuple[list[int], tuple | None]:
    """Positions (1-based) in ``chunk`` after which a *run* ends, and the chunk's last (step, channels).

    A run ends where the step being painted changes, or where a channel stops being
    painted (its strokes are done; the next frame paints other channels). A frame that
    changes nothing belongs to the run before it.
    """
    ends = []
    for p, (frame, _) in enumerate(chunk, start=1):
        touched = set(frame.mask.flatten(1).any(dim=1).nonzero().flatten().tolist())
        if last is not None and touched:
            step, before = last
            if p > 1 and (frame.step != step or not before <= touched):
                ends.append(p - 1)
        if touched or last is None:
            last = (frame.step, frozenset(touched))
    return ends, last


def _decode(decoder: Decoder, canvases: list[torch.Tensor], positions: list[int], into: dict) -> None:
    if positions:
        rgb = decoder.decode_float(torch.stack([canvases[p] for p in positions]))
        into.update(zip(positions, rgb, strict=True))


def _holds(
    canvases: list[torch.Tensor],
    exact: dict[int, torch.Tensor],
    cover: torch.Tensor,
    paper: Paper,
    positions: tuple[int, int, int],
    tolerance_db: float,
) -> bool:
    """Whether ``mid`` interpolated across ``lo..hi`` shows within ``tolerance_db`` of its decode."""
    lo, mid, hi = positions
    approx = _interpolate(canvases, exact, mid, lo, hi)
    seen = lay_on_paper(torch.stack([exact[mid], approx]), torch.stack([cover, cover]), paper)
    return float(psnr(seen[:1], seen[1:])[0]) >= tolerance_db


def _interpolate(
    canvases: list[torch.Tensor], exact: dict[int, torch.Tensor], t: int, lo: int, hi: int
) -> torch.Tensor:
    """Frame ``t`` between the decoded frames ``lo`` and ``hi``: per cell, as far as its canvas has gone."""
    low, high = exact[lo], exact[hi]
    weight = progress(canvases[lo], canvases[t], canvases[hi]).to(low.device, low.dtype)[None, None]
    if weight.shape[-2:] != low.shape[-2:]:
        weight = F.interpolate(weight, size=low.shape[-2:], mode="bilinear", align_corners=False)
    return low + weight[0] * (high - low)


def progress(lo: torch.Tensor, t: torch.Tensor, hi: torch.Tensor, *, reach: int = 5) -> torch.Tensor:
    """Per cell ``[h, w]``: how far ``t`` has gone from ``lo`` towards ``hi`` (``[C, h, w]`` each), in [0, 1].

    The projection of ``t − lo`` on ``hi − lo`` across channels, over a ``reach``² patch
    of cells: 1 where strokes have painted the patch's final values, 0 where nothing has
    changed yet, the fraction of a fade. The patch, not the cell, because a decoded cell
    shows its neighbours' changes too (a stroke's halo): a still cell beside a stroke
    takes the stroke's progress instead of jumping at the next decoded frame (on the
    tiny model's VAE this lifted the worst frame from 24 to 28 dB unchecked).
    """
    whole = (hi - lo).float()
    done = (t - lo).float()
    both = torch.stack([(done * whole).sum(dim=0), whole.pow(2).sum(dim=0)])[None]
    if reach > 1:
        both = F.avg_pool2d(both, reach, stride=1, padding=reach // 2, count_include_pad=False)
    num, den = both[0]
    return torch.where(den > 1e-12, num / den.clamp(min=1e-12), 0.0).clamp_(0.0, 1.0)


def psnr(reference: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image ``[B, ...]`` in [0, 1]; ``inf`` where identical."""
    mse = (reference.float() - approx.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)

"""The release policy P and how frames are shared out over steps.

The paper's policy: a plan step is painted only when its difference from the canvas
is at least ``release`` times the largest difference seen at any earlier step;
otherwise the difference stays on as residue and is painted with a later step. Early
x0-hat steps change nearly everything and late ones almost nothing, so this, and
giving each painted step frames by what it changes, is what spreads the picture's
information over the animation (the release effects damp the share of the big first
step with their ``pacing``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ReleasePolicy:
    """Decides, step by step, whether a step's difference is worth painting now."""

    def __init__(self, release: float) -> None:
        self.release = release
        self.largest = 0.0

    def admit(self, total: float) -> bool:
        """Whether a step whose total ``|Z − D_t|`` is ``total`` is painted; remembers the total."""
        paint = total >= self.release * self.largest
        self.largest = max(self.largest, total)
        return paint


def total_difference(canvas: torch.Tensor, target: torch.Tensor) -> float:
    """Σ |canvas − target| in float64: the information a step would release."""
    return float((canvas - target).abs().sum(dtype=torch.float64))


def painted_steps(plan: torch.Tensor, start: torch.Tensor, release: float) -> list[tuple[int, float]]:
    """The steps the policy paints, each with the difference it releases.

    An effect that paints a step fully brings the canvas to ``plan[t]``, so each
    step is measured against the last painted one. The last step is always painted:
    it brings the canvas to the final picture.
    """
    policy = ReleasePolicy(release)
    canvas = start
    steps: list[tuple[int, float]] = []
    last = plan.shape[0] - 1
    for t in range(plan.shape[0]):
        total = total_difference(canvas, plan[t])
        if policy.admit(total) or t == last:
            steps.append((t, total))
            canvas = plan[t]
    return steps


def allocate_frames(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` frames over steps in proportion to ``weights``; the last gets at least one.

    Largest-remainder rounding, ties to the earlier step. A step that gets no frame
    is not shown on its own: its change is painted with the next step that has one.
    With all weights zero the frames are split equally.
    """
    if total < 1 or not weights:
        raise ValueError(f"need at least one frame and one step, got {total} frames, {len(weights)} steps")
    n = len(weights)
    if sum(weights) <= 0:
        weights = [1.0] * n
    whole = sum(weights)
    counts = [0] * n
    counts[-1] = 1
    rest = total - 1
    quotas = [rest * w / whole for w in weights]
    for i, q in enumerate(quotas):
        counts[i] += int(q)
    left = total - sum(counts)
    by_remainder = sorted(range(n), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    for i in by_remainder[:left]:
        counts[i] += 1
    return counts


def spread(items: int, slots: int) -> list[int]:
    """The slot of each of ``items`` consecutive items spread evenly over ``slots`` slots.

    Item ``i`` goes to slot ``i * slots // items``: with more items than slots each
    slot gets ⌊items/slots⌋ or ⌈items/slots⌉ of them in order; with fewer, the items
    are spaced out and the slots between them stay empty.
    """
    return [i * slots // items for i in range(items)]

"""Painting effects: turn a plan of targets into animation frames.

``paint(plan, effect, start=…, frames=…, **params)`` is the one entry point. ``plan`` is
``[T, C, H, W]``: the x0-hat trail of a generation, or a transition plan; ``start``
the canvas before the first frame (zeros: blank paper; a source image's latent for
transitions). Every effect's last frame is ``plan[-1]`` exactly.

Effects (the paper's Appendix A-C): ``strokes`` (Alg. 1 with move cost), ``glow``,
``flip``, ``fade``, ``dissolve`` and ``sharpen`` (the plain x0-hat sequence).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from painter.effects import dissolve, fade, flip, glow, sharpen, strokes
from painter.effects.params import Param, check_inputs, resolve
from painter.effects.strokes import Stroke, plan_strokes
from painter.frame import Frame

EFFECTS = ("strokes", "glow", "flip", "fade", "dissolve", "sharpen")

_PAINTERS: dict[str, tuple[dict[str, Param], Callable[..., Iterator[Frame]]]] = {
    "strokes": (strokes.PARAMS, strokes.paint_strokes),
    "glow": (glow.PARAMS, glow.paint_glow),
    "flip": (flip.PARAMS, flip.paint_flip),
    "fade": (fade.PARAMS, fade.paint_fade),
    "dissolve": (dissolve.PARAMS, dissolve.paint_dissolve),
    "sharpen": (sharpen.PARAMS, sharpen.paint_sharpen),
}

__all__ = ["EFFECTS", "Stroke", "default_params", "paint", "plan_strokes"]


def _check_effect(effect: str) -> None:
    if effect not in _PAINTERS:
        raise ValueError(f"unknown effect {effect!r}; choose one of: {', '.join(EFFECTS)}")


def default_params(effect: str) -> dict[str, Any]:
    """The parameters ``effect`` accepts, with their defaults (to filter or show settings)."""
    _check_effect(effect)
    return {name: spec.default for name, spec in _PAINTERS[effect][0].items()}


def paint(
    plan: torch.Tensor,
    effect: str = "strokes",
    *,
    start: torch.Tensor | None = None,
    frames: int | None = None,
    **params: Any,
) -> Iterator[Frame]:
    """The frames of ``effect`` painting along ``plan [T, C, H, W]`` from ``start``.

    ``frames=None`` gives the effect's natural length (strokes: one frame per
    ``strokes_per_frame`` strokes of one channel and step, then the flush; sharpen:
    one per plan entry; the others: ``frames_per_step`` per painted step on average).
    ``frames=N`` gives exactly N: strokes spreads its strokes evenly over the first
    N − 1 frames (a frame may then hold several channels or steps, or none: a held
    frame) and flushes in the last; sharpen spreads the plan entries over them; the
    others share the N frames out over the painted steps by how much each changes
    (its total difference raised to ``pacing``).

    Each frame's canvas is a fresh tensor on ``plan.device`` the caller may keep; the
    last is ``plan[-1]`` exactly. ``params`` are the effect's own (see
    :func:`default_params`); an unknown effect, parameter or value raises ``ValueError``
    before any frame is made.
    """
    _check_effect(effect)
    table, painter = _PAINTERS[effect]
    canvas = check_inputs(plan, start, frames)
    resolve(effect, table, params)  # fail here, not at the first next()
    plan = plan.detach()
    return painter(plan, canvas, frames, **params)

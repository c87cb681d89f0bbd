"""Checking the effects' inputs and parameters: defaults merged with the caller's, each value validated.

Every effect declares its parameters as a table of :class:`Param`; :func:`resolve`
turns the caller's keyword arguments into a complete, checked dict or raises a
``ValueError`` that names the effect, the parameter and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Param:
    """One parameter: its default and what values it takes."""

    default: Any
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False  # None is allowed (e.g. "no budget")
    odd: bool = False

    def describe(self) -> str:
        """What the parameter accepts, for error messages."""
        if self.kind == "choice":
            text = " or ".join(repr(c) for c in self.choices)
        else:
            noun = "an integer" if self.kind == "int" else "a number"
            if self.odd:
                noun = "an odd integer"
            bounds = []
            if self.low is not None:
                bounds.append(f">= {self.low:g}")
            if self.high is not None:
                bounds.append(f"<= {self.high:g}")
            text = noun + (" " + " and ".join(bounds) if bounds else "")
        return text + (" or None" if self.optional else "")


def _valid(spec: Param, value: Any) -> bool:
    if value is None:
        return spec.optional
    if spec.kind == "choice":
        return isinstance(value, str) and value in spec.choices
    # bool is an int in Python, but True as a neighbourhood size is a caller's mistake.
    if isinstance(value, bool):
        return False
    if spec.kind == "int":
        if not isinstance(value, int):
            return False
        if spec.odd and value % 2 == 0:
            return False
    elif not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if spec.low is not None and value < spec.low:
        return False
    return spec.high is None or value <= spec.high


def resolve(effect: str, table: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """``table``'s defaults overridden by ``given``, every value checked.

    Raises ``ValueError`` for a parameter the effect does not have or a value it does
    not accept, naming the effect, the parameter and the allowed values.
    """
    unknown = sorted(set(given) - set(table))
    if unknown:
        allowed = ", ".join(table) or "none"
        raise ValueError(f"effect {effect!r} has no parameter {unknown[0]!r}; its parameters are: {allowed}")
    out = {name: spec.default for name, spec in table.items()}
    for name, value in given.items():
        spec = table[name]
        if not _valid(spec, value):
            raise ValueError(
                f"effect {effect!r}: parameter {name!r} must be {spec.describe()}, got {value!r}"
            )
        out[name] = float(value) if spec.kind == "float" and value is not None else value
    return out


# Shared by the effects that release a step's change over several frames.
RELEASE = Param(0.35, "float", low=0.0, high=1.0)
FRAMES_PER_STEP = Param(12, "int", low=1)
# Frames per painted step go as (its change)^pacing: 1 shares them in proportion to the
# change, and the first step (paper to the rough picture, ~3/4 of all change on an
# SD-like trail) then fills most of the animation while the details flash past at the
# end; 0 gives every painted step the same; 0.5 gave the sample picture's opening ~30 %.
PACING = Param(0.5, "float", low=0.0, high=1.0)


def check_inputs(plan: torch.Tensor, start: torch.Tensor | None, frames: int | None = None) -> torch.Tensor:
    """Check ``plan``, ``start`` and ``frames``; return the start canvas on the plan's device and dtype."""
    if not isinstance(plan, torch.Tensor) or plan.ndim != 4 or plan.shape[0] < 1:
        shape = tuple(plan.shape) if isinstance(plan, torch.Tensor) else type(plan).__name__
        raise ValueError(f"plan must be a [T, C, H, W] tensor with T >= 1, got {shape}")
    if not plan.is_floating_point():
        raise ValueError(f"plan must be a floating-point tensor, got {plan.dtype}")
    if not bool(torch.isfinite(plan).all()):
        raise ValueError("plan contains NaN or infinite values; nothing can be painted from it")
    if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int) or frames < 1):
        raise ValueError(f"frames must be a positive integer or None, got {frames!r}")
    if start is None:
        return torch.zeros(plan.shape[1:], dtype=plan.dtype, device=plan.device)
    if not isinstance(start, torch.Tensor) or tuple(start.shape) != tuple(plan.shape[1:]):
        shape = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise ValueError(f"start must be a [C, H, W] tensor of shape {tuple(plan.shape[1:])}, got {shape}")
    start = start.detach().to(plan.device, plan.dtype)
    if not bool(torch.isfinite(start).all()):
        raise ValueError("start contains NaN or infinite values")
    return start

"""Run a pipeline's own safety checker on pictures a user will see.

An animation shows its intermediate frames, so the final image alone is not enough:
the caller passes the final image and a sample of frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def has_safety_checker(pipeline: Any) -> bool:
    return getattr(pipeline, "safety_checker", None) is not None and hasattr(pipeline, "run_safety_checker")


@torch.inference_mode()
def flagged(pipeline: Any, images: Sequence[np.ndarray]) -> bool | None:
    """True when the checker flags any of ``images`` (``[H, W, 3]`` uint8); None without a checker."""
    if not has_safety_checker(pipeline) or not images:
        return None
    batch = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
    checker = pipeline.safety_checker
    dtype = next(checker.parameters()).dtype
    device = next(checker.parameters()).device
    _, concepts = pipeline.run_safety_checker(batch, device, dtype)
    return bool(concepts is not None and any(concepts))


def sample_indices(total: int, count: int = 8) -> set[int]:
    """Which frame numbers (1-based) to check: ``count`` spread over the animation."""
    if total <= 0:
        return set()
    return {max(1, round(total * (k + 1) / count)) for k in range(count)}

"""How fast does the strokes painter choose its strokes? Strokes per second against the reference.

For latents 4×64×64 (SD 1.5 at 512²) and 4×128×128 (SDXL at 1024²), on two realistic
plans — a trail captured from the tiny offline model (taken at 512², upsampled for
128²) and the synthetic coarse-to-fine ``converging_plan`` — it times, in one run:

* the shipped planner (``painter.effects.plan_strokes``) over the whole 30-step plan,
  once with its square-brush loop compiled (numba, the default) and once with the NumPy
  fallback (``LATENT_PAINTER_PLANNER=numpy``); both must place identical strokes;
* both loops and the straightforward reference (tests/reference_strokes.py, Alg. 1
  recomputed from the whole canvas per stroke) on one matched workload: the first
  steps with a stroke budget per step, small enough for the reference to finish in
  seconds. Each must place the reference's strokes; the ratio of their rates is the
  speed-up (goal: ≥ 20× on the CPU);
* ``paint()`` producing every frame of a 10 s, 30 fps animation on ``--device``
  (the stroke choice runs on the CPU whatever the device; frames are replayed there).

It also reports numba's first-plan cost in this process (loading the compiled kernels
from their cache, or compiling them when the cache is cold).

    python bench/bench_painter.py                  # CPU, about two minutes
    python bench/bench_painter.py --device cuda    # frames replayed on the GPU
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from common import (
    add_device_args,
    default_data_dir,
    machine_line,
    resolve_args,
    sync,
    table,
    tiny_trail,
    upsample_plan,
)

from painter.effects import paint, plan_strokes  # noqa: E402
from painter.effects.strokes import PLANNER_ENV, Stroke, compiled_loop  # noqa: E402
from tests.reference_strokes import converging_plan, reference_strokes  # noqa: E402

FRAMES = 300  # a 10 s animation at 30 fps


@contextmanager
def planner(choice: str) -> Iterator[None]:
    """Run ``plan_strokes`` with the loop ``choice`` (``compiled`` or ``numpy``) inside the block."""
    before = os.environ.get(PLANNER_ENV)
    os.environ[PLANNER_ENV] = choice
    try:
        yield
    finally:
        if before is None:
            del os.environ[PLANNER_ENV]
        else:
            os.environ[PLANNER_ENV] = before


def best_of(runs: int, fn: Callable[[], list[Stroke]]) -> tuple[list[Stroke], float]:
    """``fn``'s strokes and its fastest time over ``runs`` runs."""
    seconds = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        strokes = fn()
        seconds = min(seconds, time.perf_counter() - start)
    return strokes, seconds


def first_plan_seconds() -> float:
    """Seconds of the first compiled plan: numba's import plus loading (or compiling) its kernels."""
    start = time.perf_counter()
    with planner("compiled"):
        compiled_loop()
        plan_strokes(converging_plan(3, 4, 16))
    return time.perf_counter() - start


def whole_plan(plan: torch.Tensor) -> tuple[list[Stroke], float, float, bool]:
    """Strokes of the whole plan, compiled and NumPy seconds, and whether both loops agree."""
    with planner("compiled"):
        compiled, compiled_s = best_of(3, lambda: plan_strokes(plan))
    with planner("numpy"):
        numpy_, numpy_s = best_of(2, lambda: plan_strokes(plan))
    return compiled, compiled_s, numpy_s, compiled == numpy_


def matched(plan: torch.Tensor, steps: int, budget: int) -> tuple[int, float, float, float, bool, bool]:
    """Strokes; compiled, NumPy and reference strokes/s on ``plan[:steps]`` with ``budget``
    strokes per step; whether each loop placed the reference's strokes.

    Each is timed more than once and the fastest run kept, all three with one torch
    thread: the reference's many small ops are fastest so, and on a busy 2-core machine
    every parallel torch op (the planners' input check included) can wait a scheduler
    slice, which slowed the reference up to 20-fold and cost the planners' 10 ms
    workloads 50 ms: noise from the machine, not the algorithms.
    """
    part = plan[:steps].cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with planner("compiled"):
            compiled, compiled_s = best_of(5, lambda: plan_strokes(part, step_budget=budget))
        with planner("numpy"):
            numpy_, numpy_s = best_of(5, lambda: plan_strokes(part, step_budget=budget))
        ref, ref_s = best_of(2, lambda: reference_strokes(part, step_budget=budget))
    finally:
        torch.set_num_threads(threads)
    n = len(ref)
    return n, n / compiled_s, n / numpy_s, n / ref_s, compiled == ref, numpy_ == ref


def yes(same: bool) -> str:
    return "yes" if same else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument(
        "--budget", type=int, help="strokes per step in the matched workload (default by size)"
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    device = resolve_args(args)
    print(machine_line(device))
    first_s = first_plan_seconds()
    trail = tiny_trail(args.data_dir)
    whole_rows, matched_rows, paint_rows = [], [], []
    for size in (64, 128):
        plans = {
            "tiny-model trail" + (" (upsampled)" if size != trail.shape[-1] else ""): upsample_plan(
                trail, size
            ),
            "converging_plan": converging_plan(30, 4, size),
        }
        # The reference's cost per stroke grows with the canvas: keep it at a few seconds.
        budget = args.budget or (1000 if size == 64 else 400)
        latent = f"4x{size}x{size}"
        for name, plan in plans.items():
            strokes, compiled_s, numpy_s, same = whole_plan(plan)
            n, compiled_rate, numpy_rate, ref_rate, compiled_same, numpy_same = matched(plan, 2, budget)
            whole_rows.append(
                [
                    latent,
                    name,
                    len(strokes),
                    compiled_s,
                    numpy_s,
                    len(strokes) / compiled_s,
                    len(strokes) / numpy_s,
                    numpy_s / compiled_s,
                    len(strokes) / compiled_s / ref_rate,
                    yes(same),
                ]
            )
            matched_rows.append(
                [
                    latent,
                    name,
                    n,
                    compiled_rate,
                    numpy_rate,
                    ref_rate,
                    compiled_rate / ref_rate,
                    numpy_rate / ref_rate,
                    yes(compiled_same),
                    yes(numpy_same),
                ]
            )
            on_device = plan.to(device)
            sync(device)
            start = time.perf_counter()
            frames = sum(1 for _ in paint(on_device, "strokes", frames=FRAMES))
            sync(device)
            paint_s = time.perf_counter() - start
            paint_rows.append([latent, name, frames, paint_s, frames / paint_s, len(strokes) / paint_s])
            print(f"  done {size} {name}", flush=True)
    print(f"\nnumba: this process's first compiled plan took {first_s:.2f} s (import, cache load or compile)")
    print("\nStroke choice (CPU), whole 30-step plan: compiled loop (shipped) and NumPy fallback")
    print(
        table(
            whole_rows,
            [
                "latent",
                "plan",
                "strokes",
                "compiled s",
                "numpy s",
                "compiled /s",
                "numpy /s",
                "compiled vs numpy",
                "compiled vs reference /s",
                "identical",
            ],
        )
    )
    print("\nMatched workload against the reference (first 2 steps, a stroke budget per step)")
    print(
        table(
            matched_rows,
            [
                "latent",
                "plan",
                "strokes",
                "compiled /s",
                "numpy /s",
                "reference /s",
                "compiled speed-up",
                "numpy speed-up",
                "compiled = ref",
                "numpy = ref",
            ],
        )
    )
    print(f"\npaint(): every frame of a {FRAMES}-frame animation on {device} (stroke choice included)")
    print(table(paint_rows, ["latent", "plan", "frames", "seconds", "frames/s", "strokes/s"]))
    print("\nGoal: speed-up >= 20x on the CPU (the matched workload's compiled speed-up).")


if __name__ == "__main__":
    main()

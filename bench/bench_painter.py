"""How fast does the strokes painter choose its strokes? Strokes per second against the reference.

For latents 4×64×64 (SD 1.5 at 512²) and 4×128×128 (SDXL at 1024²), on two realistic
plans — a trail captured from the tiny offline model (taken at 512², upsampled for
128²) and the synthetic coarse-to-fine ``converging_plan`` — it times, in one run:

* the fast planner (``painter.effects.plan_strokes``) over the whole 30-step plan;
* the same planner and the straightforward reference (tests/reference_strokes.py,
  Alg. 1 recomputed from the whole canvas per stroke) on one matched workload: the
  first steps with a stroke budget per step, small enough for the reference to finish
  in seconds. Both must place identical strokes; the ratio of their rates is the
  speed-up (goal: ≥ 20× on the CPU);
* ``paint()`` producing every frame of a 10 s, 30 fps animation on ``--device``
  (the stroke choice runs on the CPU whatever the device; frames are replayed there).

    python bench/bench_painter.py                  # CPU, about a minute and a half
    python bench/bench_painter.py --device cuda    # frames replayed on the GPU
"""

from __future__ import annotations

import argparse
import time
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
from tests.reference_strokes import converging_plan, reference_strokes  # noqa: E402

FRAMES = 300  # a 10 s animation at 30 fps


def proposed_planner():
    """``compiled_plan_strokes`` of bench/proposed_planner.py, compiled, or None without numba."""
    try:
        from proposed_planner import compiled_plan_strokes
    except ImportError:
        return None
    compiled_plan_strokes(converging_plan(3, 4, 16))  # numba compiles on the first call
    return compiled_plan_strokes


def matched(plan: torch.Tensor, steps: int, budget: int) -> tuple[int, float, float, bool]:
    """Strokes, fast and reference strokes/s on ``plan[:steps]`` with ``budget`` strokes per step.

    Each is timed twice and the faster run kept. The reference runs with one torch
    thread: its many small ops are fastest so, and with two threads on a busy 2-core
    machine they slowed down up to 20-fold, which would flatter the speed-up.
    """
    part = plan[:steps].cpu()
    fast_s, ref_s = float("inf"), float("inf")
    threads = torch.get_num_threads()
    for _ in range(2):
        start = time.perf_counter()
        fast = plan_strokes(part, step_budget=budget)
        fast_s = min(fast_s, time.perf_counter() - start)
        torch.set_num_threads(1)
        try:
            start = time.perf_counter()
            ref = reference_strokes(part, step_budget=budget)
            ref_s = min(ref_s, time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
    return len(ref), len(fast) / fast_s, len(ref) / ref_s, fast == ref


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
    trail = tiny_trail(args.data_dir)
    rows, paint_rows, proposed_rows = [], [], []
    proposed = proposed_planner()
    for size in (64, 128):
        plans = {
            "tiny-model trail" + (" (upsampled)" if size != trail.shape[-1] else ""): upsample_plan(
                trail, size
            ),
            "converging_plan": converging_plan(30, 4, size),
        }
        # The reference's cost per stroke grows with the canvas: keep it at a few seconds.
        budget = args.budget or (1000 if size == 64 else 400)
        for name, plan in plans.items():
            start = time.perf_counter()
            strokes = plan_strokes(plan)
            full_s = time.perf_counter() - start
            n, fast_rate, ref_rate, same = matched(plan, 2, budget)
            if proposed is not None:
                start = time.perf_counter()
                compiled = proposed(plan)
                compiled_s = time.perf_counter() - start
                rate = len(compiled) / compiled_s
                proposed_rows.append(
                    [
                        f"4x{size}x{size}",
                        name,
                        len(strokes) / full_s,
                        rate,
                        rate * full_s / len(strokes),
                        rate / ref_rate,
                        "yes" if compiled == strokes else "NO",
                    ]
                )
            rows.append(
                [
                    f"4x{size}x{size}",
                    name,
                    len(strokes),
                    full_s,
                    len(strokes) / full_s,
                    n,
                    fast_rate,
                    ref_rate,
                    fast_rate / ref_rate,
                    "yes" if same else "NO",
                ]
            )
            on_device = plan.to(device)
            sync(device)
            start = time.perf_counter()
            frames = sum(1 for _ in paint(on_device, "strokes", frames=FRAMES))
            sync(device)
            paint_s = time.perf_counter() - start
            paint_rows.append(
                [f"4x{size}x{size}", name, frames, paint_s, frames / paint_s, len(strokes) / paint_s]
            )
            print(f"  done {size} {name}", flush=True)
    print("\nStroke choice (CPU): whole 30-step plan, and a matched workload against the reference")
    print(
        table(
            rows,
            [
                "latent",
                "plan",
                "strokes",
                "fast s",
                "fast strokes/s",
                "matched strokes",
                "fast /s",
                "reference /s",
                "speed-up",
                "identical",
            ],
        )
    )
    print(f"\npaint(): every frame of a {FRAMES}-frame animation on {device} (stroke choice included)")
    print(table(paint_rows, ["latent", "plan", "frames", "seconds", "frames/s", "strokes/s"]))
    if proposed_rows:
        print("\nProposed compiled planner (bench/proposed_planner.py, numba): whole plan, same run")
        print(
            table(
                proposed_rows,
                ["latent", "plan", "current /s", "proposed /s", "vs current", "vs reference", "identical"],
            )
        )
    else:
        print("\n(numba is not installed: pip install numba to measure bench/proposed_planner.py too)")
    print("\nGoal: speed-up >= 20x on the CPU.")


if __name__ == "__main__":
    main()

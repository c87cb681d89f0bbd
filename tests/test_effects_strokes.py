"""The strokes effect (Alg. 1): equal to the slow reference, and the behaviour it promises."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from painter.effects import paint, plan_strokes
from painter.effects.params import check_inputs, resolve
from painter.effects.strokes import PARAMS, PLANNER_ENV, Stroke, _Planner, compiled_loop
from tests.reference_strokes import converging_plan, reference_frames, reference_strokes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["compiled", "numpy"])
def planner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with the square brush's loop compiled (numba) and with the NumPy loop."""
    monkeypatch.setenv(PLANNER_ENV, request.param)
    assert (compiled_loop() is None) == (request.param == "numpy")
    return request.param


def random_plan(steps: int = 5, channels: int = 3, h: int = 16, w: int = 14, seed: int = 0) -> torch.Tensor:
    """Random walk whose steps shrink: every cell differs, ties are rare."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(1.0, 0.15, steps).view(steps, 1, 1, 1)
    return (torch.randn(steps, channels, h, w, generator=g) * scale).cumsum(0)


def block_plan(steps: int = 4, channels: int = 2, size: int = 16) -> torch.Tensor:
    """Flat rectangles of exact values: many neighbourhood sums tie exactly."""
    plan = torch.zeros(steps, channels, size, size)
    for t in range(steps):
        for c in range(channels):
            plan[t, c, 2 : 10 + t, 3:12] = 0.5 + 0.25 * c
            plan[t, c, 9:14, 1 + t : 6 + t] = -1.0
    return plan


PLANS = {
    "random": random_plan,
    "converging": lambda: converging_plan(steps=5, channels=3, size=16, seed=1),
    "blocks": block_plan,
}

PARAM_SETS = [
    {},
    {"move_sigma": 0.0},
    {"step_budget": 9},
    {"strokes_per_frame": 4},
    {"channels": "joint"},
    {"cell": 3, "theta": 0.05},
    {"release": 0.0, "neighbourhood": 5},
    {"release": 0.5, "move_sigma": 2.0},
    {"theta": 0.0, "step_budget": 20},
    {"brush": "round"},
    {"channels": "joint", "cell": 4, "brush": "round", "brush_scale": 2.0, "strokes_per_frame": 3},
]


def _frames_equal(got, want) -> None:
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.step == b.step, f"frame {i}"
        assert torch.equal(a.mask, b.mask), f"frame {i}"
        assert torch.equal(a.canvas, b.canvas), f"frame {i}"


@pytest.mark.parametrize(
    "params", PARAM_SETS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "defaults"
)
@pytest.mark.parametrize("plan_name", list(PLANS))
def test_fast_painter_matches_reference(plan_name: str, params: dict, planner: str) -> None:
    plan = PLANS[plan_name]()
    want_strokes, want_frames = reference_frames(plan, **params)
    assert want_strokes, "the plan should give the painter something to paint"
    assert plan_strokes(plan, **params) == want_strokes
    _frames_equal(list(paint(plan, "strokes", **params)), want_frames)


def test_fast_painter_matches_reference_from_a_start_canvas(planner: str) -> None:
    plan = random_plan(seed=3)
    start = torch.randn(plan.shape[1:], generator=torch.Generator().manual_seed(9))
    want_strokes, want_frames = reference_frames(plan, start, step_budget=15)
    assert reference_strokes(plan, start, step_budget=15) == want_strokes
    assert plan_strokes(plan, start, step_budget=15) == want_strokes
    _frames_equal(list(paint(plan, start=start, step_budget=15)), want_frames)


def far_blobs_plan() -> torch.Tensor:
    """Small flat blobs far apart on a 64×64 grid: once the brush finishes one, nothing is
    left near it, so the compiled loop's windows cannot decide and it searches the whole grid."""
    plan = torch.zeros(2, 2, 64, 64)
    centres = [(2, 3), (60, 58), (5, 55), (58, 6), (31, 30), (33, 62)]
    for t in range(2):
        for i, (y, x) in enumerate(centres):
            plan[t, :, max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = (1.0 + 0.25 * (i % 3)) * (1 + t)
    return plan


FAR_PLANS = {
    "far blobs": (far_blobs_plan, {}),
    # σ = 1000: the move cost hardly prefers near cells, so a window's best rarely rules out the rest.
    "flat move cost": (
        lambda: random_plan(steps=2, channels=1, h=64, w=64, seed=5),
        {"move_sigma": 1000.0, "step_budget": 60},
    ),
}


@pytest.mark.parametrize("plan_name", list(FAR_PLANS))
def test_compiled_planner_is_exact_when_its_windows_fall_back_to_the_whole_grid(
    plan_name: str, planner: str
) -> None:
    make, params = FAR_PLANS[plan_name]
    plan = make()
    want_strokes, want_frames = reference_frames(plan, **params)
    run = _Planner(plan, check_inputs(plan, None), resolve("strokes", PARAMS, params))
    assert run.run() == want_strokes
    if planner == "compiled":
        # Both ways of choosing were taken: inside a window, and on the whole grid after them.
        assert run.decided_by[:-1].sum() > 0
        assert run.decided_by[-1] > 0
    _frames_equal(list(paint(plan, "strokes", **params)), want_frames)


def test_an_unknown_planner_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PLANNER_ENV, "fast")
    with pytest.raises(
        ValueError, match="LATENT_PAINTER_PLANNER='fast': choose one of auto, numpy, compiled"
    ):
        plan_strokes(converging_plan(steps=2, channels=1, size=8))


def test_compiled_planner_works_where_no_cache_directory_is_writable() -> None:
    # A locator list that fits no ordinary file is what numba sees when neither __pycache__
    # nor a user cache directory can be written (read-only install, no home): the kernels
    # must then compile uncached instead of failing at import.
    code = (
        "from painter.effects.strokes import plan_strokes; "
        "import painter.effects.strokes_compiled as c; "
        "from tests.reference_strokes import converging_plan; "
        "print(type(c._layer._cache).__name__, len(plan_strokes(converging_plan(3, 2, 16))))"
    )
    env = {**os.environ, "NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator", PLANNER_ENV: "compiled"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["NullCache", str(len(plan_strokes(converging_plan(3, 2, 16))))]


def _footprint(s: Stroke, k: int, shape: tuple[int, int, int]) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    chans = slice(None) if s.channel < 0 else slice(s.channel, s.channel + 1)
    h = k // 2
    mask[chans, max(0, s.y - h) : s.y + h + 1, max(0, s.x - h) : s.x + h + 1] = True
    return mask


@pytest.mark.parametrize("per_frame", [1, 3])
def test_each_frame_paints_one_channel_with_at_most_strokes_per_frame_neighbourhoods(per_frame: int) -> None:
    plan = converging_plan(steps=6, channels=4, size=24)
    frames = list(paint(plan, strokes_per_frame=per_frame))
    strokes = plan_strokes(plan)
    k = 3
    previous = torch.zeros(plan.shape[1:])
    used = 0
    for frame in frames[:-1]:
        channels = frame.mask.flatten(1).any(dim=1).nonzero().flatten().tolist()
        assert len(channels) == 1
        assert 0 < int(frame.mask.sum()) <= per_frame * k * k
        # Only masked cells changed, and the mask is exactly the next strokes' neighbourhoods.
        assert torch.equal(frame.canvas[~frame.mask], previous[~frame.mask])
        group = [
            s for s in strokes[used : used + per_frame] if (s.step, s.channel) == (frame.step, channels[0])
        ]
        union = torch.zeros_like(frame.mask)
        for s in group:
            union |= _footprint(s, k, tuple(plan.shape[1:]))
        assert torch.equal(frame.mask, union)
        used += len(group)
        previous = frame.canvas
    assert used == len(strokes)
    assert torch.equal(frames[-1].canvas, plan[-1])


def _mean_move(strokes: list[Stroke]) -> float:
    moves = [
        math.hypot(a.y - b.y, a.x - b.x)
        for a, b in zip(strokes, strokes[1:], strict=False)
        if (a.step, a.channel) == (b.step, b.channel)
    ]
    return sum(moves) / len(moves)


def test_move_cost_keeps_consecutive_strokes_close() -> None:
    plan = converging_plan(steps=5, channels=4, size=32)
    near = _mean_move(plan_strokes(plan, move_sigma=6.0))
    free = _mean_move(plan_strokes(plan, move_sigma=0.0))
    assert near < 0.6 * free


def test_step_budget_caps_strokes_per_step_and_carries_the_residue() -> None:
    plan = converging_plan(steps=6, channels=4, size=24)
    strokes = plan_strokes(plan, step_budget=25)
    per_step = {t: sum(1 for s in strokes if s.step == t) for t in range(plan.shape[0])}
    assert max(per_step.values()) == 25
    # A step that repeats the previous target has nothing new: only a budget's residue is left to paint.
    repeat = torch.stack([plan[2], plan[2], plan[2]])
    assert {s.step for s in plan_strokes(repeat, release=0.0)} == {0}
    assert {s.step for s in plan_strokes(repeat, release=0.0, step_budget=10)} == {0, 1, 2}
    frames = list(paint(plan, step_budget=25))
    assert torch.equal(frames[-1].canvas, plan[-1])
    assert int(frames[-1].mask.sum()) > 0  # the flush carries what the budget left


def test_release_policy_skips_steps_that_change_little() -> None:
    g = torch.Generator().manual_seed(4)
    base = torch.randn(2, 16, 16, generator=g)
    plan = torch.stack([base, base + 0.2 * torch.randn(2, 16, 16, generator=g), base * 1.8])
    # Step 1 changes about a tenth of what step 0 did; step 2 (0.8·|base|) most of it.
    assert {s.step for s in plan_strokes(plan, release=0.35)} == {0, 2}
    assert {s.step for s in plan_strokes(plan, release=0.0)} == {0, 1, 2}


def test_channels_are_painted_largest_total_gain_first() -> None:
    plan = torch.zeros(1, 3, 12, 12)
    plan[0, 0] = 0.3
    plan[0, 1] = -1.0
    plan[0, 2] = 0.6
    order = []
    for s in plan_strokes(plan):
        if not order or order[-1] != s.channel:
            order.append(s.channel)
    assert order == [1, 2, 0]


def test_strokes_start_where_the_gain_is_largest_and_ties_go_to_the_first_cell() -> None:
    plan = torch.zeros(1, 1, 10, 10)
    plan[0, 0, 6:9, 2:5] = 1.0
    plan[0, 0, 1:4, 6:9] = 1.0  # same mass; earlier in row-major order
    first = plan_strokes(plan, move_sigma=0.0)[0]
    assert (first.y, first.x) == (2, 7)
    plan[0, 0, 6:9, 2:5] = 2.0
    first = plan_strokes(plan, move_sigma=0.0)[0]
    assert (first.y, first.x) == (7, 3)


def test_joint_strokes_paint_all_channels_on_a_cell_grid() -> None:
    plan = converging_plan(steps=4, channels=3, size=32)
    frames = list(paint(plan, channels="joint", cell=8, theta=0.05))
    strokes = plan_strokes(plan, channels="joint", cell=8, theta=0.05)
    assert strokes and all(s.channel == -1 and 0 <= s.y < 4 and 0 <= s.x < 4 for s in strokes)
    for frame in frames[:-1]:
        # Every channel of the same pixels, in whole 8×8 cells.
        assert torch.equal(frame.mask, frame.mask[:1].expand_as(frame.mask))
        cells = frame.mask[0].view(4, 8, 4, 8).any(dim=(1, 3))
        assert int(frame.mask[0].sum()) == int(cells.sum()) * 64
    assert torch.equal(frames[-1].canvas, plan[-1])


def test_cell_grid_handles_sizes_that_are_not_multiples_of_the_cell(planner: str) -> None:
    plan = random_plan(steps=3, channels=2, h=13, w=10)
    want_strokes, want_frames = reference_frames(plan, cell=4, theta=0.05)
    assert plan_strokes(plan, cell=4, theta=0.05) == want_strokes
    frames = list(paint(plan, cell=4, theta=0.05))
    _frames_equal(frames, want_frames)
    # The grid is 4×3 cells; strokes reach the partial cells of the last row and column.
    assert all(0 <= s.y < 4 and 0 <= s.x < 3 for s in want_strokes)
    painted = torch.stack([f.mask for f in frames[:-1]]).any(dim=0).any(dim=0)
    assert bool(painted[12].any()) and bool(painted[:, 9].any())


def test_round_brush_overlaps_its_neighbours_and_leaves_no_gaps() -> None:
    g = torch.Generator().manual_seed(2)
    picture = 0.5 + 0.3 * torch.rand(3, 48, 48, generator=g)
    plan = torch.stack([picture * 0.6, picture])
    params = {"channels": "joint", "cell": 4, "brush": "round", "theta": 0.02}
    frames = list(paint(plan, **params))
    painted = torch.zeros(48, 48, dtype=torch.bool)
    wider = False
    for frame in frames[:-1]:
        rows = frame.mask[0].any(dim=1).nonzero()
        wider |= int(rows.max() - rows.min()) + 1 > 3 * 4  # larger than the 3×3 cells it claims
        painted |= frame.mask[0]
    assert wider
    assert bool(painted.all()), "paper shows through between round strokes"
    before_flush = frames[-2].canvas
    assert float((before_flush - picture).abs().mean()) < 0.05 * float(picture.abs().mean())
    assert torch.equal(frames[-1].canvas, plan[-1])


@pytest.mark.parametrize("count", [1, 2, 40, 5000])
def test_exactly_the_requested_number_of_frames(count: int) -> None:
    plan = converging_plan(steps=4, channels=2, size=16)
    start = torch.full(plan.shape[1:], 0.25)
    natural = len(plan_strokes(plan, start))
    assert 40 < natural < 5000
    frames = list(paint(plan, start=start, frames=count))
    assert len(frames) == count
    assert torch.equal(frames[-1].canvas, plan[-1])
    masks = torch.stack([f.mask for f in frames])
    if count == 5000:
        # Fewer strokes than frames: one stroke per frame at most, the rest held.
        empty = int((~masks[:-1].flatten(1).any(dim=1)).sum())
        assert empty == count - 1 - natural
    if count == 1:
        assert torch.equal(frames[0].mask, (start != plan[-1]) | frames[0].mask)
        assert bool(frames[0].mask.any())
    steps = [f.step for f in frames]
    assert steps == sorted(steps) and steps[-1] == plan.shape[0] - 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_precisions_keep_their_dtype_and_end_on_the_plan(dtype: torch.dtype) -> None:
    plan = converging_plan(steps=4, channels=3, size=16).to(dtype)
    frames = list(paint(plan, frames=30, brush="round"))
    assert all(f.canvas.dtype == dtype for f in frames)
    assert torch.equal(frames[-1].canvas, plan[-1])


def test_yielded_canvases_are_independent_of_later_frames() -> None:
    plan = converging_plan(steps=3, channels=2, size=16)
    frames = paint(plan, frames=20)
    first = next(frames)
    kept = first.canvas.clone()
    rest = list(frames)
    assert torch.equal(first.canvas, kept)
    first.canvas.fill_(7.0)
    assert not any(bool((f.canvas == 7.0).all()) for f in rest)


def test_nothing_to_paint_gives_just_the_final_frame() -> None:
    plan = torch.ones(3, 2, 8, 8)
    frames = list(paint(plan, start=torch.ones(2, 8, 8)))
    assert len(frames) == 1
    assert not bool(frames[0].mask.any())
    assert torch.equal(frames[0].canvas, plan[-1])

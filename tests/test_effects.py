"""Every effect's contract, the release effects of Appendix C, the policy, and evenness."""

from __future__ import annotations

import pytest
import torch

from painter.effects import EFFECTS, default_params, paint
from painter.effects.policy import ReleasePolicy, allocate_frames, painted_steps, spread
from painter.frame import Frame
from tests.reference_strokes import converging_plan

RELEASE_EFFECTS = ("glow", "flip", "fade", "dissolve")


@pytest.fixture(scope="module")
def plan() -> torch.Tensor:
    return converging_plan(steps=10, channels=4, size=24, seed=5)


def _changes(frames: list[Frame], start: torch.Tensor) -> list[float]:
    out, previous = [], start
    for frame in frames:
        out.append(float((frame.canvas - previous).abs().sum(dtype=torch.float64)))
        previous = frame.canvas
    return out


def run_ahead(frames: list[Frame], start: torch.Tensor) -> float:
    """Max over frames of (share of the total change released so far − share of frames shown)."""
    changes = _changes(frames, start)
    total, released, worst = sum(changes), 0.0, float("-inf")
    for i, change in enumerate(changes, start=1):
        released += change
        worst = max(worst, released / total - i / len(changes))
    return worst


# --- the contract every effect keeps ---------------------------------------------------


@pytest.mark.parametrize("effect", EFFECTS)
@pytest.mark.parametrize("count", [None, 1, 3, 97])
@pytest.mark.parametrize("with_start", [False, True])
def test_every_effect_ends_on_the_plan_with_the_requested_frame_count(
    plan: torch.Tensor, effect: str, count: int | None, with_start: bool
) -> None:
    start = torch.randn(plan.shape[1:], generator=torch.Generator().manual_seed(1)) if with_start else None
    frames = list(paint(plan, effect, start=start, frames=count))
    if count is not None:
        assert len(frames) == count
    assert torch.equal(frames[-1].canvas, plan[-1])
    assert frames[-1].step == plan.shape[0] - 1
    previous = torch.zeros(plan.shape[1:]) if start is None else start
    steps = []
    for frame in frames:
        assert frame.canvas.shape == frame.mask.shape == plan.shape[1:]
        assert frame.mask.dtype == torch.bool and frame.canvas.dtype == plan.dtype
        # Every changed cell is in the mask.
        assert not bool(((frame.canvas != previous) & ~frame.mask).any())
        previous = frame.canvas
        steps.append(frame.step)
    assert steps == sorted(steps) and 0 <= steps[0]


@pytest.mark.parametrize("effect", EFFECTS)
def test_frames_are_fresh_tensors_the_consumer_may_keep(plan: torch.Tensor, effect: str) -> None:
    frames = list(paint(plan, effect, frames=40))
    kept = [f.canvas.clone() for f in frames]
    for frame in frames[:-1]:
        frame.canvas.add_(100.0)
    assert torch.equal(frames[-1].canvas, kept[-1])
    assert len({f.canvas.data_ptr() for f in frames}) == len(frames)


def test_natural_frame_counts(plan: torch.Tensor) -> None:
    assert len(list(paint(plan, "sharpen"))) == plan.shape[0]
    painted = len(painted_steps(plan, torch.zeros(plan.shape[1:]), 0.35))
    for effect in RELEASE_EFFECTS:
        assert len(list(paint(plan, effect))) == 12 * painted
        assert len(list(paint(plan, effect, frames_per_step=5, release=0.0))) == 5 * plan.shape[0]


@pytest.mark.parametrize("effect", RELEASE_EFFECTS)
def test_pacing_keeps_the_opening_step_from_filling_the_animation(effect: str) -> None:
    # Paper to the rough picture changes 16x more than each of the four refinements after
    # it (an SD-like trail): frames in proportion to the change would give the opening 80 %
    # of the animation and leave the details a blink at the end.
    plan = torch.stack([torch.full((2, 8, 8), 4.0 + 0.25 * t) for t in range(5)])

    def opening_share(**params: float) -> float:
        steps = [frame.step for frame in paint(plan, effect, frames=100, release=0.0, **params)]
        assert sorted(set(steps)) == [0, 1, 2, 3, 4]
        return steps.count(0) / len(steps)

    assert opening_share(pacing=1.0) == pytest.approx(0.8, abs=0.02)
    assert opening_share() == pytest.approx(0.5, abs=0.02)  # default 0.5: 4 / (4 + 4 x 1)
    assert opening_share(pacing=0.0) == pytest.approx(0.2, abs=0.02)


def test_release_evenness_strokes_far_more_even_than_the_plain_sequence() -> None:
    plan = converging_plan(steps=12, channels=4, size=32, seed=2)
    start = torch.zeros(plan.shape[1:])
    sharpen = run_ahead(list(paint(plan, "sharpen")), start)
    assert sharpen > 0.3  # the x0-hat sequence shows most of the picture in its first frames
    strokes = run_ahead(list(paint(plan, "strokes")), start)
    assert strokes < 0.5 * sharpen
    assert run_ahead(list(paint(plan, "strokes", frames=150)), start) < 0.5 * sharpen
    for effect in RELEASE_EFFECTS:
        assert run_ahead(list(paint(plan, effect)), start) < 0.5 * sharpen, effect


# --- the release effects ---------------------------------------------------------------


def _one_step(target: torch.Tensor) -> torch.Tensor:
    return target[None]


def test_glow_radiates_from_the_mass_centre() -> None:
    target = torch.zeros(2, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    target[:] = torch.exp(-((yy - 8) ** 2 + (xx - 22) ** 2) / 40.0)
    frames = list(paint(_one_step(target), "glow", frames=8))
    mass = target.abs().sum(dim=0)
    centre = torch.stack([(mass * yy).sum(), (mass * xx).sum()]) / mass.sum()
    assert float((centre - torch.tensor([8.0, 22.0])).norm()) < 0.5
    radii = []
    for frame in frames[:-1]:
        cells = frame.mask.any(dim=0).nonzero().float()
        distance = (cells - centre).norm(dim=1)
        radii.append(float(distance.mean()))
        shown = (frame.canvas == target).all(dim=0)
        shown_distance = (torch.stack([yy[shown], xx[shown]], dim=1) - centre).norm(dim=1)
        hidden_distance = (torch.stack([yy[~shown], xx[~shown]], dim=1) - centre).norm(dim=1)
        assert float(shown_distance.max()) <= float(hidden_distance.min()) + 1e-4  # a disc
    assert radii == sorted(radii) and radii[0] < 3.0
    # Equal shares of the change per ring: the inner rings are thin where the change is dense.
    changes = _changes(frames, torch.zeros_like(target))
    assert max(changes) < 2.0 * min(changes)


@pytest.mark.parametrize("direction", ["diagonal", "horizontal"])
def test_flip_sweeps_across_at_constant_speed(direction: str) -> None:
    target = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0)) + 0.5
    frames = list(paint(_one_step(target), "flip", frames=10, direction=direction))
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(30.0), indexing="ij")
    position = (xx + 0.5) / 30 if direction == "horizontal" else (xx + 0.5) / 30 + (yy + 0.5) / 20
    fronts = []
    for frame in frames:
        shown = (frame.canvas == target).all(dim=0)
        assert float(position[shown].max()) < float(position[~shown].min()) if not shown.all() else True
        fronts.append(float(position[shown].max()))
    steps = torch.diff(torch.tensor(fronts))
    assert bool((steps > 0).all())
    assert float(steps.max() - steps.min()) < 0.15 * float(position.max())
    if direction == "horizontal":
        # A vertical band: a column is shown whole or not at all.
        for frame in frames:
            shown = (frame.canvas == target).all(dim=0)
            assert torch.equal(shown, shown[:1].expand_as(shown))


def test_fade_moves_everything_by_equal_fractions() -> None:
    start = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(3))
    target = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(4))
    frames = list(paint(_one_step(target), "fade", start=start, frames=4))
    for j, frame in enumerate(frames[:-1], start=1):
        torch.testing.assert_close(frame.canvas, start + j / 4 * (target - start))
        assert bool(frame.mask.all())


def test_dissolve_content_releases_the_largest_change_first() -> None:
    g = torch.Generator().manual_seed(6)
    target = torch.randn(3, 24, 24, generator=g) * torch.rand(1, 24, 24, generator=g) ** 3
    frames = list(paint(_one_step(target), "dissolve", frames=6))
    mass = target.abs().sum(dim=0)
    means = [float(mass[f.mask.any(dim=0)].mean()) for f in frames if bool(f.mask.any())]
    assert means == sorted(means, reverse=True)
    changes = _changes(frames, torch.zeros_like(target))
    assert max(changes) < 1.5 * min(changes)


def test_dissolve_random_is_seeded_and_ignores_the_content() -> None:
    g = torch.Generator().manual_seed(7)
    target = torch.randn(3, 24, 24, generator=g) * torch.rand(1, 24, 24, generator=g) ** 3
    plan = torch.stack([target * 0.5, target])

    def masks(seed: int) -> list[torch.Tensor]:
        return [f.mask for f in paint(plan, "dissolve", frames=12, mode="random", seed=seed)]

    assert all(torch.equal(a, b) for a, b in zip(masks(1), masks(1), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(masks(1), masks(2), strict=True))
    first = masks(1)[0].any(dim=0)
    mass = target.abs().sum(dim=0)
    # A random fifth-ish of the cells, not the heaviest ones.
    assert 0.1 < float(first.float().mean()) < 0.3
    assert float(mass[first].mean()) < 2.0 * float(mass.mean())
    # Equal numbers of cells per frame within a step.
    counts = [int(m.any(dim=0).sum()) for m in masks(1)[:5]]
    assert max(counts) - min(counts) <= 1


def test_sharpen_shows_each_plan_entry(plan: torch.Tensor) -> None:
    frames = list(paint(plan, "sharpen"))
    for t, frame in enumerate(frames):
        assert frame.step == t and torch.equal(frame.canvas, plan[t])
    held = list(paint(plan, "sharpen", frames=25))
    assert [f.step for f in held][:3] == [0, 0, 1]
    assert not bool(held[1].mask.any())
    assert [f.step for f in paint(plan, "sharpen", frames=4)] == [2, 4, 7, 9]


def test_release_effects_skip_steps_that_change_little() -> None:
    g = torch.Generator().manual_seed(8)
    base = torch.randn(2, 16, 16, generator=g)
    plan = torch.stack([base, base + 0.05 * torch.randn(2, 16, 16, generator=g), 2 * base])
    for effect in RELEASE_EFFECTS:
        assert {f.step for f in paint(plan, effect)} == {0, 2}, effect
        assert {f.step for f in paint(plan, effect, release=0.0)} == {0, 1, 2}, effect


# --- policy and frame allocation -----------------------------------------------------


def test_release_policy_compares_with_the_largest_earlier_total() -> None:
    policy = ReleasePolicy(0.5)
    assert [policy.admit(x) for x in (10.0, 4.0, 6.0, 30.0, 14.0, 15.0)] == [
        True,
        False,
        True,
        True,
        False,
        True,
    ]


def test_allocate_frames_is_proportional_and_exact() -> None:
    assert allocate_frames([3.0, 1.0], 9) == [6, 3]
    assert allocate_frames([1.0, 1.0, 0.0], 5) == [2, 2, 1]  # the last step always gets a frame
    assert allocate_frames([0.0, 0.0], 3) == [1, 2]
    assert sum(allocate_frames([5.0, 0.1, 2.0, 0.7], 101)) == 101
    with pytest.raises(ValueError):
        allocate_frames([1.0], 0)


def test_spread_fills_slots_evenly_in_order() -> None:
    assert spread(7, 3) == [0, 0, 0, 1, 1, 2, 2]
    assert spread(2, 5) == [0, 2]


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("effect", "params", "words"),
    [
        ("smudge", {}, ["smudge", "strokes", "glow"]),
        ("strokes", {"sigma": 1.0}, ["strokes", "sigma", "move_sigma"]),
        ("glow", {"theta": 0.1}, ["glow", "theta", "release"]),
        ("strokes", {"neighbourhood": 4}, ["neighbourhood", "odd"]),
        ("strokes", {"theta": -0.1}, ["theta", ">= 0"]),
        ("strokes", {"release": 1.5}, ["release", "<= 1"]),
        ("strokes", {"channels": "rgb"}, ["channels", "'each'", "'joint'"]),
        ("strokes", {"brush": "fan"}, ["brush", "'round'"]),
        ("strokes", {"step_budget": 0}, ["step_budget", "None"]),
        ("strokes", {"strokes_per_frame": True}, ["strokes_per_frame"]),
        ("strokes", {"move_sigma": float("nan")}, ["move_sigma"]),
        ("strokes", {"brush_scale": 0.5}, ["brush_scale", ">= 1"]),
        ("dissolve", {"mode": "wave"}, ["dissolve", "mode", "'random'"]),
        ("flip", {"direction": "up"}, ["flip", "direction", "'diagonal'"]),
        ("fade", {"frames_per_step": 0}, ["fade", "frames_per_step"]),
        ("sharpen", {"release": 0.5}, ["sharpen", "release", "none"]),
    ],
)
def test_bad_effect_or_parameter_raises_a_clear_value_error(
    effect: str, params: dict, words: list[str]
) -> None:
    plan = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError) as caught:
        paint(plan, effect, **params)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"plan": torch.zeros(4, 4, 4)}, "plan"),
        ({"plan": torch.zeros(0, 1, 4, 4)}, "plan"),
        ({"plan": torch.zeros(2, 1, 4, 4, dtype=torch.int64)}, "floating"),
        ({"start": torch.zeros(1, 4, 5)}, "start"),
        ({"plan": torch.full((2, 1, 4, 4), float("nan"))}, "NaN"),
        ({"start": torch.full((1, 4, 4), float("inf"))}, "start contains"),
        ({"frames": 0}, "frames"),
        ({"frames": True}, "frames"),
    ],
)
def test_bad_plan_start_or_frames_raise_value_error(kwargs: dict, word: str) -> None:
    args = {"plan": torch.zeros(2, 1, 4, 4)} | kwargs
    plan = args.pop("plan")
    for effect in EFFECTS:
        with pytest.raises(ValueError, match=word):
            paint(plan, effect, **args)


def test_default_params_lists_what_each_effect_accepts() -> None:
    assert default_params("strokes") == {
        "theta": 0.08,
        "neighbourhood": 3,
        "release": 0.35,
        "move_sigma": 6.0,
        "strokes_per_frame": 1,
        "step_budget": None,
        "channels": "each",
        "cell": 1,
        "brush": "square",
        "brush_scale": 1.5,
    }
    assert default_params("sharpen") == {}
    assert set(default_params("dissolve")) == {"release", "frames_per_step", "pacing", "mode", "seed"}
    for effect in EFFECTS:
        frames = list(paint(torch.rand(3, 2, 8, 8), effect, frames=5, **default_params(effect)))
        assert len(frames) == 5
    with pytest.raises(ValueError, match="unknown effect"):
        default_params("blur")

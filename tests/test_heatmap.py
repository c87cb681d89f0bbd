"""The heatmap beside each animation: where strokes landed, or when each cell got its paint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from painter.animate import AnimationSpec, animate
from painter.decode import Decoder
from painter.heatmap import CHANNEL_COLOURS, HeatmapAccumulator

GROUND = np.array([10, 8, 20])  # the heat scale's dark end: never painted
SIZE = (8, 8)


def _pixels(heat: HeatmapAccumulator, space: str = "latent") -> np.ndarray:
    return np.asarray(heat.image(SIZE, space=space)).astype(int)


def test_stroke_counts_are_brighter_where_the_brush_went_more_often() -> None:
    heat = HeatmapAccumulator((1, 8, 8))
    for times, cell in ((5, (1, 1)), (2, (4, 4))):
        for _ in range(times):
            mask = torch.zeros(1, 8, 8, dtype=torch.bool)
            mask[0, cell[0], cell[1]] = True
            heat.add(mask)
    image = _pixels(heat)
    often, twice, never = image[1, 1].sum(), image[4, 4].sum(), image[6, 6]
    assert often > twice > never.sum()
    assert (never == GROUND).all()


def test_pixel_space_strokes_use_the_heat_scale_not_a_grey_mix_of_r_g_b() -> None:
    # Joint strokes in RGB, but one channel already held its target in one cell, so the
    # per-channel counts differ a little: the map must still read as heat, not grey.
    heat = HeatmapAccumulator((3, 8, 8))
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, :4] = True
    for _ in range(3):
        heat.add(mask)
    mask[1, 0, 0] = False
    heat.add(mask)
    hot = _pixels(heat, space="pixel")[2, 2]
    assert hot[0] - hot[2] > 60  # the bright end of the heat scale is warm: R well over B
    assert (_pixels(heat, space="pixel")[6, 6] == GROUND).all()


def test_latent_stroke_counts_are_tinted_per_channel() -> None:
    heat = HeatmapAccumulator((4, 8, 8))
    mask = torch.zeros(4, 8, 8, dtype=torch.bool)
    mask[0, :, :4] = True  # channel 0 on the left
    mask[2, :, 4:] = True  # channel 2 on the right
    heat.add(mask)
    image = _pixels(heat)
    left, right = image[3, 1], image[3, 6]
    assert np.argmax(left) == np.argmax(CHANNEL_COLOURS[0])
    assert np.argmax(right) == np.argmax(CHANNEL_COLOURS[2])


def test_update_heatmap_shows_when_cells_changed_early_dark_late_bright() -> None:
    start = torch.zeros(1, 8, 8)
    heat = HeatmapAccumulator((1, 8, 8), start=start)
    canvas = start.clone()
    for row in range(6):  # row r changes in frame r + 1; rows 6-7 never change
        canvas = canvas.clone()
        canvas[0, row] = 1.0
        heat.add(canvas != 0, canvas)
    image = _pixels(heat)
    brightness = [image[row, 3].sum() for row in range(6)]
    assert brightness == sorted(brightness) and brightness[-1] > brightness[0] + 200
    assert (image[7, 3] == GROUND).all()
    # An update heatmap cannot be fed masks alone.
    with pytest.raises(ValueError, match="canvas"):
        heat.add(canvas != 0)


def test_update_time_weighs_each_change_by_its_size() -> None:
    start = torch.zeros(1, 8, 8)
    heat = HeatmapAccumulator((1, 8, 8), start=start)
    first = start.clone()
    first[0, :, :4] = 0.9  # left: most of its change early
    first[0, :, 4:] = 0.1  # right: most of its change late
    heat.add(first != start, first)
    heat.add(torch.ones(1, 8, 8, dtype=torch.bool), torch.ones(1, 8, 8))
    image = _pixels(heat)
    assert image[4, 1].sum() < image[4, 6].sum()


def _heatmap_of(effect: str, tmp_path: Path) -> np.ndarray:
    # Pixel space, one step from paper to a flat colour: every cell changes by the same
    # amount, so only the effect's order of release tells the cells apart.
    plan = torch.full((1, 3, 32, 32), 0.5)
    spec = AnimationSpec(effect=effect, fps=10, duration=3.0, hold=0.0)
    animation = animate(plan, Decoder(None), spec, tmp_path / f"{effect}.mp4", space="pixel")
    return np.asarray(animation.heatmap.resize((32, 32))).astype(int).sum(axis=2)


def test_glow_radiates_from_the_centre_and_flip_sweeps_from_a_corner(tmp_path: Path) -> None:
    glow = _heatmap_of("glow", tmp_path)
    assert glow[14:18, 14:18].mean() + 150 < glow[[0, 0, -1, -1], [0, -1, 0, -1]].mean()
    flip = _heatmap_of("flip", tmp_path)
    assert flip[:4, :4].mean() + 150 < flip[-4:, -4:].mean()


def _transition_heatmap(effect: str, tmp_path: Path) -> np.ndarray:
    """A transition in pixel space: a random source un-paints to grey in 3 steps, then a
    flat colour is painted in 8, its centre arriving late (details last) and its edges early."""
    torch.manual_seed(0)
    source = torch.rand(3, 32, 32) * 1.6 - 0.8
    backward = [source * 2 / 3, source / 3, torch.zeros_like(source)]
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    centre = (1 - ((ys - 15.5) ** 2 + (xs - 15.5) ** 2).sqrt() / 22).clamp(0, 1)  # 1 centre, 0 corners
    colour = torch.tensor([0.6, -0.4, 0.2])[:, None, None].expand(3, 32, 32)
    forward = [colour * (k / 8) ** (1 + 3 * centre) for k in range(1, 9)]
    plan = torch.stack(backward + forward)
    spec = AnimationSpec(effect=effect, fps=10, duration=6.0, hold=0.0)
    out = tmp_path / f"t_{effect}.mp4"
    animation = animate(plan, Decoder(None), spec, out, start=source, space="pixel", heat_from=len(backward))
    return np.asarray(animation.heatmap.resize((32, 32))).astype(int).sum(axis=2)


def test_a_transition_heatmap_shows_how_the_destination_was_painted_by_each_effect(tmp_path: Path) -> None:
    corners = ([0, 0, -1, -1], [0, -1, 0, -1])
    # The destination's centre is painted last, whatever the effect: yet glow's rings and
    # flip's sweep, not that, are what tells the effects apart.
    glow = _transition_heatmap("glow", tmp_path)
    assert glow[14:18, 14:18].mean() + 150 < glow[corners].mean()
    flip = _transition_heatmap("flip", tmp_path)
    assert flip[:4, :4].mean() + 150 < flip[-4:, -4:].mean()
    # A fade releases every cell at once, step by step: its map is when the paint came.
    fade = _transition_heatmap("fade", tmp_path)
    assert fade[14:18, 14:18].mean() > fade[corners].mean() + 150
    assert np.corrcoef(glow.ravel(), fade.ravel())[0, 1] < 0.5

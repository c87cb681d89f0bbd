"""animate(): the opening still is decoded once; adaptive rendering decodes fewer frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

from painter.animate import AnimationSpec, animate
from painter.video import read_frames
from tests.counting import CountingDecoder


def test_the_opening_still_is_decoded_once_and_blank_paper_not_at_all(tiny_model, tmp_path: Path) -> None:
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    g = torch.Generator().manual_seed(0)
    plan = torch.randn(5, 4, 8, 8, generator=g).cumsum(0) / 3
    source = torch.randn(4, 8, 8, generator=g)
    # A transition's opening; every painted frame decoded, to count the still's decodes.
    spec = AnimationSpec(effect="fade", fps=10, duration=3.0, lead_in=0.5, render="exact")
    assert spec.lead_in_frames == 5

    decoder = CountingDecoder(vae, scaling_factor=float(vae.config.scaling_factor))
    animate(plan, decoder, spec, tmp_path / "t.mp4", start=source)
    painted = spec.total_frames - spec.hold_frames - spec.lead_in_frames
    assert decoder.decoded == painted + 1  # the source picture once, not once per frame it shows
    _, frames = read_frames(tmp_path / "t.mp4")
    assert len(frames) == spec.total_frames
    opening = frames[: spec.lead_in_frames]
    assert all(np.array_equal(frame, opening[0]) for frame in opening)  # one still, held

    paint_spec = AnimationSpec(effect="fade", fps=10, duration=3.0, render="exact")  # opens on blank paper
    blank = CountingDecoder(vae, scaling_factor=float(vae.config.scaling_factor))
    animate(plan, blank, paint_spec, tmp_path / "p.mp4")
    assert blank.decoded == paint_spec.total_frames - paint_spec.hold_frames - paint_spec.lead_in_frames
    _, frames = read_frames(tmp_path / "p.mp4")
    paper = np.array((245, 240, 230))
    assert np.abs(frames[0].astype(int) - paper).max() <= 3  # the paper itself, through H.264


def test_adaptive_rendering_decodes_fewer_frames_for_the_same_animation(tiny_taesd, tmp_path: Path) -> None:
    """The default render mode: the same frames, within the tolerance, for fewer decodes."""
    vae = AutoencoderTiny.from_pretrained(tiny_taesd).eval()
    g = torch.Generator().manual_seed(1)
    plan = (torch.randn(4, 4, 8, 8, generator=g).cumsum(0) / 3).repeat_interleave(3, dim=0)
    counts, videos = {}, {}
    for render in ("exact", "adaptive"):
        spec = AnimationSpec(effect="strokes", fps=30, duration=3.0, render=render, crf=0)
        decoder = CountingDecoder(vae)
        animation = animate(plan, decoder, spec, tmp_path / f"{render}.mp4")
        counts[render] = decoder.decoded
        _, videos[render] = read_frames(tmp_path / f"{render}.mp4")
        assert len(videos[render]) == spec.total_frames
        assert animation.frames_painted == spec.total_frames - spec.hold_frames - spec.lead_in_frames
    assert counts["adaptive"] < counts["exact"] * 0.6
    worst = min(_psnr(a, b) for a, b in zip(videos["exact"], videos["adaptive"], strict=True))
    assert worst >= 30.0
    assert np.array_equal(videos["exact"][-1], videos["adaptive"][-1])  # the finished picture


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)

"""animate(): the opening still is decoded once, however long it is held."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from painter.animate import AnimationSpec, animate
from painter.decode import Decoder
from painter.video import read_frames


class CountingDecoder(Decoder):
    """The tiny model's VAE, counting the canvases it decodes."""

    decoded = 0

    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        self.decoded += canvases.shape[0]
        return super().decode_float(canvases)


def test_the_opening_still_is_decoded_once_and_blank_paper_not_at_all(tiny_model, tmp_path: Path) -> None:
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    g = torch.Generator().manual_seed(0)
    plan = torch.randn(5, 4, 8, 8, generator=g).cumsum(0) / 3
    source = torch.randn(4, 8, 8, generator=g)
    spec = AnimationSpec(effect="fade", fps=10, duration=3.0, lead_in=0.5)  # a transition's opening
    assert spec.lead_in_frames == 5

    decoder = CountingDecoder(vae, scaling_factor=float(vae.config.scaling_factor))
    animate(plan, decoder, spec, tmp_path / "t.mp4", start=source)
    painted = spec.total_frames - spec.hold_frames - spec.lead_in_frames
    assert decoder.decoded == painted + 1  # the source picture once, not once per frame it shows
    _, frames = read_frames(tmp_path / "t.mp4")
    assert len(frames) == spec.total_frames
    opening = frames[: spec.lead_in_frames]
    assert all(np.array_equal(frame, opening[0]) for frame in opening)  # one still, held

    paint_spec = AnimationSpec(effect="fade", fps=10, duration=3.0)  # opens on blank paper
    blank = CountingDecoder(vae, scaling_factor=float(vae.config.scaling_factor))
    animate(plan, blank, paint_spec, tmp_path / "p.mp4")
    assert blank.decoded == paint_spec.total_frames - paint_spec.hold_frames - paint_spec.lead_in_frames
    _, frames = read_frames(tmp_path / "p.mp4")
    paper = np.array((245, 240, 230))
    assert np.abs(frames[0].astype(int) - paper).max() <= 3  # the paper itself, through H.264

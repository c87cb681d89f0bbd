"""The closed-form painter: an outline-first trail that ends exactly on the picture."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from painter.analytic import (
    ANALYTIC_PAINT_DEFAULTS,
    analytic_trail,
    ddim_timesteps,
    paper_canvas,
    sd_alphas_cumprod,
)
from painter.effects import paint
from painter.images import DEFAULT_PAPER, image_to_tensor, tensor_to_image
from painter.sample_image import sample_picture
from painter.trail import Trail

SIZE = 128


@pytest.fixture(scope="module")
def picture() -> torch.Tensor:
    return image_to_tensor(sample_picture(SIZE, SIZE))


@pytest.fixture(scope="module")
def trail(picture: torch.Tensor) -> Trail:
    return analytic_trail(picture, 30, prompt="a lighthouse")


def _high_frequency_share(image: torch.Tensor, cutoff: float) -> float:
    """Share of the spectral energy of ``image`` minus its mean colour above ``cutoff`` cycles/pixel."""
    detail = image.double() - image.double().mean(dim=(-2, -1), keepdim=True)
    energy = torch.fft.fft2(detail).abs().pow(2).sum(dim=0)
    fy = torch.fft.fftfreq(image.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(image.shape[-1], dtype=torch.float64)[None, :]
    return float(energy[(fy**2 + fx**2) > cutoff**2].sum() / energy.sum())


def _band_energy(image: torch.Tensor, low: float, high: float) -> float:
    """Spectral energy of ``image`` at frequencies in (low, high] cycles/pixel, DC excluded."""
    energy = torch.fft.fft2(image.double()).abs().pow(2).sum(dim=0)
    fy = torch.fft.fftfreq(image.shape[-2], dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(image.shape[-1], dtype=torch.float64)[None, :]
    radius = (fy**2 + fx**2).sqrt()
    return float(energy[(radius > low) & (radius <= high)].sum())


def test_trail_ends_exactly_on_the_picture(trail: Trail, picture: torch.Tensor) -> None:
    assert torch.equal(trail.final, picture)
    # Every step keeps the picture's mean colour: the prior's mean is that colour.
    means = trail.latents.double().mean(dim=(2, 3))
    assert torch.allclose(means, picture.double().mean(dim=(1, 2)).expand_as(means), atol=1e-5)


def test_outline_first_details_later(trail: Trail) -> None:
    cutoff = 1 / 16  # periods shorter than 16 pixels count as detail
    shares = [_high_frequency_share(step, cutoff) for step in trail.latents]
    assert all(later > earlier for earlier, later in zip(shares, shares[1:], strict=False)), shares
    assert shares[0] < 0.01  # the first step is an outline: almost no detail
    assert shares[-1] > 20 * shares[0]
    # Halfway through, the coarse shapes are settled while most of the fine detail is still to come.
    picture, first, mid = trail.final, trail.latents[0], trail.latents[len(trail) // 2]
    low_left = _band_energy(mid - picture, 0, 1 / 32) / _band_energy(first - picture, 0, 1 / 32)
    high_left = _band_energy(mid - picture, 1 / 8, 1) / _band_energy(first - picture, 1 / 8, 1)
    assert low_left < 0.02 and high_left > 0.5, (low_left, high_left)


def test_trail_shape_meta_and_round_trip(trail: Trail, tmp_path: Path) -> None:
    assert trail.latents.shape == (30, 3, SIZE, SIZE)
    assert trail.latents.dtype == torch.float32
    assert torch.equal(trail.timesteps, ddim_timesteps(30).double())
    assert trail.timesteps[0] > trail.timesteps[-1]  # high noise to low
    meta = trail.meta
    assert (meta.space, meta.model_id, meta.vae_id) == ("pixel", "analytic", "")
    assert (meta.steps, meta.width, meta.height, meta.prompt) == (30, SIZE, SIZE, "a lighthouse")
    loaded = Trail.load(trail.save(tmp_path / "analytic.safetensors"))
    assert torch.equal(loaded.latents, trail.latents) and loaded.meta == meta


def test_schedule_is_stable_diffusions_ddim() -> None:
    # The configuration SD 1.5 ships with for DDIM.
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        set_alpha_to_one=False,
        clip_sample=False,
    )
    scheduler.set_timesteps(30)
    assert torch.equal(ddim_timesteps(30), scheduler.timesteps.long())
    assert torch.allclose(sd_alphas_cumprod().float(), scheduler.alphas_cumprod, rtol=1e-5)


def test_follows_a_given_scheduler_and_accepts_pil(picture: torch.Tensor) -> None:
    scheduler = DDIMScheduler(beta_schedule="linear")
    scheduler.set_timesteps(8)
    trail = analytic_trail(
        sample_picture(SIZE, SIZE),
        timesteps=scheduler.timesteps,
        alphas_cumprod=scheduler.alphas_cumprod,
    )
    assert len(trail) == 8 and torch.equal(trail.final, picture)
    assert trail.meta.extra["beta_schedule"] == "custom"


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        analytic_trail(torch.zeros(4, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        analytic_trail(torch.full((3, 16, 16), math.nan))
    with pytest.raises(ValueError, match="steps"):
        analytic_trail(torch.zeros(3, 16, 16), 0)
    with pytest.raises(ValueError, match="f0"):
        analytic_trail(torch.zeros(3, 16, 16), 4, f0=0.0)


def test_flat_picture_gives_flat_trail() -> None:
    flat = torch.full((3, 16, 24), 0.25)
    trail = analytic_trail(flat, 5)
    assert torch.allclose(trail.latents, flat.expand(5, -1, -1, -1))


def test_sample_picture_is_deterministic_and_has_its_scene() -> None:
    img = sample_picture(256, 192)
    assert img.size == (256, 192) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(sample_picture(256, 192)))
    pixels = np.asarray(img).astype(int)
    top, horizon_sky, sea = pixels[4].mean(0), pixels[int(0.55 * 192)].mean(0), pixels[-4].mean(0)
    assert top[2] > top[0]  # dusk blue above
    assert horizon_sky[0] > 200 and horizon_sky[0] > horizon_sky[2]  # warm glow at the horizon
    assert sea[2] > sea[0] and sea.mean() < 110  # dark blue water below
    red = (pixels[..., 0] > 160) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 300  # the lighthouse's red bands


def _psnr(canvas: torch.Tensor, picture: torch.Tensor) -> float:
    """PSNR in dB of two pixel-space pictures in [-1, 1] (peak-to-peak range 2)."""
    mse = float((canvas.clamp(-1, 1) - picture).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def test_strokes_paint_the_picture_onto_paper(trail: Trail, picture: torch.Tensor) -> None:
    start = paper_canvas(SIZE, SIZE)
    frames = list(paint(trail.latents, "strokes", start=start, frames=120, **ANALYTIC_PAINT_DEFAULTS))
    assert len(frames) == 120
    assert _psnr(frames[-1].canvas, picture) >= 35
    # The strokes, not the final flush, do the painting: the frame before the flush is
    # already the picture, with no cell left as paper or visibly off.
    before_flush = frames[-2].canvas
    assert _psnr(before_flush, picture) >= 35
    cell_error = F.avg_pool2d((before_flush - picture).abs().sum(0)[None, None], 8)
    assert float(cell_error.max()) < 0.25  # a paper-coloured cell would be off by > 1
    # Outline first: the painter works through the trail in order and reaches its late steps.
    steps = [frame.step for frame in frames]
    assert steps == sorted(steps) and steps[0] == 0
    assert max(steps[:-1]) >= len(trail) - 3
    # Early on, part of the sheet is still blank paper.
    early = frames[len(frames) // 20].canvas
    assert bool(((early - start).abs().sum(0) == 0).any())


def test_paper_canvas_is_the_paper_colour() -> None:
    canvas = paper_canvas(16, 24)
    assert canvas.shape == (3, 16, 24)
    assert tuple(np.asarray(tensor_to_image(canvas))[5, 5]) == DEFAULT_PAPER
    assert tuple(np.asarray(tensor_to_image(paper_canvas(8, 8, (1, 2, 3))))[0, 0]) == (1, 2, 3)


def test_defaults_are_accepted_by_the_strokes_effect() -> None:
    assert ANALYTIC_PAINT_DEFAULTS["channels"] == "joint"
    assert ANALYTIC_PAINT_DEFAULTS["cell"] == 8
    assert ANALYTIC_PAINT_DEFAULTS["brush"] == "round"
    # An unknown key or a bad value would raise before the first frame.
    paint(torch.zeros(2, 3, 16, 16), "strokes", frames=2, **ANALYTIC_PAINT_DEFAULTS)

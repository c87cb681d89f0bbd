"""The closed-form painter: an x0-hat trail for any picture, with no neural network.

Under a Gaussian model of images (Wang & Vastola, "Diffusion models generate images
like painters") the ideal denoiser is linear, and for a stationary prior it is a Wiener
filter. We take the prior's mean to be the picture's mean colour and its power spectrum
to fall like natural images', ``P(f) ∝ 1 / (f² + f0²)``, scaled so the prior's variance
equals the picture's. For a noised picture ``x_t = α_t·x + σ_t·ε`` the posterior mean is,
per spatial frequency f,

    E[x | x_t](f) = mean + W_t(f) · (x_t(f) / α_t − mean),   W_t(f) = α_t²P(f) / (α_t²P(f) + σ_t²).

We use the noise-free version, ``x0-hat_t = mean + W_t · (x − mean)``: averaging over the
noise leaves a progressive low-pass of the picture. Early in the schedule (σ_t ≫ α_t)
only the strongest, lowest frequencies pass — the outline; as σ_t falls, finer and finer
frequencies join — the details. (With one fixed noise draw instead, the late steps show
visible grain.) The trail's last entry is the picture itself.

The trail lives in pixel space (RGB in [-1, 1]); the painter strokes it directly, with
:data:`ANALYTIC_PAINT_DEFAULTS` giving strokes the scale one SD latent cell would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from painter.images import DEFAULT_PAPER, image_to_tensor
from painter.trail import Trail, TrailMeta

# Stable Diffusion's training schedule: "scaled_linear" betas over 1000 steps.
TRAIN_TIMESTEPS = 1000
BETA_START = 0.00085
BETA_END = 0.012

# The knee of the prior's spectrum, in cycles per pixel. Below it the spectrum flattens,
# so the very lowest frequencies are not all released at once in the first step.
DEFAULT_F0 = 1.0 / 128.0
DEFAULT_STEPS = 30

# Strokes parameters that suit this trail (the strokes effect's options, painter.effects),
# chosen by looking at contact sheets of the sample picture being painted:
# - channels="joint": a stroke paints R, G and B together; per-channel strokes on paper
#   show false magenta/cyan/yellow blocks.
# - cell=8, neighbourhood=3: decisions on 8x8-pixel cells (what one SD latent cell
#   covers), a stroke claims 3x3 of them, as a 3x3-latent stroke does in SD.
# - brush="round", brush_scale=2.0: a feathered disc reaching twice its claimed radius,
#   so neighbouring strokes overlap and no paper shows through at the end (the default
#   1.5 leaves paper-coloured stars where four strokes meet).
# - move_sigma=2.0 cells: the brush keeps to the cells beside its last stroke and lays
#   continuous trails of paint; a wider move cost scatters dabs into a polka-dot grid.
# - theta=0.1: a cell is repainted when its colour, summed over R, G and B, is off by
#   more than 0.1 on average (about 4 levels of 255 per channel): late steps then touch
#   only the edges and textures that changed instead of repainting flat sky.
# - release=0.01: the first step (the whole picture onto blank paper) dwarfs every
#   later one, which are small refinements; a larger release would skip most of them
#   and leave the details to the final flush.
ANALYTIC_PAINT_DEFAULTS: dict[str, object] = {
    "channels": "joint",
    "cell": 8,
    "neighbourhood": 3,
    "brush": "round",
    "brush_scale": 2.0,
    "move_sigma": 2.0,
    "theta": 0.1,
    "release": 0.01,
}


def paper_canvas(height: int, width: int, paper: tuple[int, int, int] = DEFAULT_PAPER) -> torch.Tensor:
    """Blank paper as a pixel-space canvas ``[3, H, W]`` in [-1, 1]: the start to paint on.

    Starting from paper (rather than zeros, which is mid-grey in pixel space) makes the
    round brush's feathered edges fade into the paper instead of into grey rims.
    """
    colour = torch.tensor(paper, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1.0
    return colour.expand(3, height, width).clone()


def sd_alphas_cumprod() -> torch.Tensor:
    """ᾱ_t for t = 0..999 of SD's scaled-linear β schedule (float64)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(steps: int) -> torch.Tensor:
    """``steps`` timesteps from high noise to low, spaced like SD's DDIM ("leading", offset 1)."""
    if not 1 <= steps <= TRAIN_TIMESTEPS:
        raise ValueError(f"steps must be between 1 and {TRAIN_TIMESTEPS}, got {steps}")
    ratio = TRAIN_TIMESTEPS // steps
    return (torch.arange(steps, dtype=torch.int64) * ratio).flip(0) + 1


def prior_spectrum(height: int, width: int, variance: float, f0: float = DEFAULT_F0) -> torch.Tensor:
    """The prior's power ``P(f) = c / (f² + f0²)`` on the FFT grid ``[H, W]`` (float64).

    f is in cycles per pixel. The DC term is zero (the mean is modelled separately) and c
    is chosen so the per-pixel variance of the prior, ``mean_f P(f)``, equals ``variance``.
    """
    if f0 <= 0:
        raise ValueError(f"f0 must be positive, got {f0}")
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    shape = 1.0 / (fy**2 + fx**2 + f0**2)
    shape[0, 0] = 0.0
    return shape * (variance * height * width / shape.sum())


def _as_pixels(image: torch.Tensor | Image.Image) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return image_to_tensor(image)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"the analytic painter needs an RGB picture [3, H, W] in [-1, 1], got {shape}")
    if not torch.isfinite(image).all():
        raise ValueError("the picture holds NaN or infinite values")
    return image.detach().to("cpu", torch.float32)


def analytic_trail(
    image: torch.Tensor | Image.Image,
    steps: int = DEFAULT_STEPS,
    *,
    f0: float = DEFAULT_F0,
    prompt: str = "",
    timesteps: Sequence[int] | torch.Tensor | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> Trail:
    """The x0-hat trail ``E[x | x_t]`` (noise-free) of ``image`` under the Gaussian prior.

    ``image`` is a PIL picture or an RGB tensor ``[3, H, W]`` in [-1, 1]. By default the
    schedule is SD's (scaled-linear β, 1000 training steps, ``steps`` DDIM-spaced
    timesteps); pass ``timesteps`` and ``alphas_cumprod`` (e.g. from a configured diffusers
    scheduler) to follow another. The result is a pixel-space :class:`Trail` of ``steps``
    entries whose last entry is exactly the picture.
    """
    x = _as_pixels(image)
    _, height, width = x.shape
    cumprod = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.to(torch.float64).cpu()
    ts = ddim_timesteps(steps) if timesteps is None else torch.as_tensor(timesteps, dtype=torch.int64)
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError("timesteps must be a non-empty 1-D sequence")
    if int(ts.min()) < 0 or int(ts.max()) >= cumprod.numel():
        raise ValueError(f"timesteps must lie in [0, {cumprod.numel() - 1}]")

    x64 = x.to(torch.float64)
    mean = x64.mean(dim=(1, 2), keepdim=True)
    detail = x64 - mean
    # One spectrum for all three channels, scaled to their average variance: a filter
    # shared by R, G and B blurs colours together, so no colour fringes appear at edges.
    power = prior_spectrum(height, width, float(detail.pow(2).mean()), f0)
    spectrum = torch.fft.rfft2(detail)
    power = power[:, : spectrum.shape[-1]]  # rfft2 keeps the non-negative x frequencies

    latents = torch.empty((ts.numel(), 3, height, width), dtype=torch.float32)
    for i, t in enumerate(ts.tolist()):
        signal = float(cumprod[t])  # α_t²
        noise = 1.0 - signal  # σ_t²
        gain = signal * power / (signal * power + noise)
        latents[i] = (mean + torch.fft.irfft2(spectrum * gain, s=(height, width))).to(torch.float32)
    # The generation's output is the picture: end on it exactly, not on the last filter.
    latents[-1] = x

    meta = TrailMeta(
        model_id="analytic",
        vae_id="",
        space="pixel",
        scheduler="DDIMScheduler" if alphas_cumprod is None else "custom",
        prediction_type="sample",
        prompt=prompt,
        steps=int(ts.numel()),
        width=width,
        height=height,
        extra={
            "prior": "gaussian, power 1/(f^2 + f0^2), mean colour of the picture",
            "f0": f0,
            "beta_schedule": "scaled_linear" if alphas_cumprod is None else "custom",
            "posterior": "noise-free mean (Wiener filter of the picture)",
        },
    )
    return Trail(latents=latents, timesteps=ts.to(torch.float64), meta=meta)

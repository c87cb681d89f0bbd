"""Run a diffusers pipeline and keep its x0-hat at every denoising step.

The trail is taken at the scheduler, not the pipeline: the scheduler's ``step`` is
wrapped for one call, so any Stable Diffusion-family pipeline (SD 1.x/2.x,
SD-Turbo, SDXL, and their img2img variants) and any scheduler work the same way.
x0-hat is the scheduler's own ``pred_original_sample`` where it reports one; for
DPM-Solver++ it is the solver's data prediction; elsewhere it is computed from the
model output for epsilon, v or sample prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from painter.decode import LatentScaling
from painter.models import LoadedModel
from painter.trail import Trail, TrailMeta

StepCallback = Callable[[int, int], None]


class CaptureError(ValueError):
    """Generation parameters that cannot be run; the message is meant for the user."""


@dataclass
class Generation:
    """What one generation asks for."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 30
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    # SDEdit: paint from a picture, noised up to ``strength`` and denoised with the prompt.
    image: Image.Image | None = None
    strength: float = 0.6


def x0_from_model_output(
    scheduler: Any, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor
) -> torch.Tensor:
    """x0-hat of a variance-preserving scheduler from its model output at ``timestep``."""
    prediction = scheduler.config.get("prediction_type", "epsilon")
    alphas = scheduler.alphas_cumprod.to(sample.device, torch.float32)
    t = int(timestep.item() if torch.is_tensor(timestep) else timestep)
    alpha = alphas[t].to(sample.dtype)
    if prediction == "epsilon":
        return (sample - (1 - alpha).sqrt() * model_output) / alpha.sqrt()
    if prediction == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * model_output
    if prediction == "sample":
        return model_output
    raise CaptureError(f"unsupported prediction_type {prediction!r}")


@contextmanager
def record_x0(scheduler: Any, on_step: Callable[[torch.Tensor, Any], None]):
    """Call ``on_step(x0_hat, timestep)`` at each scheduler step while the block runs."""
    original = scheduler.step

    def step(model_output, timestep, sample, *args, return_dict: bool = True, **kwargs):
        x0 = None
        convert = getattr(scheduler, "convert_model_output", None)
        algorithm = scheduler.config.get("algorithm_type", "")
        if convert is not None and "dpmsolver++" in str(algorithm):
            # The solver's own data prediction, taken before step() advances its index.
            if getattr(scheduler, "step_index", 0) is None:
                scheduler._init_step_index(timestep)
            x0 = convert(model_output, sample=sample)
        out = original(model_output, timestep, sample, *args, return_dict=True, **kwargs)
        if x0 is None:
            x0 = getattr(out, "pred_original_sample", None)
        if x0 is None:
            x0 = x0_from_model_output(scheduler, model_output, timestep, sample)
        on_step(x0.detach(), timestep)
        return out if return_dict else out.to_tuple()

    scheduler.step = step
    try:
        yield
    finally:
        del scheduler.step  # the instance attribute shadowed the class method


def img2img_steps(steps: int, strength: float) -> int:
    """Denoising steps an SDEdit run takes: diffusers' img2img runs ``int(steps × strength)``."""
    return int(steps * strength)


def check_img2img_steps(steps: int, strength: float) -> None:
    """Refuse an SDEdit request whose ``steps × strength`` rounds down to no step at all."""
    if img2img_steps(steps, strength) < 1:
        needed = math.ceil(1 / strength - 1e-9) if strength > 0 else 1
        raise CaptureError(
            f"with strength {strength:g}, {steps} step{'s repaint' if steps != 1 else ' repaints'} nothing "
            f"(steps × strength must reach 1): use at least {needed} steps or a higher strength"
        )


def validate_generation(gen: Generation, *, max_side: int = 1024, max_steps: int = 100) -> None:
    """Refuse requests the pipeline would fail on, with a message naming the allowed values."""
    if not gen.prompt or not gen.prompt.strip():
        raise CaptureError("the prompt is empty: describe the picture to paint")
    for name, value in (("width", gen.width), ("height", gen.height)):
        if value % 8 or value < 64 or value > max_side:
            raise CaptureError(f"{name} {value} must be a multiple of 8 between 64 and {max_side}")
    if not 1 <= gen.steps <= max_steps:
        raise CaptureError(f"steps {gen.steps} must be between 1 and {max_steps}")
    if not 0.0 <= gen.guidance <= 50.0:
        raise CaptureError(f"guidance {gen.guidance} must be between 0 and 50")
    if gen.image is not None and not 0.0 < gen.strength <= 1.0:
        raise CaptureError(f"strength {gen.strength} must be in (0, 1]")
    if gen.image is not None:
        check_img2img_steps(gen.steps, gen.strength)
    if not 0 <= gen.seed < 2**63:
        raise CaptureError(f"seed {gen.seed} must be between 0 and 2^63-1")


def capture(
    model: LoadedModel,
    gen: Generation,
    *,
    on_step: StepCallback | None = None,
) -> tuple[torch.Tensor, Trail]:
    """Generate once and return the final latent ``[C, H, W]`` and the x0-hat trail.

    ``on_step(i, total)`` is called after each denoising step; raising from it stops
    the generation (that is how a cancelled job stops at its next step).
    """
    pipe = model.pipeline
    if gen.image is not None:
        from diffusers import AutoPipelineForImage2Image

        pipe = AutoPipelineForImage2Image.from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
        if pipe.vae.dtype != model.dtype:
            # A Decoder upcast the shared VAE (one whose config asks for fp32, as SDXL's does):
            # img2img encodes the picture in the pipeline's dtype (SDXL's upcasts by itself).
            pipe.vae.to(dtype=model.dtype)
    scheduler = pipe.scheduler
    latents: list[torch.Tensor] = []
    timesteps: list[torch.Tensor] = []
    expected = gen.steps if gen.image is None else max(1, img2img_steps(gen.steps, gen.strength))
    planned: list[int] = []

    def keep(x0: torch.Tensor, timestep: Any) -> None:
        # Kept on the pipeline's device until the end: a copy to the CPU here would wait for
        # the GPU at every step, and the pipeline could no longer queue the next step's work
        # ahead (on an H100 a /paint job's generation took 0.3-0.8 s over the plain one's with
        # per-step copies; bench/RESULTS.md).
        latents.append(x0[0].to(torch.float32, copy=True))
        timesteps.append(timestep.detach().clone() if torch.is_tensor(timestep) else torch.tensor(timestep))
        if on_step is not None:
            if not planned:
                # The pipeline knows, once it has started, how many scheduler steps its loop
                # takes: PNDM takes one more than asked, Heun two per step (the shown count
                # grew mid-job, "step 4/4" then "step 5/5").
                planned.append(int(getattr(pipe, "_num_timesteps", 0) or expected))
            on_step(len(latents), max(planned[0], len(latents)))

    kwargs: dict[str, Any] = {
        "prompt": gen.prompt,
        "negative_prompt": gen.negative_prompt or None,
        "num_inference_steps": gen.steps,
        "guidance_scale": gen.guidance,
        "generator": torch.Generator("cpu").manual_seed(gen.seed),
        "output_type": "latent",
    }
    if gen.image is None:
        kwargs.update(height=gen.height, width=gen.width)
    else:
        kwargs.update(image=gen.image.convert("RGB").resize((gen.width, gen.height)), strength=gen.strength)
    with record_x0(scheduler, keep), torch.inference_mode():
        output = pipe(**kwargs)
    if not latents:
        raise CaptureError("the pipeline ran no denoising step (steps × strength rounds to zero)")
    final = output.images[0].to("cpu", torch.float32)
    # The last entry is the output itself, so an animation of the trail ends on the image.
    latents[-1] = final
    stacked = torch.stack([x0.to("cpu") for x0 in latents])
    steps_at = torch.stack([t.to("cpu", torch.float32).reshape(()) for t in timesteps])
    meta = TrailMeta(
        model_id=model.model_id,
        vae_id=model.vae_id,
        **LatentScaling.of(model.vae.config).kwargs(),
        space="latent",
        scheduler=type(scheduler).__name__,
        prediction_type=str(scheduler.config.get("prediction_type", "epsilon")),
        prompt=gen.prompt,
        negative_prompt=gen.negative_prompt,
        seed=gen.seed,
        steps=gen.steps,
        guidance=gen.guidance,
        width=gen.width,
        height=gen.height,
        strength=gen.strength if gen.image is not None else None,
    )
    trail = Trail(latents=stacked, timesteps=steps_at, meta=meta)
    return final, trail

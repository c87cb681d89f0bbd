"""Capturing the x0-hat trail from real diffusers pipelines (tiny, offline)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from painter.capture import CaptureError, Generation, capture, validate_generation, x0_from_model_output
from painter.models import ModelError, load_pipeline, set_scheduler

GEN = Generation("a lighthouse in a storm", seed=3, steps=5, width=64, height=64, guidance=5.0)


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_pipeline(str(tiny_model), device="cpu")


@pytest.mark.parametrize("scheduler", ["default", "ddim", "euler", "euler_a", "dpmpp", "pndm", "heun"])
def test_trail_for_every_scheduler(model, scheduler):
    set_scheduler(model.pipeline, "pndm")  # the tiny checkpoint's own, restored first
    set_scheduler(model.pipeline, scheduler)
    final, trail = capture(model, GEN)
    steps = len(trail)
    # Heun evaluates twice per step; PNDM's first step is a warm-up pair.
    assert steps >= GEN.steps
    assert trail.latents.shape[1:] == (4, 8, 8)
    assert torch.equal(trail.latents[-1], final)
    # x0-hat converges on the output: the early estimates are far, the late ones close.
    dist = (trail.latents - final).flatten(1).norm(dim=1)
    assert dist[0] > dist[-2] > 0
    assert trail.meta.scheduler == type(model.pipeline.scheduler).__name__
    assert torch.isfinite(trail.latents).all()


def test_capture_is_deterministic_per_seed(model):
    set_scheduler(model.pipeline, "ddim")
    _, a = capture(model, GEN)
    _, b = capture(model, GEN)
    _, c = capture(model, Generation(**{**GEN.__dict__, "seed": 4}))
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)


def test_ddim_x0_matches_scheduler_formula(model):
    """The fallback formula agrees with DDIM's own pred_original_sample."""
    set_scheduler(model.pipeline, "ddim")
    sched = model.pipeline.scheduler
    sched.set_timesteps(10)
    sample = torch.randn(1, 4, 8, 8)
    eps = torch.randn(1, 4, 8, 8)
    t = sched.timesteps[3]
    ours = x0_from_model_output(sched, eps, t, sample)
    theirs = sched.step(eps, t, sample).pred_original_sample
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_v_prediction_model(tiny_v_model):
    model = load_pipeline(str(tiny_v_model), device="cpu", scheduler="pndm")
    final, trail = capture(model, GEN)
    assert trail.meta.prediction_type == "v_prediction"
    assert torch.equal(trail.final, final)
    dist = (trail.latents - final).flatten(1).norm(dim=1)
    assert dist[0] > dist[-2]
    sched = model.pipeline.scheduler
    sched.set_timesteps(10)
    sample, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t = sched.timesteps[2]
    a = sched.alphas_cumprod[t]
    expected = a.sqrt() * sample - (1 - a).sqrt() * v
    assert torch.allclose(x0_from_model_output(sched, v, t, sample), expected, atol=1e-6)


def test_trail_metadata(model):
    set_scheduler(model.pipeline, "euler")
    gen = Generation("red boat", negative_prompt="blurry", seed=9, steps=4, width=64, height=64)
    _, trail = capture(model, gen)
    m = trail.meta
    assert (m.prompt, m.negative_prompt, m.seed, m.steps, m.width, m.height) == (
        "red boat",
        "blurry",
        9,
        4,
        64,
        64,
    )
    assert m.vae_id == model.vae_id and m.vae_id.startswith("vae-")
    assert m.scaling_factor == pytest.approx(0.18215)
    assert m.space == "latent"


def test_sdedit_trail_length_follows_strength(model):
    set_scheduler(model.pipeline, "ddim")
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    gen = Generation("a red square", steps=10, width=64, height=64, image=picture, strength=0.5)
    final, trail = capture(model, gen)
    assert len(trail) == 5
    assert trail.meta.strength == 0.5
    assert torch.equal(trail.final, final)


def test_on_step_reports_and_can_stop(model):
    set_scheduler(model.pipeline, "ddim")
    seen = []

    class Stop(Exception):
        pass

    def on_step(i, total):
        seen.append((i, total))
        if i == 2:
            raise Stop

    with pytest.raises(Stop):
        capture(model, GEN, on_step=on_step)
    assert seen == [(1, 5), (2, 5)]
    # The scheduler is left unwrapped after a stop.
    assert "step" not in vars(model.pipeline.scheduler)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"width": 100}, "multiple of 8"),
        ({"height": 4096}, "multiple of 8 between 64 and 1024"),
        ({"steps": 0}, "steps 0 must be between 1 and 100"),
        ({"guidance": -1.0}, "guidance"),
    ],
)
def test_bad_generation_is_refused(change, message):
    with pytest.raises(CaptureError, match=message):
        validate_generation(Generation(**{**GEN.__dict__, **change}))


def test_unreadable_model_path(tmp_path):
    with pytest.raises(ModelError, match="not a readable diffusers pipeline"):
        load_pipeline(str(tmp_path / "nowhere"), device="cpu")
    with pytest.raises(ModelError, match="unknown scheduler"):
        set_scheduler(object(), "fancy")

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
        # SDEdit runs int(steps × strength) steps: none at all is the member's mistake, said
        # up front, not an IndexError retried three times by the worker.
        ({"image": Image.new("RGB", (8, 8)), "steps": 10, "strength": 0.05}, "use at least 20 steps"),
        ({"image": Image.new("RGB", (8, 8)), "steps": 1, "strength": 0.5}, "1 step repaints nothing"),
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


# SDXL: a real StableDiffusionXLPipeline (two text encoders, size/crop conditioning,
# VAE scaling 0.13025 with force_upcast), tiny and offline, loaded by path.
XL_GEN = Generation("a lighthouse in a storm", seed=3, steps=4, width=64, height=64, guidance=5.0)


def pipeline_picture(model, gen: Generation) -> torch.Tensor:
    """The picture the pipeline itself decodes for ``gen`` (RGB in [0, 1], ``[1, 3, H, W]``)."""
    with torch.inference_mode():
        return model.pipeline(
            prompt=gen.prompt,
            num_inference_steps=gen.steps,
            guidance_scale=gen.guidance,
            height=gen.height,
            width=gen.width,
            generator=torch.Generator("cpu").manual_seed(gen.seed),
            output_type="pt",
        ).images


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_model):
    return load_pipeline(str(tiny_sdxl_model), device="cpu")


def test_sdxl_trail_decodes_to_the_pipelines_own_picture(sdxl, tiny_sdxl_model):
    from painter.decode import Decoder
    from painter.models import vae_fingerprint

    assert type(sdxl.pipeline).__name__ == "StableDiffusionXLPipeline"
    final, trail = capture(sdxl, XL_GEN)
    assert trail.latents.shape == (4, 4, 8, 8)
    assert torch.equal(trail.latents[-1], final)
    dist = (trail.latents - final).flatten(1).norm(dim=1)
    assert dist[0] > dist[-2] > 0
    m = trail.meta
    assert m.model_id == str(tiny_sdxl_model.resolve())
    assert m.vae_id == sdxl.vae_id == vae_fingerprint(sdxl.pipeline.vae)
    assert m.scheduler == "EulerDiscreteScheduler"
    assert m.scaling_factor == pytest.approx(0.13025)
    assert (m.width, m.height, m.steps, m.seed, m.prompt) == (64, 64, 4, 3, "a lighthouse in a storm")
    # The trail's last x0-hat, decoded with the trail's own scaling, is the picture the
    # SDXL pipeline itself decodes for the same request.
    decoder = Decoder(sdxl.vae, scaling_factor=m.scaling_factor, shift_factor=m.shift_factor)
    ours = decoder.decode_float(trail.final[None])
    theirs = pipeline_picture(sdxl, XL_GEN)
    assert ours.shape == theirs.shape == (1, 3, 64, 64)
    assert torch.allclose(ours, theirs, atol=1e-4)
    # SDXL's VAE overflows in fp16: its config asks for fp32, and the decoder obeys.
    assert Decoder(sdxl.vae, scaling_factor=m.scaling_factor, dtype=torch.float16).dtype == torch.float32


PLAYGROUND_STATS = {
    "scaling_factor": 0.5,
    "latents_mean": [-1.6574, 1.886, -1.383, 2.5155],
    "latents_std": [8.4927, 5.9022, 6.5498, 5.2299],
}
PLAYGROUND_SCHEDULER = {
    "_class_name": "EDMDPMSolverMultistepScheduler",
    "algorithm_type": "dpmsolver++",
    "final_sigmas_type": "zero",
    "prediction_type": "epsilon",
    "rho": 7.0,
    "sigma_data": 0.5,
    "sigma_max": 80.0,
    "sigma_min": 0.002,
    "solver_order": 2,
    "solver_type": "midpoint",
}


@pytest.fixture(scope="module")
def sdxl_with_latent_stats(tiny_sdxl_model, tmp_path_factory):
    """The tiny SDXL laid out like Playground v2.5: per-channel latent statistics in its
    VAE config and its EDM DPM-Solver++ scheduler (that checkpoint's published configs)."""
    import json
    import shutil

    def update(relative: str, **values: object) -> None:
        config_path = path / relative
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **values}))

    path = tmp_path_factory.mktemp("xl-stats") / "playground-like"
    shutil.copytree(tiny_sdxl_model, path)
    update("vae/config.json", **PLAYGROUND_STATS)
    update("model_index.json", scheduler=["diffusers", "EDMDPMSolverMultistepScheduler"])
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(PLAYGROUND_SCHEDULER))
    return load_pipeline(str(path), device="cpu")


def test_per_channel_latent_statistics_decode_as_the_pipeline_does(sdxl_with_latent_stats, sdxl, tmp_path):
    """Playground-v2.5-like checkpoints. A trail of a VAE with latents_mean/latents_std
    records them, keeps them through its file, and decodes (as a job's decoder does) to the
    pipeline's own picture; img2img's --start-from-image encodes with their inverse."""
    from bot.config import load_settings
    from bot.paint_job import ModelCache, encode_picture
    from painter.decode import Decoder, LatentScaling
    from painter.images import image_to_tensor
    from painter.trail import Trail
    from painter.transition import TransitionError, build_plan

    xl = sdxl_with_latent_stats
    final, trail = capture(xl, XL_GEN)
    # The EDM solver's own data prediction is the x0-hat: it settles on the output.
    assert trail.meta.scheduler == "EDMDPMSolverMultistepScheduler"
    dist = (trail.latents - final).flatten(1).norm(dim=1)
    assert dist[0] > dist[-2] > 0
    m = Trail.load(trail.save(tmp_path / "t.safetensors")).meta
    assert (m.scaling_factor, m.latents_mean, m.latents_std) == tuple(PLAYGROUND_STATS.values())
    theirs = pipeline_picture(xl, XL_GEN)
    from_meta = Decoder(xl.vae, **{k: getattr(m, k) for k in LatentScaling.__dataclass_fields__})
    assert torch.allclose(from_meta.decode_float(final[None]), theirs, atol=1e-4)
    job_decoder = ModelCache().decoder(load_settings(None, env={}), xl)
    assert torch.allclose(job_decoder.decode_float(final[None]), theirs, atol=1e-4)
    # The scalar rule alone (what these trails were decoded with before) is another picture.
    scalar = Decoder(xl.vae, scaling_factor=m.scaling_factor).decode_float(final[None])
    assert (scalar - theirs).abs().mean() > 0.05
    # Encoding a picture is the exact inverse of decoding's scaling.
    picture = Image.new("RGB", (64, 64), (200, 60, 40))
    with torch.inference_mode():
        z = xl.vae.encode(image_to_tensor(picture)[None]).latent_dist.mean
    mean, std = (torch.tensor(v).view(1, 4, 1, 1) for v in (m.latents_mean, m.latents_std))
    expected = (z - mean) * 0.5 / std
    assert torch.allclose(encode_picture(xl, picture), expected[0], atol=1e-5)
    # A plain SDXL trail does not decode alike: no transition between them.
    _, plain = capture(sdxl, XL_GEN)
    with pytest.raises(TransitionError, match="different VAEs"):
        build_plan(trail, plain)


def test_sdxl_img2img_from_a_picture(sdxl):
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    gen = Generation("a red square", seed=2, steps=6, width=64, height=64, image=picture, strength=0.5)
    final, trail = capture(sdxl, gen)
    assert len(trail) == 3  # SDEdit: steps × strength
    assert trail.meta.strength == 0.5 and trail.meta.vae_id == sdxl.vae_id
    assert torch.equal(trail.final, final)
    # The picture steers the result: another picture, same seed and prompt, paints otherwise.
    other = Generation(**{**gen.__dict__, "image": Image.new("RGB", (64, 64), (20, 40, 220))})
    assert not torch.allclose(capture(sdxl, other)[0], final, atol=1e-3)


@pytest.mark.parametrize("checkpoint", ["tiny_sdxl_model", "tiny_model"])
def test_fp16_img2img_after_the_decoder_upcast_its_vae(checkpoint, request):
    """A job makes its decoder (which upcasts a VAE whose config asks, as SDXL's does, to
    fp32) before it generates. SDXL's img2img casts the shared VAE back to fp16 after
    encoding, SD's encodes in fp16 with it: both generate, and decoding still works."""
    from painter.decode import Decoder

    path = str(request.getfixturevalue(checkpoint))
    half = load_pipeline(path, device="cpu", dtype="float16", scheduler="euler")
    decoder = Decoder(half.vae, scaling_factor=half.vae.config.scaling_factor, dtype=torch.float16)
    assert decoder.dtype == torch.float32
    picture = Image.new("RGB", (64, 64), (40, 160, 40))
    gen = Generation("a green field", seed=1, steps=4, width=64, height=64, image=picture, strength=0.5)
    final, trail = capture(half, gen)
    assert len(trail) == 2
    rgb = decoder.decode(trail.latents)
    assert rgb.shape == (2, 64, 64, 3)
    assert half.vae.dtype == torch.float32
    assert torch.isfinite(final).all()


def test_sdxl_paint_command_writes_the_animation(tiny_sdxl_model, env_for, tmp_path):
    """`latent-painter paint --model <SDXL directory>` end to end: load, capture, decode, MP4."""
    import numpy as np

    from bot.cli import main
    from painter.trail import Trail
    from painter.video import read_frames

    out = tmp_path / "xl.mp4"
    trail_path = tmp_path / "xl.safetensors"
    args = ["paint", "a lighthouse", "--model", str(tiny_sdxl_model), "--size", "64x64", "--steps", "4"]
    args += ["--seed", "5", "--fps", "8", "--duration", "1"]
    args += ["--out", str(out), "--save-trail", str(trail_path)]
    assert main(args) == 0
    meta, frames = read_frames(out)
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)
    trail = Trail.load(trail_path)
    assert trail.meta.model_id == str(tiny_sdxl_model.resolve())
    assert trail.meta.scaling_factor == pytest.approx(0.13025)
    assert trail.latents.shape == (4, 4, 8, 8)
    final = np.asarray(Image.open(tmp_path / "xl.png").convert("RGB")).astype(np.float64)
    luma = np.array([0.299, 0.587, 0.114])
    mse = np.mean((frames[-1].astype(np.float64) @ luma - final @ luma) ** 2)
    assert 10 * np.log10(255.0**2 / max(mse, 1e-12)) >= 30  # the video ends on the picture


def test_sdxl_transition_between_checkpoints_sharing_a_vae(sdxl, tiny_sdxl_same_vae, model, tmp_path):
    from painter.animate import AnimationSpec, animate
    from painter.decode import Decoder
    from painter.transition import TransitionError, build_plan

    other = load_pipeline(str(tiny_sdxl_same_vae), device="cpu")
    assert other.vae_id == sdxl.vae_id and other.model_id != sdxl.model_id
    _, src = capture(sdxl, XL_GEN)
    _, dst = capture(other, Generation(**{**XL_GEN.__dict__, "prompt": "a forest", "seed": 4}))
    plan = build_plan(src, dst)
    assert torch.equal(plan.start, src.final) and torch.equal(plan.plan[-1], dst.final)
    assert plan.meta.model_ids == [sdxl.model_id, other.model_id]
    decoder = Decoder(sdxl.vae, scaling_factor=plan.meta.scaling_factor)
    spec = AnimationSpec(effect="fade", fps=8, duration=1.0, hold=0.0, lead_in=0.25)
    result = animate(plan.plan, decoder, spec, tmp_path / "t.mp4", start=plan.start)
    assert result.video.path.exists() and result.last_frame.shape == (64, 64, 3)
    # An SD 1.x trail decodes with another VAE (and scaling): no transition to SDXL.
    set_scheduler(model.pipeline, "ddim")
    _, sd_trail = capture(model, Generation("a forest", steps=2, width=64, height=64))
    with pytest.raises(TransitionError, match="different VAEs"):
        build_plan(src, sd_trail)


def test_start_from_image_encodes_an_upcast_vae_in_fp32(tiny_sdxl_model):
    """--start-from-image with an fp16 SDXL: its VAE overflows in fp16, so the picture is
    encoded in fp32 (as SDXL's pipelines do) and the VAE is left in the dtype it had."""
    from tests.counting import encode_recording_dtype

    half = load_pipeline(str(tiny_sdxl_model), device="cpu", dtype="float16", scheduler="euler")
    latent, seen = encode_recording_dtype(half, Image.new("RGB", (64, 64), (200, 60, 40)))
    assert seen == [torch.float32] and half.vae.dtype == torch.float16
    assert latent.shape == (4, 8, 8) and torch.isfinite(latent).all()


@pytest.mark.parametrize("scheduler", ["pndm", "heun", "euler"])
@pytest.mark.parametrize("strength", [None, 0.5])
def test_step_count_shown_is_known_from_the_first_step(model, scheduler, strength):
    """Members see "step i/N": N must not grow mid-job (PNDM runs one step more than
    asked, Heun two per step; it showed "step 4/4" and then "step 5/5")."""
    set_scheduler(model.pipeline, scheduler)
    image = None if strength is None else Image.new("RGB", (64, 64), (200, 40, 40))
    gen = Generation("a lighthouse", seed=1, steps=4, width=64, height=64, image=image)
    gen.strength = strength or gen.strength
    seen: list[tuple[int, int]] = []
    _, trail = capture(model, gen, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(i + 1, len(trail)) for i in range(len(trail))]

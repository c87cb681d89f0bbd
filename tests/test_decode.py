"""Decoder dtype: upcast from fp16 where diffusers' own pipeline would (SDXL's VAE), nowhere else."""

from __future__ import annotations

import json
import shutil

import pytest
from diffusers import AutoencoderKL

from painter.decode import asks_for_upcast


def test_upcast_only_when_the_config_says_so(tiny_model, tmp_path):
    vae_dir = tmp_path / "vae"
    shutil.copytree(tiny_model / "vae", vae_dir)
    config_path = vae_dir / "config.json"
    config = json.loads(config_path.read_text())
    for value, expected in ((True, True), (False, False), (None, False)):
        if value is None:
            config.pop("force_upcast", None)  # as in SD 1.5's published config
        else:
            config["force_upcast"] = value  # SDXL's says True
        config_path.write_text(json.dumps(config))
        assert asks_for_upcast(AutoencoderKL.from_pretrained(vae_dir)) is expected, value


def test_compiled_decoder_matches_eager_and_is_compiled_once(tiny_model):
    """[render] compile: the compiled decode gives the eager pictures, pads a short last
    batch instead of recompiling, and is shared by every Decoder of the same VAE."""
    import threading

    import torch

    from painter.decode import Decoder, compiled_decode

    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    scale = float(vae.config.scaling_factor)
    canvases = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eager = Decoder(vae, scaling_factor=scale, batch_size=4).decode_float(canvases)
    result: dict[str, torch.Tensor] = {}

    def decode_in_worker_thread() -> None:  # as the queue's runner thread does
        compiled = Decoder(vae, scaling_factor=scale, batch_size=4, compile="eager")
        assert compiled.compiled
        result["rgb"] = compiled.decode_float(canvases)

    thread = threading.Thread(target=decode_in_worker_thread)
    thread.start()
    thread.join()
    assert result["rgb"].shape == eager.shape == (5, 3, 64, 64)  # 4 + 1 padded to 4, padding dropped
    assert torch.allclose(result["rgb"], eager, atol=1e-4)
    assert compiled_decode(vae, "eager").func is compiled_decode(vae, "eager").func
    assert Decoder(None, compile=True).compiled is False  # pixel-space canvases need no VAE


def test_model_cache_compiles_only_where_it_pays(tiny_model, data_dir):
    """auto: only a long-running cache (worker, bot) on a GPU compiles; always/never override."""
    from bot.config import load_settings
    from bot.paint_job import ModelCache

    def settings(mode: str):
        return load_settings(
            env={}, overrides={"render": {"compile": mode}, "storage": {"data_dir": str(data_dir)}}
        )

    cache = ModelCache(long_running=True)
    model = cache.model(settings("auto"))  # the tiny model, on this machine's CPU
    assert model.device.type == "cpu"
    assert cache.compiles(settings("auto"), model) is False  # no GPU: eager
    assert ModelCache(long_running=True).compiles(settings("always"), model) is True
    assert cache.compiles(settings("never"), model) is False
    assert cache.decoder(settings("never"), model).compiled is False


def test_a_compiler_failure_falls_back_to_eager_decoding(tiny_model, caplog):
    """A machine without Triton's C compiler must still paint: the decoder logs the failure
    and decodes eagerly, for this and every later Decoder of the VAE."""
    import logging

    import torch

    from painter.decode import Decoder

    def broken_backend(graph, example_inputs):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    scale = float(vae.config.scaling_factor)
    canvases = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    eager = Decoder(vae, scaling_factor=scale, batch_size=2).decode_float(canvases)
    decoder = Decoder(vae, scaling_factor=scale, batch_size=2, compile=broken_backend)
    assert decoder.compiled
    with caplog.at_level(logging.WARNING, logger="painter.decode"):
        rgb = decoder.decode_float(canvases)
    assert torch.allclose(rgb, eager, atol=1e-4)
    assert not decoder.compiled
    assert "torch.compile of the decoder failed" in caplog.text and "C compiler" in caplog.text
    assert Decoder(vae, scaling_factor=scale, compile=broken_backend).compiled is False


def test_a_batch_that_runs_out_of_gpu_memory_is_halved_and_retried(tiny_model):
    """Another process can take the GPU's memory mid-job: the decoder halves its batch
    until one fits and finishes every frame, rather than failing the job. (The GPU's
    out-of-memory error cannot be caused on CI's CPU, so a VAE raises it for batches
    over 2, as a card with room for two frames would.)"""
    import torch

    from painter.decode import Decoder

    class TwoFramesFit(AutoencoderKL):
        def decode(self, z, *args, **kwargs):
            if z.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().decode(z, *args, **kwargs)

    vae = TwoFramesFit.from_pretrained(tiny_model / "vae").eval()
    scale = float(vae.config.scaling_factor)
    canvases = torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    eager = Decoder(vae, scaling_factor=scale, batch_size=1).decode_float(canvases)
    # compile="eager" makes the decoder batch on the CPU as it does on a GPU.
    decoder = Decoder(vae, scaling_factor=scale, batch_size=8, compile="eager")
    rgb = decoder.decode_float(canvases)
    assert decoder.batch_size == 2
    assert rgb.shape == eager.shape == (7, 3, 64, 64)
    assert torch.allclose(rgb, eager, atol=1e-4)

    class NothingFits(AutoencoderKL):
        def decode(self, z, *args, **kwargs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    one = Decoder(NothingFits.from_pretrained(tiny_model / "vae"), scaling_factor=scale, compile="eager")
    try:
        one.decode_float(canvases[:3])
    except torch.cuda.OutOfMemoryError:
        assert one.batch_size == 1  # halved down to one frame, which still did not fit
    else:
        raise AssertionError("a frame that does not fit must fail the decode")


def test_per_channel_latent_scaling_round_trips_and_follows_diffusers():
    """VAEs with per-channel latents_mean/latents_std (Playground v2.5): the UNet's latents
    reach the decoder as ``latent * std / scaling_factor + mean`` (diffusers' SDXL rule) and
    an encoded picture comes back as ``(z - mean) * scaling_factor / std``."""
    import torch

    from painter.decode import LatentScaling

    mean, std = [-1.6574, 1.886, -1.383, 2.5155], [8.4927, 5.9022, 6.5498, 5.2299]
    config = {"scaling_factor": 0.5, "shift_factor": None, "latents_mean": mean, "latents_std": std}
    scaling = LatentScaling.of(config)
    assert scaling.latents_mean == tuple(mean) and scaling.latents_std == tuple(std)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    z = scaling.to_vae(x)
    expected = x * torch.tensor(std).view(1, 4, 1, 1) / 0.5 + torch.tensor(mean).view(1, 4, 1, 1)
    assert torch.allclose(z, expected)
    assert torch.allclose(scaling.to_unet(z), x, atol=1e-5)
    # Only both together mean per channel, as in diffusers; otherwise the scalar rule.
    scalar = LatentScaling.of({"scaling_factor": 0.13025, "latents_mean": mean, "latents_std": None})
    assert scalar.latents_mean is None and torch.allclose(scalar.to_vae(x), x / 0.13025)
    with pytest.raises(ValueError, match="4/4 values, but its latents have 3 channels"):
        scaling.to_vae(x[:, :3])


def test_a_vae_cast_back_by_img2img_is_recast_outside_inference_mode(tiny_model):
    """img2img casts the shared VAE for its encode; the decoder casts it back. Cast under
    inference mode, the weights became inference tensors and a compiled decode's guards
    failed on them: one recompile (~28 s on an H100) at the first paint from a picture."""
    import torch

    from painter.decode import Decoder

    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    decoder = Decoder(vae, scaling_factor=float(vae.config.scaling_factor), batch_size=2)
    vae.to(torch.bfloat16)  # what an img2img encode leaves behind
    decoder.decode_float(torch.randn(1, 4, 8, 8))
    assert all(p.dtype == decoder.dtype for p in vae.parameters())
    assert not any(p.is_inference() for p in vae.parameters())


@pytest.mark.parametrize(
    ("checkpoint", "decodes_in"),
    [("tiny_model", "float16"), ("tiny_sdxl_model", "float32")],
)
def test_the_pipeline_decides_whether_its_vae_is_upcast(checkpoint, decodes_in, data_dir, request):
    """diffusers decodes SD 1.x/2.x in fp16 whatever the VAE's config says (save_pretrained
    writes force_upcast true into every VAE), and SDXL's VAE in fp32 (it overflows in
    fp16). A job does the same: SD 1.5 decoding in fp32 took twice the memory."""
    import torch
    from PIL import Image

    from bot.config import load_settings
    from bot.paint_job import ModelCache
    from tests.counting import encode_recording_dtype

    path = request.getfixturevalue(checkpoint)
    assert AutoencoderKL.load_config(path / "vae")["force_upcast"] is True  # as saved, both
    overrides = {"model": {"id": str(path), "dtype": "float16", "device": "cpu"}}
    settings = load_settings(env={}, overrides={**overrides, "storage": {"data_dir": str(data_dir)}})
    cache = ModelCache()
    model = cache.model(settings)
    assert model.upcasts_vae is (decodes_in == "float32")
    decoder = cache.decoder(settings, model)
    assert decoder.dtype == getattr(torch, decodes_in)
    rgb = decoder.decode_float(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)))
    assert rgb.shape == (1, 3, 64, 64) and torch.isfinite(rgb).all()
    latent, seen = encode_recording_dtype(model, Image.new("RGB", (64, 64), (200, 60, 40)))
    assert seen == [getattr(torch, decodes_in)] and torch.isfinite(latent).all()

"""Trail files round-trip exactly and refuse damage clearly."""

from __future__ import annotations

import pytest
import torch

from painter.trail import Trail, TrailError, TrailMeta


def make_trail(steps: int = 6) -> Trail:
    gen = torch.Generator().manual_seed(0)
    meta = TrailMeta(
        model_id="tiny",
        vae_id="vae-abc",
        scaling_factor=0.18215,
        scheduler="DDIMScheduler",
        prompt="a lighthouse ☂",
        negative_prompt="blur",
        seed=42,
        steps=steps,
        guidance=7.5,
        width=64,
        height=64,
    )
    return Trail(torch.randn(steps, 4, 8, 8, generator=gen), torch.linspace(999, 0, steps), meta)


def test_round_trip_is_exact(tmp_path):
    trail = make_trail()
    path = trail.save(tmp_path / "t.safetensors")
    back = Trail.load(path)
    assert torch.equal(back.latents, trail.latents)
    assert torch.equal(back.timesteps.float(), trail.timesteps.float())
    assert back.meta == trail.meta
    assert not list(tmp_path.glob("*.partial"))


def test_truncated_file_is_refused(tmp_path):
    path = make_trail().save(tmp_path / "t.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrailError, match="damaged or truncated"):
        Trail.load(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(TrailError, match="not found"):
        Trail.load(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(TrailError, match="not a Latent Painter trail"):
        Trail.load(tmp_path / "other.safetensors")
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(TrailError):
        Trail.load(tmp_path / "text.safetensors")


def test_shape_checks():
    with pytest.raises(TrailError, match=r"\[T, C, H, W\]"):
        Trail(torch.zeros(4, 8, 8), torch.zeros(4), TrailMeta())
    with pytest.raises(TrailError, match="timesteps"):
        Trail(torch.zeros(4, 4, 8, 8), torch.zeros(3), TrailMeta())

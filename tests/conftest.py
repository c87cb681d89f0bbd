"""Shared fixtures: offline tiny models built once per test session."""

from __future__ import annotations

import os

# Never let a test reach for a model hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from painter.models import build_tiny_pipeline, build_tiny_sdxl_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding the built-in tiny model, as `latent-painter` lays it out."""
    root = tmp_path_factory.mktemp("data")
    build_tiny_pipeline(root / "models" / "tiny")
    return root


@pytest.fixture(scope="session")
def tiny_model(data_dir: Path) -> Path:
    """The tiny epsilon-prediction SD pipeline directory."""
    return data_dir / "models" / "tiny"


@pytest.fixture(scope="session")
def tiny_sdxl_model(data_dir: Path) -> Path:
    """The tiny SDXL pipeline directory (two text encoders, text_time UNet, SDXL's VAE settings)."""
    return build_tiny_sdxl_pipeline(data_dir / "models" / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_sdxl_same_vae(tiny_sdxl_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny SDXL checkpoint: other UNet and text encoders, the same VAE as ``tiny_sdxl_model``."""
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("sdxl") / "b", seed=1, vae_seed=0)


@pytest.fixture(scope="session")
def tiny_v_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny v-prediction pipeline (as SD 2.x 768 checkpoints are)."""
    path = tmp_path_factory.mktemp("v") / "tiny-v"
    return build_tiny_pipeline(path, seed=1, prediction_type="v_prediction")


@pytest.fixture(scope="session")
def tiny_pair_same_vae(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny checkpoints with different UNet weights sharing one VAE."""
    root = tmp_path_factory.mktemp("pair")
    a = build_tiny_pipeline(root / "a", seed=11, vae_seed=5)
    b = build_tiny_pipeline(root / "b", seed=12, vae_seed=5)
    return a, b


@pytest.fixture(scope="session")
def tiny_other_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose VAE differs from the default tiny model's."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("other") / "c", seed=13, vae_seed=99)


@pytest.fixture(scope="session")
def tiny_taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TAESD (diffusers ``AutoencoderTiny``, random weights) saved as a model directory."""
    import torch
    from diffusers import AutoencoderTiny

    path = tmp_path_factory.mktemp("taesd")
    torch.manual_seed(0)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(path)
    return path


@pytest.fixture
def env_for(data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Point the settings' data directory at the session's tiny model."""
    monkeypatch.setenv("LATENT_PAINTER_STORAGE_DATA_DIR", str(data_dir))
    return data_dir

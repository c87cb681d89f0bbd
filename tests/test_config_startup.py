"""Start-up refuses what would fail later, in one line that says what to change."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def start_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``latent-painter bot`` with ``env`` added; Discord's address is a closed loopback port."""
    data = tmp_path / "data"
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "DISCORD_TOKEN": "startup-test-token",
        # Had the settings passed, the bot would try Discord here and exit 1, not 2.
        "LATENT_PAINTER_DISCORD_API_BASE": "http://127.0.0.1:9/api/v10",
        "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "bot"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("env", "error"),
    [
        # Accepted before: the paint cog failed to load, the sync took /paint off Discord
        # and the bot ran on without it.
        (
            {"LATENT_PAINTER_DISCORD_SIZES": "512x512,1024"},
            "[discord] sizes: '1024' must look like 512x512",
        ),
        # Ignored before: the bot painted with the default model, the random-weight "tiny".
        (
            {"LATENT_PAINTER_MODEL_IDS": "stable-diffusion-v1-5/stable-diffusion-v1-5"},
            "environment: unknown variable LATENT_PAINTER_MODEL_IDS; did you mean LATENT_PAINTER_MODEL_ID?",
        ),
    ],
    ids=["sizes", "misspelt-variable"],
)
def test_the_bot_does_not_start_with_a_bad_setting(tmp_path: Path, env: dict[str, str], error: str) -> None:
    started = start_bot(tmp_path, **env)
    assert started.returncode == 2, started.stderr
    assert started.stderr == f"latent-painter: error: {error}\n"
    assert not (tmp_path / "data").exists()  # refused before anything was made

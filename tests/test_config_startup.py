"""Start-up refuses what would fail later, in one line that says what to change; and
what members are told about the channels a server's settings allow.

The last test borrows the cog tests' logged-in bot (tests/test_cogs_unit.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from db.gallery import update_settings
from tests.discord_standin.world import GALLERY_ID, GUILD_ID, MOD_ID
from tests.test_cogs_unit import Harness, ephemeral_text, harness, on_bot

__all__ = ["harness"]  # the fixture, imported to be found here

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


def test_an_offline_hub_id_not_downloaded_says_so() -> None:
    from painter.models import ModelError, load_pipeline, load_taesd

    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest for every test
    with pytest.raises(ModelError) as refused:
        load_pipeline("latent-painter-tests/never-downloaded", device="cpu")
    assert str(refused.value) == (
        "model 'latent-painter-tests/never-downloaded' is not in the local Hugging Face cache and "
        "HF_HUB_OFFLINE is set: download it once online (run once without HF_HUB_OFFLINE, or "
        "`hf download latent-painter-tests/never-downloaded`) or give a local pipeline directory"
    )
    with pytest.raises(ModelError, match=r"^TAESD 'latent-painter-tests/no-taesd' is not in the local"):
        load_taesd("latent-painter-tests/no-taesd", device=torch.device("cpu"), dtype=torch.float32)


def test_a_name_that_is_no_hub_id_keeps_the_loaders_message(tmp_path: Path) -> None:
    from painter.models import ModelError, load_pipeline

    with pytest.raises(ModelError, match=r"^cannot load model 'not-a-model': .*model_index\.json"):
        load_pipeline("not-a-model", device="cpu")
    with pytest.raises(ModelError, match=r"^model path .* is not a readable diffusers pipeline directory"):
        load_pipeline(str(tmp_path), device="cpu")


@on_bot
async def test_a_refusal_in_a_channel_not_allowed_says_how_many_more_there_are(harness: Harness) -> None:
    # Before, the first ten were listed as if they were all.
    many = [GALLERY_ID, *(1_300_000_000_000_009_000 + i for i in range(29))]
    await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=many)
    try:
        text = ephemeral_text(await harness.slash("paint", {"prompt": "a cat"}))
    finally:
        await update_settings(harness.bot.db, GUILD_ID, MOD_ID, allowed_channel_ids=[])
    start = "Painting commands are not allowed in this channel. Use "
    assert text.startswith(start) and text.endswith(" more."), text
    shown, more = text.removeprefix(start).removesuffix(" more.").rsplit(" and ", 1)
    mentions = shown.split(", ")
    assert mentions == [f"<#{c}>" for c in sorted(many)[: len(mentions)]]
    assert int(more) == len(many) - len(mentions) and len(mentions) >= 10

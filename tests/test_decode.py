"""Decoder dtype: only a VAE whose own config asks for it is upcast from fp16."""

from __future__ import annotations

import json
import shutil

from diffusers import AutoencoderKL

from painter.decode import _asks_for_upcast


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
        assert _asks_for_upcast(AutoencoderKL.from_pretrained(vae_dir)) is expected, value

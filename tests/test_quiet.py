"""Quiet libraries: nothing imported for commands that load no model; bars off once one is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from bot.cli import quiet_libraries
from bot.config import load_settings
from bot.paint_job import ModelCache
quiet_libraries()
print("imported before a model:", "diffusers" in sys.modules or "transformers" in sys.modules)
ModelCache().model(load_settings(overrides={"storage": {"data_dir": sys.argv[1]}}))
from diffusers.utils import logging as diffusers_logging
print("diffusers bar after loading:", diffusers_logging.is_progress_bar_enabled())
"""


def test_quiet_costs_nothing_until_a_model_loads(data_dir, tiny_model):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(data_dir)],
        cwd=ROOT,
        env={**env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "imported before a model: False" in proc.stdout
    assert "diffusers bar after loading: False" in proc.stdout
    assert "Loading pipeline components" not in proc.stderr

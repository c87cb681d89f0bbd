"""What the job runner records of what members send: their picture's file name, made safe.

Run through the real runner (:func:`bot.jobs.run_job`) with the analytic model (no checkpoint).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from bot.artifacts import LocalArtifactStore
from bot.config import load_settings
from bot.jobs import run_job
from bot.worker import JobContext
from painter.trail import Trail


def test_a_picture_keeps_the_members_file_name_made_safe(tmp_path: Path) -> None:
    settings = load_settings(env={"LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path / "data")})
    store = LocalArtifactStore(settings.data_dir / "artifacts")
    picture = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(picture)
    store.put_file("uploads/7/1.png", picture)
    params = {
        "prompt": "a blue square",
        "model": "analytic",
        "image_key": "uploads/7/1.png",
        "width": 64,
        "height": 64,
        "steps": 4,
        "fps": 8,
        "duration": 1.0,
    }

    jobs = itertools.count(1)

    def painted_picture(**extra: str) -> str:
        job_id = next(jobs)
        workdir = tmp_path / f"job-{job_id}"
        workdir.mkdir()
        ctx = JobContext(
            job_id=job_id,
            kind="paint",
            params={**params, **extra},
            attempt=1,
            workdir=workdir,
            user_id=7,
            guild_id=None,
            settings=settings,
        )
        output = run_job(ctx)
        recorded = Trail.load(output.files["trail"]).meta.extra["picture"]
        with Image.open(output.files["image"]) as final:
            assert f"Picture: {recorded}" in final.text["parameters"]
        return str(recorded)

    # Its own name, without folders, control characters or a right-to-left override.
    assert painted_picture(image_name="..\\holiday/My\u202e cat\n photo.png") == "My cat photo.png"
    assert painted_picture(image_name="x" * 300) == "x" * 99 + "…"
    # Jobs queued without the name (and names with nothing left) keep the old words.
    assert painted_picture() == "the attached picture"
    assert painted_picture(image_name="\u202e\u200b") == "the attached picture"

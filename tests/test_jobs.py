"""The queue's real runner: paint, repaint and transition jobs through a worker, tiny model, SQLite."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.artifacts import LocalArtifactStore
from bot.config import load_settings
from bot.jobs import run_job
from bot.worker import JobContext, MemberError, PermanentJobError, Worker, member_message
from db.engine import Database
from db.models import Job
from db.queue import JobQueue, QueuePolicy
from db.results import result_for_job
from painter.video import read_frames
from tests import db_fixtures

SMALL = {"width": 64, "height": 64, "steps": 4, "fps": 8, "duration": 1.0, "scheduler": "ddim"}


@pytest.fixture
async def setup(tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch):
    url = await db_fixtures.fresh_url("sqlite", tmp_path)
    db = Database.from_url(url)
    # A data directory of this test's own (its artifacts), sharing the session's tiny model.
    own = tmp_path / "data"
    (own / "models").mkdir(parents=True)
    (own / "models" / "tiny").symlink_to(data_dir / "models" / "tiny")
    monkeypatch.setenv("LATENT_PAINTER_STORAGE_DATA_DIR", str(own))
    monkeypatch.setenv("LATENT_PAINTER_DATABASE_URL", url)
    settings = load_settings()
    # The runner reads stored inputs from the data directory's store, as the worker writes them.
    settings_store = LocalArtifactStore(settings.data_dir / "artifacts")
    queue = JobQueue(db, QueuePolicy(lease_seconds=60, max_attempts=2, backoff_seconds=0, per_user_cap=20))
    worker = Worker(
        queue,
        settings_store,
        run_job,
        workdir_root=tmp_path / "work",
        heartbeat_seconds=0.2,
        poll_seconds=0.05,
        settings=settings,
    )
    try:
        yield db, queue, worker, settings_store
    finally:
        await db.dispose()


def pixels(store, key: str) -> np.ndarray:
    from PIL import Image

    with store.open(key) as src:
        return np.asarray(Image.open(src).convert("RGB"))


async def run_one(db, queue, worker, kind, params, user=7):
    enq = await queue.enqueue(kind, params, user_id=user, guild_id=1, channel_id=2)
    assert await worker.run(max_jobs=1, exit_when_idle=True) == 1
    async with db.read() as session:
        job = await session.get(Job, enq.job.id)
    return job, await result_for_job(db, enq.job.id)


async def test_paint_repaint_and_transition_jobs(setup, tmp_path):
    db, queue, worker, store = setup
    job, result = await run_one(db, queue, worker, "paint", {"prompt": "a red boat", "seed": 3, **SMALL})
    assert job.status == "done", job.error
    assert result.prompt == "a red boat" and result.seed == 3 and result.steps == 4
    assert result.effect == "strokes" and result.format == "mp4" and result.frames == 8
    for key in (result.video_key, result.image_key, result.heatmap_key, result.trail_key):
        assert key and store.exists(key)
    video = tmp_path / "v.mp4"
    with store.open(result.video_key) as src:
        video.write_bytes(src.read())
    meta, frames = read_frames(video)
    assert len(frames) == 8 and frames[0].shape == (64, 64, 3)

    # Repaint: another effect over the stored trail, no new generation.
    job2, repainted = await run_one(
        db,
        queue,
        worker,
        "paint",
        {"prompt": "a red boat", "trail_key": result.trail_key, "effect": "glow", "fps": 8, "duration": 1.0},
    )
    assert job2.status == "done", job2.error
    assert repainted.effect == "glow" and repainted.seed == 3
    # The same final picture, decoded from the same latent.
    assert np.array_equal(pixels(store, result.image_key), pixels(store, repainted.image_key))

    # A second picture, then a transition between the two stored trails.
    _, other = await run_one(db, queue, worker, "paint", {"prompt": "a green hill", "seed": 4, **SMALL})
    job3, moved = await run_one(
        db,
        queue,
        worker,
        "transition",
        {
            "from_result": result.public_id,
            "to_result": other.public_id,
            "from_trail": result.trail_key,
            "to_trail": other.trail_key,
            "fps": 8,
            "duration": 1.0,
            "depth": 0.5,
        },
    )
    assert job3.status == "done", job3.error
    assert moved.kind == "transition" and moved.frames == 8
    # A transition ends on the destination's picture.
    assert np.array_equal(pixels(store, other.image_key), pixels(store, moved.image_key))


async def test_an_analytic_paint_shows_no_seed_guidance_or_sampler(setup, tmp_path):
    """The closed-form painter has no noise, guidance or sampler; its result must not claim any."""
    import io

    db, queue, worker, store = setup
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 90, 200)).save(picture, "PNG")
    store.put_bytes("uploads/7/1.png", picture.getvalue())
    params = {"prompt": "a blue square", "model": "analytic", "image_key": "uploads/7/1.png", **SMALL}
    job, result = await run_one(db, queue, worker, "paint", {**params, "seed": 9, "guidance": 7.5})
    assert job.status == "done", job.error
    assert (result.model_id, result.seed, result.guidance, result.scheduler) == ("analytic", None, None, None)
    assert result.steps and result.frames == 8


def test_a_paint_job_reports_every_step_then_every_frame(setup, tmp_path):
    # What the bot's progress reply shows, call by call (the worker saves the latest one on
    # each heartbeat; which of them a reply catches depends on timing, these do not).
    del setup  # used for the data directory and database it points load_settings() at
    ctx = _context(tmp_path, {"prompt": "a red boat", "seed": 3, **SMALL}, cls=Recording)
    run_job(ctx)
    calls = ctx.calls
    steps = [c for c in calls if c[1] == 0]
    frames = [c for c in calls if c[1] != 0]
    assert steps == [(i, 0, 4) for i in range(1, 5)]  # step i of the painter's own 4
    assert calls[: len(steps)] == steps  # the steps come first, then the frames
    assert [c[1] for c in frames] == list(range(1, 9)) and all(c == (4, c[1], 8) for c in frames)


class Recording(JobContext):
    """A job context that keeps every progress report the runner makes."""

    calls: list[tuple[int, int, int]]

    def progress(self, step: int, frame: int, total: int) -> None:
        self.calls.append((step, frame, total))
        super().progress(step, frame, total)


def _context(tmp_path: Path, params: dict, kind: str = "paint", settings=None, cls=JobContext) -> JobContext:
    ctx = cls(
        job_id=1,
        kind=kind,
        params=params,
        attempt=1,
        workdir=tmp_path / "job",
        user_id=7,
        guild_id=None,
        settings=settings if settings is not None else load_settings(),
    )
    ctx.workdir.mkdir(exist_ok=True)
    ctx.calls = []
    return ctx


def test_img2img_progress_counts_the_painters_own_steps(setup, tmp_path):
    # With strength 0.5, 4 asked-for steps run as 2: progress reads step 1/2, 2/2 (not n/4).
    del setup
    picture = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(picture)
    store = LocalArtifactStore(load_settings().data_dir / "artifacts")
    store.put_file("uploads/7/in.png", picture)
    params = {"prompt": "a boat", "seed": 3, "image_key": "uploads/7/in.png", "strength": 0.5, **SMALL}
    ctx = _context(tmp_path, params, cls=Recording)
    run_job(ctx)
    steps = [c for c in ctx.calls if c[1] == 0]
    assert steps and all(total == len(steps) for _, _, total in steps), steps
    assert len(steps) < SMALL["steps"] and steps[-1][0] == len(steps)


async def test_a_deleted_source_result_fails_once_with_a_member_message(setup):
    db, queue, worker, store = setup
    job, result = await run_one(
        db,
        queue,
        worker,
        "paint",
        {"prompt": "a red boat", "trail_key": "jobs/9/1/trail.safetensors", **SMALL},
    )
    assert job.status == "failed" and job.attempts == 1
    assert result is None
    # The member reads which result went; operators (the error column) read the key too.
    assert member_message(job.error) == "the painting “a red boat” was deleted before it could be repainted"
    assert "jobs/9/1/trail.safetensors" in job.error


def test_deleted_transition_inputs_name_the_result_that_went(setup, tmp_path):
    del setup
    ctx = _context(
        tmp_path,
        {"from_result": "AAAA1111", "to_result": "BBBB2222", "from_trail": "a/t", "to_trail": "b/t"},
        kind="transition",
    )
    with pytest.raises(MemberError) as caught:
        run_job(ctx)
    assert caught.value.message == "result AAAA1111 was deleted before the transition could be made"
    assert "a/t" in str(caught.value)  # the key, for the error column


def test_a_repaint_that_names_its_source_says_which_result_went(setup, tmp_path):
    del setup
    ctx = _context(
        tmp_path, {"prompt": "x", "trail_key": "jobs/9/1/trail.safetensors", "from_result": "K3F9"}
    )
    with pytest.raises(MemberError) as caught:
        run_job(ctx)
    assert caught.value.message == "result K3F9 was deleted before it could be repainted"


def test_member_input_problems_are_member_errors(setup, tmp_path):
    del setup
    # A picture that is not one: the member's own upload.
    store = LocalArtifactStore(load_settings().data_dir / "artifacts")
    store.put_bytes("uploads/7/notes.png", b"this is not a picture")
    with pytest.raises(MemberError) as caught:
        run_job(_context(tmp_path, {"prompt": "x", "image_key": "uploads/7/notes.png", **SMALL}))
    assert caught.value.detail is None and "uploads/" not in caught.value.message
    # A parameter out of range: the job's own choice.
    with pytest.raises(MemberError) as caught:
        run_job(_context(tmp_path, {"prompt": "x", **SMALL, "steps": -3}))
    assert "steps" in caught.value.message


def test_server_faults_are_ours_not_the_members(setup, tmp_path):
    del setup
    store = LocalArtifactStore(load_settings().data_dir / "artifacts")
    # The model the server is configured with cannot be read.
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    with pytest.raises(PermanentJobError) as caught:
        run_job(_context(tmp_path, {"prompt": "x", "model": str(broken), **SMALL}))
    assert not isinstance(caught.value, MemberError) and "ModelError" in str(caught.value)
    # An uploaded picture missing from our own store: not the member's doing.
    with pytest.raises(PermanentJobError) as caught:
        run_job(_context(tmp_path, {"prompt": "x", "image_key": "uploads/7/gone.png", **SMALL}))
    assert not isinstance(caught.value, MemberError) and "uploads/7/gone.png" in str(caught.value)
    # A stored key that is not even valid.
    with pytest.raises(PermanentJobError) as caught:
        run_job(_context(tmp_path, {"prompt": "x", "trail_key": "../etc/passwd", **SMALL}))
    assert not isinstance(caught.value, MemberError)
    # A stored trail damaged on our disk (half copied): a repaint and a transition of it
    # fail on our side; the member is not told a path of ours as if the mistake were theirs.
    store.put_bytes("jobs/5/1/trail.safetensors", b'\x08\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(PermanentJobError) as caught:
        run_job(
            _context(
                tmp_path, {"prompt": "x", "trail_key": "jobs/5/1/trail.safetensors", "from_result": "K3F9"}
            )
        )
    assert not isinstance(caught.value, MemberError)
    assert "the stored trail of result K3F9 is unreadable" in str(caught.value)
    ctx = _context(
        tmp_path,
        {
            "from_result": "A1",
            "to_result": "B2",
            "from_trail": "jobs/5/1/trail.safetensors",
            "to_trail": "b/t",
        },
        kind="transition",
    )
    with pytest.raises(PermanentJobError) as caught:
        run_job(ctx)
    assert not isinstance(caught.value, MemberError) and "result A1 is unreadable" in str(caught.value)


async def test_safety_checker_verdict_is_recorded(setup, tmp_path, monkeypatch):
    from painter.models import build_tiny_pipeline

    db, queue, worker, store = setup
    flagging = build_tiny_pipeline(tmp_path / "flag-all", safety="flag-all")
    job, result = await run_one(db, queue, worker, "paint", {"prompt": "x", "model": str(flagging), **SMALL})
    assert job.status == "done", job.error
    assert result.params["flagged"] is True
    _, plain = await run_one(db, queue, worker, "paint", {"prompt": "x", **SMALL})
    assert "flagged" not in plain.params


def test_safety_sampler_checks_final_and_sampled_frames(tmp_path):
    from bot.paint_job import SafetySampler
    from painter.models import build_tiny_pipeline, load_pipeline

    quiet = load_pipeline(str(build_tiny_pipeline(tmp_path / "none", safety="flag-none")), device="cpu")
    loud = load_pipeline(str(build_tiny_pipeline(tmp_path / "all", safety="flag-all")), device="cpu")
    seen = []
    sampler = SafetySampler(quiet.pipeline, 40, lambda d, t, img: seen.append(d))
    for i in range(1, 41):
        sampler.on_frame(i, 40, np.full((64, 64, 3), i, np.uint8))
    assert seen == list(range(1, 41))
    assert len(sampler.samples) == 8
    assert sampler.verdict(np.zeros((64, 64, 3), np.uint8)) is False
    assert SafetySampler(loud.pipeline, 10, None).verdict(np.zeros((64, 64, 3), np.uint8)) is True
    assert SafetySampler(None, 10, None).verdict(np.zeros((64, 64, 3), np.uint8)) is None


async def test_cli_transition_takes_result_ids(setup, tmp_path, capsys):
    import asyncio

    from bot.cli import main

    db, queue, worker, store = setup
    _, first = await run_one(db, queue, worker, "paint", {"prompt": "a red boat", "seed": 1, **SMALL})
    _, second = await run_one(db, queue, worker, "paint", {"prompt": "a blue boat", "seed": 2, **SMALL})
    out = tmp_path / "ids.mp4"
    args = [
        "transition",
        first.public_id.lower(),
        second.public_id,
        "--fps",
        "8",
        "--duration",
        "1",
        "--out",
        str(out),
    ]
    assert await asyncio.to_thread(main, args) == 0
    assert len(read_frames(out)[1]) == 8
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "ids.png").convert("RGB")), pixels(store, second.image_key)
    )
    capsys.readouterr()
    code = await asyncio.to_thread(
        main, ["transition", first.public_id, "ZZZZZZZZ", "--out", str(tmp_path / "x.mp4")]
    )
    assert code == 2
    assert "no result with id ZZZZZZZZ" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_warm_up_loads_the_configured_model_before_any_job(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real runner's warm-up leaves [model] id loaded in the worker's cache, so the
    first /paint after a start does not wait for it; the closed-form model loads nothing."""
    from bot import jobs
    from bot.paint_job import ModelCache

    tiny = load_settings(env={}, overrides={"storage": {"data_dir": str(data_dir)}})
    analytic = load_settings(env={}, overrides={"model": {"id": "analytic"}})
    cache = ModelCache(long_running=True)
    monkeypatch.setattr(jobs, "MODELS", cache)  # a fresh worker process's cache
    jobs.warm_up(analytic)
    assert not cache._models
    jobs.warm_up(tiny)
    assert any(key[0] == "tiny" for key in cache._models)
    assert run_job.warm_up is jobs.warm_up


async def test_a_transition_to_another_shape_says_it_was_cropped(setup, tmp_path):
    """Results of two shapes meet at the source's size: the destination is scaled to cover
    it and centre-cropped, and the member is told so (it was stretched, silently)."""
    from bot.delivery import fit_notes

    db, queue, worker, store = setup
    _, square = await run_one(db, queue, worker, "paint", {"prompt": "a red boat", "seed": 3, **SMALL})
    tall_size = {**SMALL, "height": 128}
    _, tall = await run_one(db, queue, worker, "paint", {"prompt": "a tall tower", "seed": 4, **tall_size})
    job, moved = await run_one(
        db,
        queue,
        worker,
        "transition",
        {
            "from_result": square.public_id,
            "to_result": tall.public_id,
            "from_trail": square.trail_key,
            "to_trail": tall.trail_key,
            "resize": True,
            "fps": 8,
            "duration": 1.0,
        },
    )
    assert job.status == "done", job.error
    assert (moved.width, moved.height) == (64, 64)
    assert moved.params["fitted_note"].startswith("cropped from 64x128 to 64x64")
    [note] = fit_notes(moved)
    assert note.startswith(f"Result `{tall.public_id}` was cropped from 64x128 to 64x64")
    assert note.endswith(f"to match `{square.public_id}`'s size.")
    # Same shapes: nothing to say.
    assert fit_notes(square) == []

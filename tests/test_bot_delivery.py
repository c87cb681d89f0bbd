"""Delivery and progress: previews, flagged results, failures, separate workers, fitting, the ledger.

The bot sessions here run a scripted job runner (real files, no model) so failures,
safety flags and previews can be asked for through the prompt; the painting itself is
covered by ``test_bot_e2e.py``. The rest are plain unit tests of ``bot.delivery``
(``bot.text`` has ``test_bot_text.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.delivery import DeliveryLedger, failure_text, fitted_files, safety_action, shrink_picture
from bot.worker import JobContext, JobOutput, MemberError, PermanentJobError, run_worker
from db.models import Job, Result
from painter.video import FrameEncoder, read_frames
from tests.discord_standin.world import ALICE_ID, GUILD_ID
from tests.test_bot_e2e import (
    CHANNEL_POST,
    FOLLOWUP,
    World,
    custom_ids,
    delivered,
    new_data_dir,
    result_id,
    running_world,
)

# The bot tests share one event loop (and one bot) per module; the unit tests below need none.
on_world = pytest.mark.asyncio(loop_scope="module")


def _png(value: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 128)).save(buffer, "PNG")
    return buffer.getvalue()


def _noise_png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def scripted_runner(ctx: JobContext) -> JobOutput:
    """Paints nothing: the prompt's words ask for a crash, a refusal, a flag, or a slow job."""
    words = str(ctx.params.get("prompt", "")).split()
    if "crash" in words:
        raise RuntimeError("the GPU caught fire")
    if "bad-picture" in words:
        raise MemberError("the attached picture is not an image")
    if "gone-source" in words:
        raise MemberError(
            "result K3F97QXM was deleted before it could be repainted",
            detail="no artifact 'jobs/1/1/trail.safetensors'",
        )
    if "broken-model" in words:
        raise PermanentJobError("model path '/srv/models/sd15' is not a readable diffusers pipeline")
    frames = 6
    pause = 0.5 if "slow" in words else 0.0
    for frame in range(1, frames + 1):
        ctx.raise_if_cancelled()
        image = np.full((64, 64, 3), frame * 40, np.uint8)
        preview = getattr(ctx, "preview", None)
        if preview is not None:
            preview(image)
        ctx.progress(0, frame, frames)
        time.sleep(pause)
    files = {}
    # "big-video": an animation no upload limit here takes (nor can it be re-encoded);
    # "noisy-heatmap": a heatmap of about 49 KB (noise does not compress).
    video_bytes = 200_000 if "big-video" in words else 2000
    heatmap = _noise_png(128) if "noisy-heatmap" in words else _png(200)
    outputs = [
        ("video", "painting.mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(video_bytes)),
        ("image", "painting.png", _png(10)),
        ("heatmap", "painting.heatmap.png", heatmap),
    ]
    if "with-trail" in words:
        # As a real painting keeps: its result gets "Repaint with…" and "Transition from this".
        outputs.append(("trail", "painting.trail.safetensors", b"scripted trail"))
    for role, name, data in outputs:
        path = ctx.workdir / name
        path.write_bytes(data)
        files[role] = path
    result = {
        "prompt": ctx.params["prompt"],
        "seed": 1,
        "steps": 4,
        "width": 64,
        "height": 64,
        "model_id": "scripted",
        "vae_id": "none",
        "effect": "strokes",
        "format": "mp4",
        "flagged": "flagged" in words,
    }
    return JobOutput(files=files, result=result)


@contextlib.asynccontextmanager
async def scripted_world(data: Path, **env: str) -> AsyncIterator[World]:
    """A bot on the stand-in whose worker runs :func:`scripted_runner` (no model), with ``env``."""
    async with running_world(data, runner=scripted_runner, heartbeat_interval_ms=41250, **env) as world:
        yield world


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-delivery"), data_dir)
    async with scripted_world(
        data,
        LATENT_PAINTER_DISCORD_PREVIEW_SECONDS="1",
        LATENT_PAINTER_QUEUE_MAX_ATTEMPTS="2",
        LATENT_PAINTER_QUEUE_BACKOFF_SECONDS="3",
    ) as world:
        yield world


@on_world
async def test_progress_shows_a_small_preview_of_the_canvas(world: World) -> None:
    handle = await world.standin.send_slash("paint", {"prompt": "slow sunrise"})
    followup = await delivered(handle, timeout=60)
    edits = [r for r in handle.requests if r.method == "PATCH" and r.ok and r.files]
    assert edits, "no progress edit carried a preview"
    preview = edits[0].file("preview.png")
    picture = Image.open(io.BytesIO(preview.data))
    assert max(picture.size) <= 160
    assert edits[0].embeds[0]["image"]["url"] == "attachment://preview.png"
    assert any("Painting frame" in r.content for r in handle.requests if r.method == "PATCH")
    # Previews come no faster than [discord] preview_seconds.
    times = [r.at for r in edits]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False))
    # The finished reply drops the preview.
    assert handle.original is not None and not handle.original.attachments
    assert followup.files_ending(".mp4")


@on_world
async def test_a_flagged_result_is_withheld_by_default(world: World) -> None:
    handle = await world.standin.send_slash("paint", {"prompt": "flagged picture"})
    answer = await handle.followup(timeout=30)
    assert "flagged by the safety checker" in answer.content and not answer.files
    assert answer.content.startswith(f"<@{ALICE_ID}>")
    assert not any(m.attachments for m in handle.messages)


async def _settled(handle: object, seconds: float = 0.5) -> None:
    """Give the bot a moment after its last request (to catch anything it would still send)."""
    count = -1
    while count != len(handle.requests):  # type: ignore[attr-defined]
        count = len(handle.requests)  # type: ignore[attr-defined]
        await asyncio.sleep(seconds)


@on_world
async def test_a_failure_of_ours_is_one_public_message_naming_the_prompt(world: World) -> None:
    standin = world.standin
    crash = await standin.send_slash("paint", {"prompt": "crash **now**"})
    [told] = await crash.wait_for(lambda r: r.route == FOLLOWUP, timeout=30)
    await _settled(crash)
    assert told.content == (
        f"<@{ALICE_ID}> Your painting “crash \\*\\*now\\*\\*” failed on our side after 2 attempts "
        "and will not be retried. It has been logged; please try again later."
    )
    assert not told.ephemeral and told.allowed_mentions["users"] == [ALICE_ID]
    edits = [r.content for r in crash.requests if r.method == "PATCH"]
    assert any("Attempt 1 of 2 failed on our side; it will be retried" in text for text in edits), edits
    assert "GPU" not in told.content and "Job" not in told.content  # internals stay in the log
    # One message: the reply that said the same is gone, and nothing else was posted.
    assert crash.original is None
    assert [m.content for m in crash.messages] == [told.content]

    # A permanent fault of ours (a model path, say) is not retried and not shown either.
    broken = await standin.send_slash("paint", {"prompt": "broken-model sunset"})
    [told] = await broken.wait_for(lambda r: r.route == FOLLOWUP, timeout=30)
    assert told.content == (
        f"<@{ALICE_ID}> Your painting “broken-model sunset” failed on our side and will not be "
        "retried. It has been logged; please try again later."
    )
    job = await world.bot.queue.get(max(j.id for j in await world.bot.queue.list_jobs(status="failed")))
    assert "/srv/models/sd15" in (job.error or "")  # operators still read it


@on_world
async def test_the_members_own_mistake_is_told_to_them_alone(world: World) -> None:
    standin = world.standin
    mark = standin.mark()
    refused = await standin.send_slash("paint", {"prompt": "bad-picture please"})
    [told] = await refused.wait_for(lambda r: r.route == FOLLOWUP, timeout=30)
    await _settled(refused)
    assert told.ephemeral
    assert told.content == (
        "Your painting “bad-picture please” could not be painted: the attached picture is not "
        "an image. It will not be retried."
    )
    # The public "thinking…"/progress reply went first, so the channel shows nothing of it.
    deleted = [r for r in refused.requests if r.method == "DELETE"]
    assert deleted and deleted[0].at < told.at
    assert refused.original is None
    assert not any("bad-picture" in m.content for m in standin.channel_messages("general"))
    assert not [r for r in standin.requests[mark:] if r.route == CHANNEL_POST]

    # A result deleted before its repaint ran: said in the member's terms, no storage key.
    gone = await standin.send_slash("paint", {"prompt": "gone-source"})
    [told] = await gone.wait_for(lambda r: r.route == FOLLOWUP, timeout=30)
    assert told.ephemeral and "result K3F97QXM was deleted before it could be repainted" in told.content
    assert "jobs/" not in told.content and "artifact" not in told.content


@on_world
async def test_a_members_mistake_after_the_token_expired_mentions_only_them(world: World) -> None:
    standin = world.standin
    mark = standin.mark()
    handle = await standin.send_slash("paint", {"prompt": "bad-picture slow"})
    assert (await handle.response(timeout=5)).callback_type == 5
    handle.expire()
    posted = await standin.wait_for(lambda r: r.route == CHANNEL_POST, since=mark, timeout=30)
    assert posted.content.startswith(f"<@{ALICE_ID}> Your painting “bad-picture slow” could not be painted")
    assert posted.allowed_mentions["users"] == [ALICE_ID]
    assert not posted.allowed_mentions.get("parse")


@on_world
async def test_one_members_rate_limit_holds_up_nobody_else(world: World) -> None:
    """A 429 on Alice's progress edit (8 s) does not delay Mod's job, nor edit Alice's reply late."""
    from tests.discord_standin.world import MOD_ID

    standin = world.standin
    alice = await standin.send_slash("paint", {"prompt": "slow alice"})
    await alice.wait_for(lambda r: r.method == "PATCH" and r.ok, timeout=10)
    token = alice.requests[-1].token
    standin.rate_limit(lambda r: r.method == "PATCH" and r.token == token, times=1, retry_after=8.0)
    armed = time.monotonic()
    mod = await standin.send_slash("paint", {"prompt": "mod's quick one"}, user=MOD_ID)
    await delivered(mod, timeout=30)
    # Alice's job runs 3 s and Mod's waits behind it: well under the 8 s Alice waits out.
    assert time.monotonic() - armed < 7.5
    followup = await delivered(alice, timeout=30)
    await _settled(alice)
    late = [r for r in alice.requests if r.method == "PATCH" and r.at > followup.at]
    assert all(not r.content.startswith("**Painting**") for r in late), [r.content for r in late]
    assert alice.original is not None and alice.original.content.startswith("Done in about")


@on_world
async def test_a_separate_worker_paints_and_the_bot_delivers(world: World) -> None:
    """``[discord] run_worker = false``: the bot queues and delivers, a `latent-painter worker` paints."""
    from dataclasses import replace

    settings = world.settings
    await world.stop()
    world.settings = replace(settings, discord=replace(settings.discord, run_worker=False))
    try:
        bot = await world.start()
        assert bot.worker is None
        handle = await world.standin.send_slash("paint", {"prompt": "painted elsewhere with-trail"})
        assert (await handle.response(timeout=5)).callback_type == 5
        await asyncio.sleep(1.5)
        assert not [r for r in handle.requests if r.route == FOLLOWUP]  # nobody painted it yet
        handled = await run_worker(
            settings, runner=scripted_runner, exit_when_idle=True, handle_signals=False
        )
        assert handled == 1
        followup = await delivered(handle, timeout=30)
        assert followup.files_ending(".mp4")
        assert custom_ids(handle.messages[-1])[0].startswith("lp:repaint:")
    finally:
        await world.stop()
        world.settings = settings
        await world.start()


@on_world
async def test_a_message_refused_as_too_large_leaves_files_out_by_kind_and_says_so_once(
    world: World,
) -> None:
    """Discord's limit is on the whole upload: a 413 sheds the animation, then the heatmap."""
    standin = world.standin
    # In place, with the animation already left out (too large for what the pictures leave of
    # the job's budget): the limit then drops under the pictures' total (as when a server
    # loses a boost while the job runs), so the follow-up is refused all the same.
    handle = await standin.send_slash(
        "paint", {"prompt": "big-video noisy-heatmap"}, attachment_size_limit=210_000
    )
    assert (await handle.response(timeout=5)).callback_type == 5
    handle.state.size_limit = 20_000
    [followup] = await handle.wait_for(lambda r: r.route == FOLLOWUP and r.ok and bool(r.files), timeout=30)
    rid = result_id(followup.content)
    assert followup.file_names == [f"final-{rid}.png"]
    assert followup.content.count("too large") == 1, followup.content
    assert followup.content.endswith(" The animation and the heatmap are too large to attach here.")
    refused = [r for r in handle.requests if r.route == FOLLOWUP and r.status == 413]
    assert [r.file_names for r in refused] == [[f"final-{rid}.png", f"heatmap-{rid}.png"]]
    # The message that delivered it is remembered, for /history's links.
    assert await recorded_message(world, rid) == handle.messages[-1].id

    # In the channel (the token expired), with the animation attached: the animation goes.
    guild = standin.guild(GUILD_ID)
    assert guild is not None
    saved = guild.attachment_size_limit
    mark = standin.mark()
    handle = await standin.send_slash("paint", {"prompt": "slow and posted in the channel"})
    assert (await handle.response(timeout=5)).callback_type == 5
    handle.expire()
    guild.attachment_size_limit = 1_000  # under the 2 KB animation, over each picture
    try:
        posted = await standin.wait_for(
            lambda r: r.route == CHANNEL_POST and r.ok and bool(r.files), since=mark, timeout=30
        )
    finally:
        guild.attachment_size_limit = saved
    rid = result_id(posted.content)
    assert posted.file_names == [f"final-{rid}.png", f"heatmap-{rid}.png"]
    assert posted.content.count("too large") == 1, posted.content
    assert posted.content.endswith(" The animation is too large to attach here.")
    assert await recorded_message(world, rid) == standin.channel_messages("general")[-1].id


async def recorded_message(world: World, rid: str, timeout: float = 10.0) -> int | None:
    """The message id stored on a result, once the bot has recorded it (just after sending)."""
    from db.results import get_result

    deadline = time.monotonic() + timeout
    while (message_id := (await get_result(world.bot.db, rid)).message_id) is None:
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return message_id


# -- units ----------------------------------------------------------------------------------


def test_ledger_remembers_deliveries_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "bot" / "delivered.txt"
    ledger = DeliveryLedger(path)
    since = ledger.since
    assert 5 not in ledger
    ledger.record(5)
    ledger.record(5)
    again = DeliveryLedger(path)
    assert 5 in again and 6 not in again and again.since == since
    assert path.read_text().splitlines()[1:] == ["5"]


@pytest.mark.parametrize(
    ("flagged", "policy", "age_restricted", "action"),
    [
        (False, "refuse", False, "deliver"),
        (False, "spoiler", True, "deliver"),
        (True, "refuse", True, "refuse"),
        (True, "spoiler", False, "refuse"),
        (True, "spoiler", True, "spoiler"),
    ],
)
def test_safety_policy(flagged: bool, policy: str, age_restricted: bool, action: str) -> None:
    assert safety_action(flagged, policy, age_restricted) == action


def test_failure_text_shows_member_errors_and_hides_ours() -> None:
    params = {"prompt": "a red boat"}
    ours = Job(
        id=3, kind="paint", params=params, status="failed", attempts=3, error="RuntimeError: CUDA at 0x7f"
    )
    theirs = Job(
        id=4, kind="paint", params=params, status="failed", attempts=1, error="MemberError: **huge**"
    )
    assert failure_text(ours) == (
        "Your painting “a red boat” failed on our side after 3 attempts and will not be retried. "
        "It has been logged; please try again later."
    )
    assert failure_text(theirs) == (
        "Your painting “a red boat” could not be painted: \\*\\*huge\\*\\*. It will not be retried."
    )
    cancelled = Job(
        id=5, kind="paint", status="cancelled", attempts=0, error=None, params={"prompt": "a cat"}
    )
    assert failure_text(cancelled) == "Your painting “a cat” was cancelled."  # no database id


@pytest.mark.parametrize(
    "error",
    [
        # The worker's own checks, a model, the configuration, a stored file: all ours.
        "PermanentJobError: runner's video file /srv/lp/work/1/painting.mp4 does not exist",
        "PermanentJobError: ModelError: model path '/srv/models/sd15' is not a readable diffusers pipeline",
        "PermanentJobError: ConfigError: [model] device: 'cuda:3' is not available",
        "PermanentJobError: ArtifactNotFound: no artifact 'uploads/7/in.png'",
    ],
)
def test_failure_text_never_shows_our_paths_keys_or_models(error: str) -> None:
    job = Job(id=9, kind="paint", params={"prompt": "x"}, status="failed", attempts=1, error=error)
    text = failure_text(job)
    assert text == (
        "Your painting “x” failed on our side and will not be retried. "
        "It has been logged; please try again later."
    )


def test_failure_text_keeps_the_members_part_of_a_member_error_only() -> None:
    from bot.worker import MemberError

    error = MemberError(
        "result K3F9 was deleted before it could be repainted", detail="no artifact 'jobs/1/1/t'"
    )
    job = Job(
        id=9,
        kind="paint",
        params={"prompt": "moon", "trail_key": "jobs/1/1/t", "effect": "glow"},
        status="failed",
        attempts=1,
        error=f"{type(error).__name__}: {error}",
    )
    assert "jobs/1/1/t" in job.error  # operators keep it
    assert failure_text(job) == (
        "Your repaint with glow of “moon” could not be painted: result K3F9 was deleted before it "
        "could be repainted. It will not be retried."
    )
    transition = Job(
        id=10,
        kind="transition",
        params={"from_result": "AAAA", "to_result": "BBBB"},
        status="failed",
        attempts=2,
        error="RuntimeError: boom",
    )
    assert failure_text(transition).startswith(
        "Your transition AAAA → BBBB failed on our side after 2 attempts"
    )


def _video(path: Path, frames: np.ndarray) -> Path:
    with FrameEncoder(path, size=(frames.shape[2], frames.shape[1]), fps=12, crf=10) as encoder:
        for frame in frames:
            encoder.write(frame)
    return path


def _result(store: object, tmp_path: Path, video: Path, picture: bytes) -> Result:
    store.put_file("jobs/1/1/video.mp4", video)  # type: ignore[attr-defined]
    store.put_bytes("jobs/1/1/image.png", picture)  # type: ignore[attr-defined]
    store.put_bytes("jobs/1/1/heatmap.png", _png(3))  # type: ignore[attr-defined]
    return Result(
        public_id="K3F97QXM",
        video_key="jobs/1/1/video.mp4",
        image_key="jobs/1/1/image.png",
        heatmap_key="jobs/1/1/heatmap.png",
        width=128,
        height=128,
        format="mp4",
    )


def test_files_over_the_limit_are_re_encoded_to_fit(tmp_path: Path) -> None:
    from bot.artifacts import LocalArtifactStore

    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    moving = np.stack([np.kron(np.roll(base, i, axis=0), np.ones((2, 2, 1), np.uint8)) for i in range(36)])
    video = _video(tmp_path / "moving.mp4", moving)
    picture = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(picture, "PNG")
    limit = 20_000
    assert video.stat().st_size > limit and len(picture.getvalue()) > limit
    store = LocalArtifactStore(tmp_path / "artifacts")
    files = fitted_files(store, _result(store, tmp_path, video, picture.getvalue()), limit)
    assert [f.filename for f in files] == [
        "painting-K3F97QXM.mp4",
        "final-K3F97QXM.jpg",
        "heatmap-K3F97QXM.png",
    ]
    # Discord's limit is on the whole upload: the three files together, with room for the message.
    assert sum(len(f.data) for f in files) <= limit - 1000, [(f.filename, len(f.data)) for f in files]
    fitted = tmp_path / "fitted.mp4"
    fitted.write_bytes(files[0].data)
    _, frames = read_frames(fitted)
    assert len(frames) >= 3 and frames[0].shape[2] == 3
    assert Image.open(io.BytesIO(files[1].data)).format == "JPEG"


def test_a_video_that_cannot_fit_is_left_out(tmp_path: Path) -> None:
    from bot.artifacts import LocalArtifactStore

    noise = np.random.default_rng(3).integers(0, 255, (24, 128, 128, 3), dtype=np.uint8)
    video = _video(tmp_path / "noise.mp4", noise)
    store = LocalArtifactStore(tmp_path / "artifacts")
    files = fitted_files(store, _result(store, tmp_path, video, _png(9)), 3_000)
    assert [f.filename for f in files] == ["final-K3F97QXM.png", "heatmap-K3F97QXM.png"]


def test_a_missing_artifact_is_left_out_not_fatal(tmp_path: Path) -> None:
    from bot.artifacts import LocalArtifactStore

    store = LocalArtifactStore(tmp_path)
    store.put_bytes("jobs/2/1/image.png", _png(1))
    result = Result(public_id="K3F97QXM", video_key="jobs/2/1/video.mp4", image_key="jobs/2/1/image.png")
    files = fitted_files(store, result, 10_000)
    assert [f.filename for f in files] == ["final-K3F97QXM.png"]


def test_shrink_picture_fits_tiny_limits() -> None:
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(
        noisy, "PNG"
    )
    data, suffix = shrink_picture(noisy.getvalue(), 5_000)
    assert suffix == ".jpg" and len(data) <= 5_000

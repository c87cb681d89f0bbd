"""Results the safety checker flagged, through the real discord.py client, the stand-in and the real runner.

Delivery withholds a flagged result (or, where the server allows it, sends it as spoilers
in an age-restricted channel). Everything else that shows a result's pictures follows the
same rule: live previews, transitions to or from it, repaints of it, gallery posts and
gallery pages; and what is made from a flagged result is flagged too.

The bot offers two tiny checkpoints that share a VAE: one (the default) with a safety
checker that flags every picture, and ``clean`` with one that flags none; both go by
their paths (the worker's model cache is the process's, and other tests' ``tiny`` has no
checker). It runs
the real job runner, each painted frame held a moment so that the painting lasts a few of
the watcher's 1-second ticks (the tiny model paints 16 frames in well under a second,
too fast for any preview to be due). The job runner's own records (the member's file
name) are checked at the end, without a bot.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.artifacts import LocalArtifactStore
from bot.config import load_settings
from bot.jobs import run_job
from bot.worker import JobContext, JobOutput
from db.results import get_result
from painter.models import build_tiny_pipeline
from painter.trail import Trail
from tests.discord_standin import InteractionHandle, RecordedRequest, StoredMessage
from tests.discord_standin.world import MOD_ID, NSFW_ID
from tests.test_bot_e2e import World, custom_ids, delivered, result_id, running_world

# The bot tests share one event loop (and one bot); the runner's test at the end needs none.
on_world = pytest.mark.asyncio(loop_scope="module")

SPOILER_POLICY_NOTE = "this server shows flagged results only in age-restricted channels"
# The interactions that made the shared results, by name (their messages carry the controls).
HANDLES: dict[str, InteractionHandle] = {}


# How long each painted frame is held: 16 frames take about 3 s, a few previews' worth.
FRAME_SECONDS = 0.2


def held_frames(ctx: JobContext) -> JobOutput:
    """The real job runner (:func:`bot.jobs.run_job`), each painted frame held :data:`FRAME_SECONDS`."""
    report = ctx.progress

    def progress(step: int, frame: int, total: int) -> None:
        report(step, frame, total)
        if frame:
            time.sleep(FRAME_SECONDS)

    ctx.progress = progress  # type: ignore[method-assign]
    return run_job(ctx)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint whose safety checker flags everything, and one whose checker flags nothing."""
    root = tmp_path_factory.mktemp("flagged")
    flagging = build_tiny_pipeline(root / "flag-all", safety="flag-all")
    clean = build_tiny_pipeline(root / "clean", safety="flag-none")
    return flagging, clean


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    checkpoints: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    flagging, clean = checkpoints
    async with running_world(
        tmp_path_factory.mktemp("flagged-data"),
        runner=held_frames,
        LATENT_PAINTER_MODEL_ID=str(flagging),
        LATENT_PAINTER_DISCORD_MODELS=f"{flagging},{clean}",
        LATENT_PAINTER_DISCORD_PREVIEW_SECONDS="1",
    ) as world:
        world.results["clean model"] = str(clean)
        yield world


async def set_policy(world: World, policy: str) -> None:
    """/settings flagged:<policy> as the moderator."""
    handle = await world.standin.send_slash("settings", {"flagged": policy}, user=MOD_ID)
    assert (await handle.response(timeout=5)).ok


async def told_privately(handle: InteractionHandle) -> str:
    """The bot's ephemeral answer (at once, or after a deferral)."""
    answer = await handle.response(timeout=10)
    assert answer.ephemeral, answer.json
    if answer.callback_type == 4:
        return answer.content
    [said] = await handle.wait_for(lambda r: r.ok and r.method in ("PATCH", "POST") and r.content, timeout=10)
    assert said.ephemeral or (handle.original is not None and handle.original.ephemeral)
    return said.content


def previews(handle: InteractionHandle) -> list[RecordedRequest]:
    """Progress edits that carried a picture of the canvas."""
    return [r for r in handle.requests if r.method == "PATCH" and r.files]


def spoilered(message: RecordedRequest) -> bool:
    """Every file sent as a spoiler, and no embed showing one unblurred."""
    unblurred = any("image" in e for e in message.embeds)
    return (
        bool(message.files)
        and all(f.filename.startswith("SPOILER_") for f in message.files)
        and not unblurred
    )


def result_message(handle: InteractionHandle, rid: str) -> StoredMessage:
    """The message that delivered a result (the one with its controls)."""
    return next(m for m in handle.messages if f"lp:delete:{rid}" in custom_ids(m))


async def shared(world: World, name: str) -> str:
    """The results the tests share, made on first use (so each test also runs alone)."""
    if name in world.results:
        return world.results[name]
    standin = world.standin
    if name == "flagged":
        # Made where the server's policy shows it: as spoilers, in the age-restricted channel.
        await set_policy(world, "spoiler")
        handle = await standin.send_slash("paint", {"prompt": "a stormy harbour", "seed": 3}, channel=NSFW_ID)
        followup = await delivered(handle, timeout=180)
        HANDLES[name] = handle
    elif name == "clean":
        options = {"prompt": "a calm harbour", "seed": 4, "model": world.results["clean model"]}
        handle = await standin.send_slash("paint", options)
        followup = await delivered(handle, timeout=180)
        HANDLES[name] = handle
    else:
        raise KeyError(name)
    world.results[name] = result_id(followup.content)
    return world.results[name]


# -- previews ---------------------------------------------------------------------------------


@on_world
async def test_live_previews_are_only_pictures_the_safety_checker_cleared(world: World) -> None:
    flagged = await shared(world, "flagged")
    handle = HANDLES["flagged"]
    # The frames were painted and reported, but no picture of them was shown before the verdict.
    assert any("Painting frame" in r.content for r in handle.requests if r.method == "PATCH")
    assert not previews(handle)
    [followup] = [r for r in handle.requests if r.files and r.method == "POST"]
    assert spoilered(followup) and "shown as spoilers" in followup.content
    assert (await get_result(world.bot.db, flagged)).params["flagged"] is True

    # A checkpoint whose checker clears the frames still shows them as they are painted.
    await shared(world, "clean")
    shown = previews(HANDLES["clean"])
    assert shown and shown[0].file("preview.png").data.startswith(b"\x89PNG")


# -- refused where the server's policy hides them ---------------------------------------------------


@on_world
async def test_a_flagged_result_is_not_reused_or_posted_where_it_would_not_be_shown(world: World) -> None:
    standin, bot = world.standin, world.bot
    flagged, clean = await shared(world, "flagged"), await shared(world, "clean")
    await set_policy(world, "spoiler")
    # #general is not age-restricted: the policy shows flagged results nowhere there.
    for options in ({"from": clean, "to": flagged}, {"from": flagged, "to": clean}):
        text = await told_privately(await standin.send_slash("transition", options))
        assert text == (
            f"{flagged} was flagged by the safety checker, so it cannot be transitioned here: "
            f"{SPOILER_POLICY_NOTE}."
        )
    text = await told_privately(await standin.send_slash("gallery submit", {"result": flagged}))
    assert text.startswith(
        f"{flagged} was flagged by the safety checker, so it cannot be added to the gallery"
    )
    assert not [
        m for m in standin.channel_messages("general") if m.embeds and m.embeds[0].get("title") == flagged
    ]

    # The policy back at its default: refused everywhere, the controls on its message too.
    await set_policy(world, "refuse")
    message = result_message(HANDLES["flagged"], flagged)
    repaint = await standin.send_component(f"lp:repaint:{flagged}", message=message, values=["glow"])
    assert await told_privately(repaint) == (
        f"{flagged} was flagged by the safety checker, so it cannot be repainted."
    )
    click = await standin.send_component(f"lp:transition:{flagged}", message=message)
    assert (await told_privately(click)).endswith("so it cannot be transitioned.")
    text = await told_privately(
        await standin.send_slash("transition", {"from": clean, "to": flagged}, channel=NSFW_ID)
    )
    assert text == f"{flagged} was flagged by the safety checker, so it cannot be transitioned."
    # Picked as the destination in the form of a result that is fine.
    clean_message = result_message(HANDLES["clean"], clean)
    form = await standin.send_component(f"lp:transition:{clean}", message=clean_message)
    assert (await form.response(timeout=5)).callback_type == 9
    submitted = await form.submit_modal({"destination": flagged})
    assert (await told_privately(submitted)).endswith("so it cannot be transitioned.")
    text = await told_privately(
        await standin.send_slash("gallery submit", {"result": flagged}, channel=NSFW_ID)
    )
    assert text == f"{flagged} was flagged by the safety checker, so it cannot be added to the gallery."
    # Nothing was queued by any of it.
    jobs = await bot.queue.list_jobs(limit=100)
    assert [j.kind for j in jobs if j.kind == "transition" or j.params.get("trail_key")] == []


# -- shown as spoilers where the server allows it ---------------------------------------------------


@on_world
async def test_what_is_made_from_a_flagged_result_is_flagged_and_shown_as_it_is(world: World) -> None:
    standin, bot = world.standin, world.bot
    flagged, clean = await shared(world, "flagged"), await shared(world, "clean")
    await set_policy(world, "spoiler")
    try:
        # A transition from a picture the checker cleared into the flagged one: the clean
        # checkpoint comes first and its checker flags nothing, yet the transition is flagged.
        handle = await standin.send_slash("transition", {"from": clean, "to": flagged}, channel=NSFW_ID)
        answer = await handle.response(timeout=5)
        assert answer.callback_type == 5, answer.content
        followup = await delivered(handle, timeout=180)
        transition = result_id(followup.content)
        assert spoilered(followup) and not previews(handle)
        assert (await get_result(bot.db, transition)).params["flagged"] is True

        # A repaint of it, by the control on its (age-restricted) message.
        message = result_message(HANDLES["flagged"], flagged)
        repaint = await standin.send_component(f"lp:repaint:{flagged}", message=message, values=["fade"])
        assert (await repaint.response(timeout=5)).callback_type == 5
        followup = await delivered(repaint, timeout=180)
        assert spoilered(followup) and not previews(repaint)
        assert (await get_result(bot.db, result_id(followup.content))).params["flagged"] is True

        # Into the gallery from the age-restricted channel: posted there, as a spoiler.
        submitted = await standin.send_slash("gallery submit", {"result": flagged}, channel=NSFW_ID)
        post = await submitted.followup(timeout=10)
        assert [f.filename for f in post.files] == [f"SPOILER_{flagged}.png"]
        assert "image" not in post.embeds[0]

        # Browsed from #general, the entry is listed without its picture; from the
        # age-restricted channel, with it as a spoiler.
        page = await (await standin.send_slash("gallery show", {})).followup(timeout=10)
        assert not page.files and page.embeds[0]["title"] == flagged
        assert {
            "name": "Picture",
            "value": "Not shown here: flagged by the safety checker.",
            "inline": False,
        } in (page.embeds[0]["fields"])
        page = await (await standin.send_slash("gallery show", {}, channel=NSFW_ID)).followup(timeout=10)
        assert [f.filename for f in page.files] == [f"SPOILER_{flagged}.png"]

        # The flagged transition is refused where it would not be shown, like its sources.
        text = await told_privately(await standin.send_slash("gallery submit", {"result": transition}))
        assert text.startswith(f"{transition} was flagged by the safety checker")
    finally:
        await set_policy(world, "refuse")


# -- the job runner's records -------------------------------------------------------------------------


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

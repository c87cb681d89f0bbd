"""The bot end to end: the real discord.py client, the real bot, the tiny model, a local Discord.

One bot session (stand-in + bot, started the way ``latent-painter bot`` starts it:
:func:`bot.discord_bot.create_bot` then ``start``) serves the tests of this module in
order; results painted early are used by later tests. Restarts get their own bots at the
end of the module, and one test runs the real ``latent-painter bot`` process.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import discord.gateway
import discord.http
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.config import Settings, load_settings
from bot.discord_bot import LatentPainterBot, create_bot
from bot.worker import Runner
from painter.video import read_frames
from tests.discord_standin import (
    DiscordStandIn,
    InteractionHandle,
    RecordedRequest,
    StandInAttachment,
    StoredMessage,
)
from tests.discord_standin.world import (
    ALICE_ID,
    BOB_ID,
    GALLERY_ID,
    GENERAL_ID,
    GUILD_ID,
    HALL_ID,
    MOD_ID,
    THREAD_ID,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "e2e-bot-token.not-a-real-one"
FPS, DURATION = 8, 2.0
FRAMES = int(FPS * DURATION)
RESULT_ID = re.compile(r"`([0-9A-Z]{8})`")
FOLLOWUP = "POST /webhooks/{application_id}/{token}"
CHANNEL_POST = "POST /channels/{channel_id}/messages"


def bot_env(data: Path, standin: DiscordStandIn, **extra: str) -> dict[str, str]:
    """Settings for a test bot: tiny model, small pictures, short animations, fast polling."""
    env = {
        "LATENT_PAINTER_STORAGE_DATA_DIR": str(data),
        "LATENT_PAINTER_MODEL_ID": "tiny",
        "LATENT_PAINTER_PAINTER_STEPS": "4",
        "LATENT_PAINTER_PAINTER_MAX_STEPS": "12",
        "LATENT_PAINTER_PAINTER_WIDTH": "64",
        "LATENT_PAINTER_PAINTER_HEIGHT": "64",
        "LATENT_PAINTER_PAINTER_FPS": str(FPS),
        "LATENT_PAINTER_PAINTER_DURATION": str(DURATION),
        "LATENT_PAINTER_DISCORD_SIZES": "64x64,128x128",
        "LATENT_PAINTER_DISCORD_SYNC_GUILD": str(GUILD_ID),
        "LATENT_PAINTER_DISCORD_PROGRESS_SECONDS": "1",
        "LATENT_PAINTER_DISCORD_MAX_IMAGE_BYTES": "4096",
        "LATENT_PAINTER_QUEUE_POLL_SECONDS": "0.2",
        "LATENT_PAINTER_QUEUE_HEARTBEAT_SECONDS": "1",
        **standin.env(),
    }
    env.update(extra)
    return env


def new_data_dir(root: Path, models_from: Path) -> Path:
    """A fresh data directory (own database and artifacts) sharing the session's tiny model."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").symlink_to(models_from / "models", target_is_directory=True)
    return root


class World:
    """The module's Discord stand-in and the bot currently connected to it."""

    def __init__(self, standin: DiscordStandIn, settings: Settings, runner: Runner | None = None) -> None:
        self.standin = standin
        self.settings = settings
        self.runner = runner  # None: the real runner (bot.jobs.run_job)
        self.results: dict[str, str] = {}  # name -> public id, shared by the tests in order
        self._bot: LatentPainterBot | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def bot(self) -> LatentPainterBot:
        assert self._bot is not None, "no bot is running"
        return self._bot

    async def start(self) -> LatentPainterBot:
        """Start a bot the way ``latent-painter bot`` does, and wait until its commands are synced."""
        mark = self.standin.mark()
        self._bot = await create_bot(self.settings, runner=self.runner, guild_ready_timeout=0.05)
        self._task = asyncio.create_task(self._bot.start(TOKEN))
        await self.standin.wait_until_ready(timeout=60)
        await self.standin.wait_for(
            lambda r: r.route.endswith("/guilds/{guild_id}/commands"), since=mark, timeout=60
        )
        return self._bot

    async def stop(self) -> None:
        """Close the bot as SIGTERM would (the running job goes back to the queue)."""
        if self._bot is None:
            return
        bot, task, self._bot, self._task = self._bot, self._task, None, None
        await bot.close()
        assert task is not None
        await asyncio.wait_for(task, 60)

    async def restart(self) -> LatentPainterBot:
        await self.stop()
        return await self.start()


@asynccontextmanager
async def running_world(
    data: Path, *, runner: Runner | None = None, heartbeat_interval_ms: int = 500, **env: str
) -> AsyncIterator[World]:
    """A bot and its worker on a fresh stand-in, with ``env`` settings over :func:`bot_env`'s;
    discord.py's class-level endpoints are put back and the stand-in checked clean after."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token=TOKEN, heartbeat_interval_ms=heartbeat_interval_ms) as standin:
        world = World(standin, load_settings(env=bot_env(data, standin, **env)), runner=runner)
        await world.start()
        try:
            yield world
        finally:
            await world.stop()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        standin.assert_clean()


@pytest.fixture(scope="module")
def endpoints():
    """discord.py's class-level endpoints, put back after the module (the bot repoints them)."""
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    yield
    discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, endpoints: None
) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-e2e"), data_dir)
    async with DiscordStandIn(token=TOKEN, heartbeat_interval_ms=500) as standin:
        world = World(standin, load_settings(env=bot_env(data, standin)))
        await world.start()
        try:
            yield world
        finally:
            await world.stop()
        standin.assert_clean()


async def paint(world: World, prompt: str, **options: object) -> tuple[object, RecordedRequest, str]:
    """/paint, waiting for the deferral and the delivery; returns (handle, follow-up, result id)."""
    handle = await world.standin.send_slash("paint", {"prompt": prompt, **options})
    deferral = await handle.response(timeout=5)
    assert deferral.callback_type == 5 and handle.delay(deferral) < 3.0
    followup = await delivered(handle)
    return handle, followup, result_id(followup.content)


async def delivered(handle: object, timeout: float = 120) -> RecordedRequest:
    """The follow-up that carries files (the delivery)."""
    hits = await handle.wait_for(lambda r: r.route == FOLLOWUP and bool(r.files), timeout=timeout)  # type: ignore[attr-defined]
    return hits[0]


FIRST_PROMPT = "@everyone <@&1300000000000000111> a **lighthouse** at dusk"


async def result(world: World, name: str) -> str:
    """A result the tests share, painted on first use (so any test also runs on its own)."""
    if name not in world.results:
        if name == "first":
            world.results[name] = (await paint(world, FIRST_PROMPT, seed=7))[2]
        elif name == "second":
            world.results[name] = (await paint(world, "a quiet harbour", seed=11))[2]
        elif name == "transition":
            first, second = await result(world, "first"), await result(world, "second")
            handle = await world.standin.send_slash(
                "transition", {"from": first, "to": second, "effect": "fade"}
            )
            world.results[name] = result_id((await delivered(handle)).content)
        else:
            raise KeyError(name)
    return world.results[name]


def result_id(text: str) -> str:
    found = RESULT_ID.search(text)
    assert found, f"no result id in {text!r}"
    return found.group(1)


def custom_ids(message: StoredMessage) -> list[str]:
    ids = []
    for row in message.components:
        for item in row.get("components", []):
            if item.get("custom_id"):
                ids.append(item["custom_id"])
    return ids


async def refused(handle: object) -> str:
    """The bot's answer, which must be an immediate ephemeral message; returns its text."""
    answer = await handle.response(timeout=5)  # type: ignore[attr-defined]
    assert answer.callback_type == 4, answer.json
    assert answer.ephemeral, answer.json
    return answer.content


def showed_progress(handle: InteractionHandle) -> bool:
    """Whether the deferred reply was edited with where the job stood (any stage)."""
    edits = [r.content for r in handle.requests if r.method == "PATCH" and r.ok]
    stages = ("Queued", "Starting", "Generating: step", "Painting frame")
    return any(text.startswith("**Painting**") and any(s in text for s in stages) for text in edits)


def alt_texts(message: RecordedRequest) -> dict[str, str]:
    """Each uploaded file's description (alt text), by file name."""
    names = {str(i): f.filename for i, f in enumerate(message.files)}
    return {
        names[str(a["id"])]: a.get("description")
        for a in message.message.get("attachments") or []
        if str(a.get("id")) in names
    }


# -- /paint ---------------------------------------------------------------------------------


async def test_paint_delivers_mp4_final_image_and_heatmap_pinging_only_the_requester(world: World) -> None:
    standin = world.standin
    handle, followup, rid = await paint(world, FIRST_PROMPT, seed=7)
    world.results["first"] = rid

    # Progress was shown in the deferred reply before the delivery: queued, or already
    # running when the worker claimed the job before the first edit (a frame-by-frame
    # progress reply: test_bot_delivery's scripted slow job).
    assert showed_progress(handle)

    names = followup.file_names
    assert names == [f"painting-{rid}.mp4", f"final-{rid}.png", f"heatmap-{rid}.png"]
    video = followup.files_ending(".mp4")[0].data
    path = Path(world.settings.data_dir) / "check.mp4"
    path.write_bytes(video)
    meta, frames = read_frames(path)
    assert len(frames) == FRAMES and frames[0].shape == (64, 64, 3)
    final = Image.open(io.BytesIO(followup.file(f"final-{rid}.png").data))
    heatmap = Image.open(io.BytesIO(followup.file(f"heatmap-{rid}.png").data))
    assert final.size == (64, 64) and heatmap.size == (64, 64)
    # Each file says what it shows (alt text, read out by screen readers).
    alt = alt_texts(followup)
    assert alt[f"painting-{rid}.mp4"] == "Animation of the painting, strokes effect"
    assert (
        alt[f"final-{rid}.png"].startswith("The finished picture: ")
        and "lighthouse" in alt[f"final-{rid}.png"]
    )
    assert alt[f"heatmap-{rid}.png"] == "Stroke heatmap: brighter where the brush went more often"

    embed = followup.embeds[0]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Seed"] == "7" and fields["Result id"] == f"`{rid}`" and fields["Effect"] == "strokes"
    assert fields["Size"] == "64x64" and fields["Model"] == "tiny" and fields["Steps"] == "4"
    # The prompt is shown inert: markdown and mentions escaped.
    assert "\\*\\*lighthouse\\*\\*" in embed["description"] and "@\u200beveryone" in embed["description"]

    # Only the requester is pinged, whatever the prompt says.
    allowed = followup.allowed_mentions or {}
    assert allowed["parse"] == [] and allowed["users"] == [ALICE_ID] and not allowed.get("roles")
    message = handle.messages[-1]
    assert (
        message.mentions.everyone is False
        and message.mentions.roles == ()
        and message.mentions.users == (ALICE_ID,)
    )
    assert not any(m.mentions.everyone or m.mentions.roles for m in standin.messages.all())
    assert custom_ids(message) == [
        f"lp:repaint:{rid}",
        f"lp:transition:{rid}",
        f"lp:submit:{rid}",
        f"lp:delete:{rid}",
    ]
    # The deferred reply ends as a status line: how long it took, and a link to the result.
    await handle.wait_for(lambda r: r.method == "PATCH" and "Open it" in (r.content or ""), timeout=10)
    original = handle.original
    assert original is not None and not original.attachments
    link = f"https://discord.com/channels/{message.guild_id}/{message.channel_id}/{message.id}"
    assert re.fullmatch(
        rf"Done in about \d+ s: result `{rid}`\. \[Open it\]\({re.escape(link)}\)", original.content
    ), original.content


async def test_history_lists_the_result(world: World) -> None:
    handle = await world.standin.send_slash("history", {})
    answer = await handle.response(timeout=5)
    assert answer.callback_type == 4 and answer.ephemeral
    embed = answer.embeds[0]
    assert embed["title"] == "Your paintings"
    first = await result(world, "first")
    assert any(f["name"] == f"`{first}`" for f in embed["fields"])
    assert "seed 7" in embed["fields"][0]["value"]
    # Another member's history does not show it.
    other = await world.standin.send_slash("history", {}, user=BOB_ID)
    assert first not in json.dumps((await other.response(timeout=5)).embeds)


async def test_gateway_stays_responsive_while_a_job_runs(world: World) -> None:
    standin, bot = world.standin, world.bot
    handle = await standin.send_slash("paint", {"prompt": "a slow storm", "size": "128x128", "steps": 10})
    await handle.response(timeout=5)

    async def running() -> bool:
        return any(job.status == "running" for job in await bot.queue.list_jobs(limit=5))

    deadline = time.monotonic() + 60
    while not await running():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    beats = standin.gateway.heartbeats
    asked = await standin.send_slash("history", {}, user=BOB_ID)
    answer = await asked.response(timeout=5)
    assert answer.ok and asked.delay(answer) < 2.0
    still_running = await running()
    followup = await delivered(handle)
    assert still_running, "the job ended before the check; it proves nothing"
    assert standin.gateway.heartbeats > beats  # heartbeats kept flowing (every 0.5 s here)
    assert result_id(followup.content)
    # The reply showed where the job stood before the delivery. Which stage an edit catches
    # (queued, starting, a step, a frame) depends on timing: this tiny job's generation takes
    # 0.3 s against edits a second apart. Every step and frame reported: test_jobs; a reply
    # following a slow job frame by frame: test_bot_delivery.
    assert showed_progress(handle)


# -- transitions ----------------------------------------------------------------------------


async def test_transition_between_two_results_delivers(world: World) -> None:
    standin = world.standin
    first = await result(world, "first")
    _, _, second = await paint(world, "a quiet harbour", seed=11)
    world.results["second"] = second

    choices = await (await standin.send_autocomplete("transition", {"from": ""}, focused="from")).choices()
    values = [c["value"] for c in choices]
    assert values[0] == second and first in values  # newest first
    assert all(len(c["name"]) <= 100 for c in choices)
    narrowed = await (
        await standin.send_autocomplete("transition", {"from": "harbour"}, focused="from")
    ).choices()
    assert [c["value"] for c in narrowed] == [second]

    handle = await standin.send_slash("transition", {"from": first, "to": second, "effect": "fade"})
    assert (await handle.response(timeout=5)).callback_type == 5
    followup = await delivered(handle)
    tid = result_id(followup.content)
    assert followup.files_ending(".mp4") and followup.files_ending(".png")
    title = followup.embeds[0]["title"]
    assert title == f"Transition {first} → {second}"
    alt = alt_texts(followup)
    assert alt[f"painting-{tid}.mp4"] == "Animation of the transition, fade effect"
    assert alt[f"heatmap-{tid}.png"].startswith(
        "Update heatmap of the fade effect: dark where paint came early"
    )
    path = Path(world.settings.data_dir) / "transition.mp4"
    path.write_bytes(followup.files_ending(".mp4")[0].data)
    assert len(read_frames(path)[1]) > 1
    world.results["transition"] = tid


async def test_transition_from_the_result_button_asks_for_the_destination(world: World) -> None:
    standin = world.standin
    first, second = await result(world, "first"), await result(world, "second")
    message = next(m for m in standin.messages.all() if f"lp:transition:{second}" in custom_ids(m))
    click = await standin.send_component(f"lp:transition:{second}", message=message)
    modal = await click.response(timeout=5)
    assert modal.callback_type == 9
    submitted = await click.submit_modal({"destination": first})
    assert (await submitted.response(timeout=5)).callback_type == 5
    followup = await delivered(submitted)
    assert followup.embeds[0]["title"] == f"Transition {second} → {first}"


async def test_files_are_fitted_to_the_interactions_upload_limit(world: World) -> None:
    limit = 30_000
    handle = await world.standin.send_slash(
        "paint", {"prompt": "a busy market", "size": "128x128", "seed": 5}, attachment_size_limit=limit
    )
    followup = await delivered(handle)
    assert followup.status == 200
    sizes = {f.filename: len(f.data) for f in followup.files}
    assert all(size <= limit for size in sizes.values()), sizes
    # The job was rendered for this limit, and the picture too big for it was re-encoded.
    job = (await world.bot.queue.list_jobs(limit=1))[0]
    assert job.params["max_bytes"] == limit
    rid = result_id(followup.content)
    assert sorted(sizes) == sorted([f"painting-{rid}.mp4", f"final-{rid}.jpg", f"heatmap-{rid}.png"]), sizes
    video = f"painting-{rid}.mp4"
    path = Path(world.settings.data_dir) / "fitted.mp4"
    path.write_bytes(followup.file(video).data)
    assert read_frames(path)[1]  # still a playable video


async def test_paint_from_an_attached_picture(world: World) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (96, 80), (30, 90, 200)).save(picture, "PNG")
    attachment = StandInAttachment("sky.png", picture.getvalue())
    handle = await world.standin.send_slash(
        "paint", {"prompt": "a stormy sky", "image": attachment, "strength": 0.5}
    )
    assert (await handle.response(timeout=5)).callback_type == 5
    followup = await delivered(handle)
    assert followup.files_ending(".mp4") and followup.embeds[0]["fields"]
    job = (await world.bot.queue.list_jobs(limit=1))[0]
    assert job.params["strength"] == 0.5 and job.params["image_key"].startswith("uploads/")
    await asyncio.sleep(0.5)
    assert not world.bot.store.exists(job.params["image_key"])  # the upload went with its job


# -- bad input ------------------------------------------------------------------------------


async def test_every_bad_input_is_answered_ephemerally(world: World) -> None:
    standin, bot = world.standin, world.bot
    first, transition = await result(world, "first"), await result(world, "transition")
    jobs_before = len(await bot.queue.list_jobs(limit=1000))

    assert "empty" in await refused(await standin.send_slash("paint", {"prompt": "   "}))
    too_long = "x" * (bot.settings.discord.max_prompt_length + 1)
    assert "limit is 500" in await refused(
        await standin.send_slash("paint", {"prompt": too_long}, strict=False)
    )
    assert "Steps must be from 1 to 12" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "steps": 10_000}, strict=False)
    )
    assert "Guidance" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "guidance": -3.0}, strict=False)
    )
    assert "Size must be one of 64x64, 128x128" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "size": "4096x4096"}, strict=False)
    )
    assert "Strength only applies" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "strength": 0.5})
    )
    # Attachments are refused by what Discord says about them, before any download.
    text = StandInAttachment("notes.txt", b"not a picture at all")
    assert "attach a PNG" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "image": text})
    )
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big, "PNG")
    assert len(big.getvalue()) > 4096
    huge = StandInAttachment("photo.png", big.getvalue())
    assert "the limit is 4 KB" in await refused(
        await standin.send_slash("paint", {"prompt": "a cat", "image": huge})
    )
    assert not list(bot.store.keys("uploads"))

    # Result ids: not an id, unknown, another member's private result, a transition (no trail).
    assert "not a result id" in await refused(
        await standin.send_slash("transition", {"from": "nope!", "to": first})
    )
    assert "no result you can use" in await refused(
        await standin.send_slash("transition", {"from": "ZZZZZZZZ", "to": first})
    )
    assert "no result you can use" in await refused(
        await standin.send_slash("transition", {"from": first, "to": first}, user=BOB_ID)
    )
    assert "keeps no trail" in await refused(
        await standin.send_slash("transition", {"from": transition, "to": first})
    )
    assert "two different" in await refused(
        await standin.send_slash("transition", {"from": first, "to": first})
    )
    assert "Only the member who made" in await refused(
        await standin.send_slash("gallery submit", {"result": first}, user=BOB_ID)
    )
    # A member without Manage Server, with a client that sends the command anyway.
    assert "Manage Server" in await refused(
        await standin.send_slash("settings", {"queue_cap": 1}, user=ALICE_ID, strict=False)
    )

    # A channel not allowed by the server's settings.
    settings = await standin.send_slash("settings", {"allow_channel": GALLERY_ID}, user=MOD_ID)
    assert (await settings.response(timeout=5)).ephemeral
    assert f"<#{GALLERY_ID}>" in await refused(await standin.send_slash("paint", {"prompt": "a cat"}))
    await (await standin.send_slash("settings", {"reset": "allowed channels"}, user=MOD_ID)).response(
        timeout=5
    )

    # Buttons: only the owner deletes; another member cannot repaint a private result.
    message = next(m for m in standin.messages.all() if f"lp:delete:{first}" in custom_ids(m))
    assert "Only the member who made it" in await refused(
        await standin.send_component(f"lp:delete:{first}", message=message, user=BOB_ID)
    )
    assert "can repaint this result; it is private" in await refused(
        await standin.send_component(f"lp:repaint:{first}", message=message, values=["glow"], user=BOB_ID)
    )
    assert len(await bot.queue.list_jobs(limit=1000)) == jobs_before  # nothing was queued


async def test_queue_cap_is_answered_ephemerally(world: World) -> None:
    standin = world.standin
    await (await standin.send_slash("settings", {"queue_cap": 1}, user=MOD_ID)).response(timeout=5)
    try:
        first = await standin.send_slash("paint", {"prompt": "one at a time"}, user=BOB_ID)
        assert (await first.response(timeout=5)).callback_type == 5
        text = await refused(await standin.send_slash("paint", {"prompt": "and another"}, user=BOB_ID))
        assert "the limit is 1" in text
        assert result_id((await delivered(first)).content)
    finally:
        await (await standin.send_slash("settings", {"reset": "queue cap"}, user=MOD_ID)).response(timeout=5)


# -- gallery --------------------------------------------------------------------------------


async def test_gallery_submit_vote_and_show(world: World) -> None:
    standin = world.standin
    first, second = await result(world, "first"), await result(world, "second")
    submitted = await standin.send_slash("gallery submit", {"result": first})
    post = await submitted.followup(timeout=10)
    assert post.embeds[0]["title"] == first and post.file_names == [f"{first}.png"]
    message = submitted.messages[-1]
    vote_id = custom_ids(message)[0]
    assert re.fullmatch(r"lp:vote:\d+", vote_id)
    assert "already in" in await refused(await standin.send_slash("gallery submit", {"result": first}))

    # With a gallery channel and a hall of fame set, the result button posts there.
    for options in ({"gallery_channel": GALLERY_ID}, {"hall_of_fame_channel": HALL_ID}):
        await (await standin.send_slash("settings", options, user=MOD_ID)).response(timeout=5)
    try:
        result_message = next(m for m in standin.messages.all() if f"lp:submit:{second}" in custom_ids(m))
        clicked = await standin.send_component(f"lp:submit:{second}", message=result_message)
        note = await clicked.followup(timeout=10)
        assert note.ephemeral and f"<#{GALLERY_ID}>" in note.content
        for channel in ("gallery", "hall-of-fame"):
            posts = [
                m for m in standin.channel_messages(channel) if m.embeds and m.embeds[0]["title"] == second
            ]
            assert len(posts) == 1 and posts[0].attachments[0].filename == f"{second}.png", channel
            assert custom_ids(posts[0])[0].startswith("lp:vote:")
    finally:
        for setting in ("gallery channel", "hall of fame channel"):
            await (await standin.send_slash("settings", {"reset": setting}, user=MOD_ID)).response(timeout=5)

    # One vote per member; a second click takes it back.
    for user, expected in ((BOB_ID, "1"), (BOB_ID, "0"), (BOB_ID, "1"), (MOD_ID, "2")):
        click = await standin.send_component(vote_id, message=message, user=user)
        answer = await click.response(timeout=5)
        assert answer.callback_type == 7
        note = await click.followup(timeout=5)
        assert note.ephemeral and f"has {expected} now" in note.content
        message = standin.messages.get(message.id)
        assert message.components[0]["components"][0]["label"] == f"▲ {expected}"

    # Bob may now use Alice's first result, since it is in the server's gallery.
    choices = await (
        await standin.send_autocomplete("transition", {"from": first}, focused="from", user=BOB_ID)
    ).choices()
    assert [c["value"] for c in choices] == [first]

    top = await standin.send_slash("gallery show", {"sort": "top"}, user=BOB_ID)
    page = await top.followup(timeout=10)
    assert page.ephemeral
    assert [e["title"] for e in page.embeds] == [first, second]
    assert sorted(page.file_names) == sorted([f"{first}.png", f"{second}.png"])
    newest = await standin.send_slash("gallery show", {"sort": "new"})
    assert [e["title"] for e in (await newest.followup(timeout=10)).embeds] == [second, first]


# -- delivery under pressure ----------------------------------------------------------------


async def test_rate_limited_follow_up_is_waited_out_and_the_file_still_arrives(world: World) -> None:
    standin = world.standin
    standin.rate_limit(lambda r: r.route == FOLLOWUP and bool(r.files), times=2, retry_after=0.3)
    handle = await standin.send_slash("paint", {"prompt": "rain on a window"})
    followup = await delivered(handle)
    limited = [r for r in handle.requests if r.rate_limited]
    assert len(limited) == 2 and all(r.route == FOLLOWUP for r in limited)
    assert followup.at - limited[0].at >= 0.6
    assert followup.files_ending(".mp4") and followup.status == 200
    # Delivered once: one message with the video.
    assert len([m for m in handle.messages if any(a.filename.endswith(".mp4") for a in m.attachments)]) == 1


async def test_job_outliving_its_token_is_delivered_as_a_channel_message(world: World) -> None:
    standin = world.standin
    mark = standin.mark()
    handle = await standin.send_slash("paint", {"prompt": "a very long night"})
    assert (await handle.response(timeout=5)).callback_type == 5
    handle.expire()  # as Discord does after 15 minutes
    posted = await standin.wait_for(
        lambda r: r.route == CHANNEL_POST and bool(r.files), since=mark, timeout=120
    )
    assert posted.params["channel_id"] == str(GENERAL_ID)
    assert posted.files_ending(".mp4") and posted.content.startswith(f"<@{ALICE_ID}> your painting")
    message = standin.channel_messages("general")[-1]
    assert message.mentions.users == (ALICE_ID,) and not message.mentions.everyone
    assert not [r for r in handle.requests if r.route == FOLLOWUP and r.ok]


async def test_history_pages_with_buttons(world: World) -> None:
    from db.results import history

    standin = world.standin
    while (await history(world.bot.db, ALICE_ID, per_page=5)).total <= 5:
        await paint(world, "one more for the history")
    handle = await standin.send_slash("history", {})
    await handle.response(timeout=5)
    page_one = handle.original
    assert page_one is not None and page_one.ephemeral
    assert custom_ids(page_one) == ["lp:history:0", "lp:history:2"]
    assert page_one.components[0]["components"][0]["disabled"] is True  # no newer page
    click = await standin.send_component("lp:history:2", message=page_one)
    answer = await click.response(timeout=5)
    assert answer.callback_type == 7
    assert answer.embeds[0]["footer"]["text"].startswith("Page 2 of ")


# -- restarts -------------------------------------------------------------------------------


async def test_buttons_keep_working_after_a_restart(world: World) -> None:
    standin = world.standin
    first = await result(world, "first")
    await world.restart()

    message = next(m for m in standin.messages.all() if f"lp:repaint:{first}" in custom_ids(m))
    click = await standin.send_component(f"lp:repaint:{first}", message=message, values=["glow"])
    assert (await click.response(timeout=5)).callback_type == 5
    followup = await delivered(click)
    fields = {f["name"]: f["value"] for f in followup.embeds[0]["fields"]}
    # The stored trail was painted again with the new effect: same seed and steps, new result.
    assert fields["Effect"] == "glow" and fields["Seed"] == "7" and fields["Steps"] == "4"
    assert result_id(followup.content) != first

    posts = [
        m
        for m in standin.messages.all()
        if m.embeds and m.embeds[0].get("title") == first and custom_ids(m)[0].startswith("lp:vote:")
    ]
    if not posts:  # this test running on its own: put the result in the gallery first
        submitted = await standin.send_slash("gallery submit", {"result": first})
        await submitted.followup(timeout=10)
        await world.restart()
        posts = submitted.messages
    post = posts[-1]
    before = int(post.components[0]["components"][0]["label"].split()[1])
    vote = await standin.send_component(custom_ids(post)[0], message=post, user="owner")
    assert (await vote.response(timeout=5)).callback_type == 7
    assert f"has {before + 1} now" in (await vote.followup(timeout=5)).content


async def _job_ids(url: str, prompts: list[str]) -> dict[str, tuple[int, str, int]]:
    """prompt -> (job id, status, attempts), read from the database directly."""
    from db.engine import Database
    from db.queue import JobQueue

    async with Database.from_url(url) as db:
        jobs = await JobQueue(db).list_jobs(limit=100)
    return {
        j.params.get("prompt"): (j.id, j.status, j.attempts)
        for j in jobs
        if j.params.get("prompt") in prompts
    }


async def start_bot_process(env: dict[str, str], log_file: Any) -> asyncio.subprocess.Process:
    """``latent-painter bot`` in its own process (as ``python -m bot.cli bot``), logging to ``log_file``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.cli", "bot", cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
    )


async def test_real_entry_point_and_jobs_interrupted_by_sigterm_are_delivered_once(
    world: World, tmp_path: Path
) -> None:
    """`latent-painter bot` in its own process; SIGTERM mid-job; the next start finishes and delivers once."""
    standin = world.standin
    await world.stop()
    env = {
        **os.environ,
        **bot_env(Path(world.settings.data_dir), standin),
        "DISCORD_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "1",
    }
    log_path = tmp_path / "bot.log"
    mark = standin.mark()
    with open(log_path, "wb") as log_file:
        process = await start_bot_process(env, log_file)
        try:
            await standin.wait_for(
                lambda r: r.route.endswith("/guilds/{guild_id}/commands"), since=mark, timeout=120
            )
            await standin.wait_until_ready(timeout=60)
            prompts = ["interrupted at work", "still in the queue"]
            busy = await standin.send_slash("paint", {"prompt": prompts[0], "size": "128x128", "steps": 12})
            answer = await busy.response(timeout=10)
            assert answer.callback_type == 5 and busy.delay(answer) < 3.0
            deadline = time.monotonic() + 120
            while (await _job_ids(world.settings.database_url, prompts))[prompts[0]][1] != "running":
                assert time.monotonic() < deadline, "the job never started"
                await asyncio.sleep(0.1)
            waiting = await standin.send_slash("paint", {"prompt": prompts[1]}, user=BOB_ID)
            answer = await waiting.response(timeout=10)
            assert answer.callback_type == 5 and waiting.delay(answer) < 3.0
            states = await _job_ids(world.settings.database_url, prompts)
            assert [states[p][1] for p in prompts] == ["running", "queued"]
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 60) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    output = log_path.read_text(errors="replace")
    assert TOKEN not in output
    assert "released" in output  # the running job was handed back, not left to its lease
    states = await _job_ids(world.settings.database_url, prompts)
    assert [states[p][1:] for p in prompts] == [("queued", 0), ("queued", 0)]

    await world.start()
    first, second = await delivered(busy), await delivered(waiting)
    assert first.files_ending(".mp4") and second.files_ending(".mp4")
    await world.restart()  # a later start owes nothing: no second delivery
    await asyncio.sleep(2)
    for handle in (busy, waiting):
        deliveries = [r for r in handle.requests if r.route == FOLLOWUP and r.files and r.ok]
        assert len(deliveries) == 1
    posted = [m for m in standin.channel_messages("general") if m.interaction_token is None]
    assert not [m for m in posted if "interrupted at work" in json.dumps(m.embeds)]


async def test_owner_deletes_a_result_and_its_files(world: World) -> None:
    standin = world.standin
    handle, _, rid = await paint(world, "a result to throw away", seed=3)
    bot = world.bot
    stored = await bot_result(bot, rid)
    keys = [k for k in (stored.video_key, stored.image_key, stored.heatmap_key, stored.trail_key) if k]
    assert keys and all(bot.store.exists(k) for k in keys)
    message = next(m for m in standin.messages.all() if f"lp:delete:{rid}" in custom_ids(m))
    click = await standin.send_component(f"lp:delete:{rid}", message=message)
    assert (await click.response(timeout=5)).callback_type == 6
    await click.wait_for(lambda r: r.method == "DELETE", timeout=10)
    assert not any(bot.store.exists(k) for k in keys)
    assert "no result you can use" in await refused(
        await standin.send_slash("transition", {"from": rid, "to": rid})
    )


async def bot_result(bot: LatentPainterBot, rid: str):
    from db.results import get_result

    return await get_result(bot.db, rid)


async def test_verbose_logs_keep_interaction_tokens_out(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``-v`` discord.py logs every webhook URL; a token in one lets anyone post as the bot."""
    from bot.redact import add_secrets, install_log_redaction

    install_log_redaction()  # what `latent-painter` does for every command
    add_secrets([TOKEN])  # what run_bot does with the token it was given
    caplog.set_level(logging.DEBUG)
    handle, _, _ = await paint(world, "a token that must not leak", seed=5)
    text = caplog.text
    assert "/webhooks/" in text  # the URLs were logged, with the token taken out
    assert handle.token not in text and TOKEN not in text


async def test_a_thread_is_allowed_where_its_channel_is(world: World) -> None:
    """With painting limited to #general, its threads paint too (Discord sends the thread's id)."""
    standin = world.standin
    await (await standin.send_slash("settings", {"allow_channel": GENERAL_ID}, user=MOD_ID)).response(
        timeout=5
    )
    try:
        handle = await standin.send_slash("paint", {"prompt": "a lighthouse in a thread"}, channel=THREAD_ID)
        assert (await handle.response(timeout=5)).callback_type == 5
        followup = await delivered(handle)
        assert followup.files_ending(".mp4")
    finally:
        await (await standin.send_slash("settings", {"reset": "allowed channels"}, user=MOD_ID)).response(
            timeout=5
        )


async def test_a_repainted_result_can_be_transitioned_and_outlives_its_source(world: World) -> None:
    """A repaint keeps its own trail: it transitions, repaints, and survives its source's deletion."""
    standin = world.standin
    _, _, source = await paint(world, "a result repainted, then deleted", seed=21)
    message = next(m for m in standin.messages.all() if f"lp:repaint:{source}" in custom_ids(m))
    click = await standin.send_component(f"lp:repaint:{source}", message=message, values=["fade"])
    repainted = result_id((await delivered(click)).content)
    # The job names its source, so a source deleted before it runs is named to the member.
    jobs = await world.bot.queue.list_jobs(user_id=ALICE_ID, limit=1000)
    assert any(j.params.get("from_result") == source for j in jobs)
    stored = await bot_result(world.bot, repainted)
    assert stored.trail_key and stored.trail_key != (await bot_result(world.bot, source)).trail_key

    owner_message = next(m for m in standin.messages.all() if f"lp:delete:{source}" in custom_ids(m))
    delete = await standin.send_component(f"lp:delete:{source}", message=owner_message)
    await delete.wait_for(lambda r: r.method == "DELETE", timeout=10)
    handle = await standin.send_slash(
        "transition", {"from": repainted, "to": await result(world, "second"), "effect": "fade"}
    )
    assert (await handle.response(timeout=5)).callback_type == 5
    assert (await delivered(handle)).files_ending(".mp4")


async def test_a_refusal_after_the_public_deferral_is_private(world: World) -> None:
    """A picture is downloaded after a public "thinking…"; its failure is not posted in the channel."""
    data = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 90, 30)).save(data, "PNG")
    picture = StandInAttachment("gone.png", data.getvalue(), served=False)  # its CDN link answers 404
    handle = await world.standin.send_slash("paint", {"prompt": "from a lost picture", "image": picture})
    deferral = await handle.response(timeout=5)
    assert deferral.callback_type == 5 and not deferral.ephemeral
    answer = await handle.followup(timeout=10)
    assert answer.ephemeral and "could not be downloaded from Discord" in answer.content
    assert any(r.method == "DELETE" and r.ok for r in handle.requests)  # the "thinking…" is gone
    assert not [m for m in handle.messages if not m.ephemeral]

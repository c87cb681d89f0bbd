"""/paint's checks on what a member sends, through the real discord.py client and the stand-in.

A request the worker would fail on (a damaged picture, a strength that repaints no step, an
invisible prompt) is refused to the member alone before anything is queued or announced; a
picture given without a size is painted at the offered size closest to its shape; a
checkpoint whose path is longer than a Discord choice value is still offered. One bot (the
real runner, the tiny model) serves the tests of this module.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from tests.discord_standin import InteractionHandle, StandInAttachment
from tests.discord_standin.world import GUILD_ID
from tests.test_bot_e2e import World, delivered, new_data_dir, refused, result_id, running_world

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIZES = "64x64,96x64,64x96"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("paint-input"), data_dir)
    # A checkpoint directory whose path is longer than Discord allows a choice value (100).
    long_model = data / ("a-checkpoint-kept-under-a-long-descriptive-directory-name-" + "v" * 50)
    long_model.symlink_to(data_dir / "models" / "tiny", target_is_directory=True)
    assert len(str(long_model)) > 100
    async with running_world(
        data,
        LATENT_PAINTER_DISCORD_SIZES=SIZES,
        LATENT_PAINTER_DISCORD_MODELS=f"tiny,analytic,{long_model}",
        LATENT_PAINTER_DISCORD_MAX_IMAGE_BYTES="100000",
    ) as world:
        yield world


def picture(size: tuple[int, int], kind: str = "PNG", **save: object) -> bytes:
    """A picture with some structure (a gradient), encoded as ``kind``."""
    width, height = size
    ramp = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, kind, **save)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small valid-looking PNG whose header claims ``width`` x ``height`` (a decompression bomb)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


async def job_count(world: World) -> int:
    return len(await world.bot.queue.list_jobs(limit=1000))


async def refused_after_thinking(handle: InteractionHandle) -> str:
    """The bot deferred publicly (to download), then refused privately; returns the refusal."""
    deferral = await handle.response(timeout=5)
    assert deferral.callback_type == 5
    answer = await handle.followup(timeout=15)
    assert answer.ephemeral, answer.json
    # The channel's "thinking…" went, and the channel saw nothing: no "Queued", no failure.
    assert any(r.method == "DELETE" and r.ok for r in handle.requests)
    assert not [m for m in handle.messages if not m.ephemeral]
    assert not [r for r in handle.requests if r.method == "PATCH"]
    return answer.content


async def test_a_strength_that_repaints_no_step_is_refused_at_once(world: World) -> None:
    standin = world.standin
    before = await job_count(world)
    sky = StandInAttachment("sky.png", picture((64, 64)))
    text = await refused(
        await standin.send_slash("paint", {"prompt": "a sky", "image": sky, "steps": 10, "strength": 0.05})
    )
    assert text == (
        "With strength 0.05, 10 steps repaint nothing (steps × strength must reach 1): use at least 20 "
        "steps or a higher strength. Steps go up to 12 here: use a strength of at least 0.09."
    )
    # The default steps (4 here) count too.
    text = await refused(
        await standin.send_slash("paint", {"prompt": "a sky", "image": sky, "strength": 0.2})
    )
    assert text.startswith("With strength 0.2, 4 steps repaint nothing") and "use at least 5 steps" in text
    assert await job_count(world) == before and not list(world.bot.store.keys("uploads"))

    # The analytic painter uses no strength: the same request paints.
    handle = await standin.send_slash(
        "paint", {"prompt": "a sky", "image": sky, "steps": 10, "strength": 0.05, "model": "analytic"}
    )
    assert (await handle.response(timeout=5)).callback_type == 5
    assert result_id((await delivered(handle)).content)


@pytest.mark.parametrize(
    ("filename", "data", "expected"),
    [
        ("notes.png", b"a shopping list, renamed", "“notes.png”: not a PNG, JPEG, WebP or GIF picture."),
        ("cut.jpg", picture((64, 48), "JPEG")[:700], "“cut.jpg”: the picture is damaged or truncated."),
        ("cut.png", picture((64, 48))[:300], "“cut.png”: the picture is damaged or truncated."),
        ("paint.png", picture((16, 16), "BMP"), "“paint.png”: not a PNG, JPEG, WebP or GIF picture."),
    ],
    ids=["text", "truncated-jpeg", "truncated-png", "bmp-named-png"],
)
async def test_a_picture_the_painter_cannot_read_is_refused_privately_before_it_is_queued(
    world: World, filename: str, data: bytes, expected: str
) -> None:
    before = await job_count(world)
    handle = await world.standin.send_slash(
        "paint", {"prompt": "from my picture", "image": StandInAttachment(filename, data)}
    )
    assert await refused_after_thinking(handle) == expected
    assert await job_count(world) == before
    assert not list(world.bot.store.keys("uploads"))  # nothing stored for a worker to read


async def test_a_picture_claiming_a_huge_canvas_is_refused_before_it_is_downloaded(world: World) -> None:
    bomb = StandInAttachment("bomb.png", png_claiming(7000, 7000))  # Discord reports 7000x7000
    handle = await world.standin.send_slash("paint", {"prompt": "a big one", "image": bomb})
    # The first answer is the refusal itself (not a deferral): the download comes only after
    # the public "thinking…", so the picture was judged by Discord's numbers alone.
    assert await refused(handle) == (
        "“bomb.png”: too large (7000x7000, 49 megapixels); downscale it to at most 40 megapixels."
    )


async def test_a_picture_without_a_size_is_painted_at_the_offered_size_closest_to_its_shape(
    world: World,
) -> None:
    standin, bot = world.standin, world.bot
    # The command says that a picture is cropped to the size's shape.
    command = standin.command("paint", guild_id=GUILD_ID)
    options = {o["name"]: o for o in command["options"]}
    assert "cropped to the size's shape" in options["image"]["description"]
    assert "closest" in options["size"]["description"]

    # 150x100 (3:2): 96x64 of 64x64, 96x64 and 64x96; delivered at that size.
    wide = StandInAttachment("wide.png", picture((150, 100)))
    handle = await standin.send_slash("paint", {"prompt": "a wide field", "image": wide})
    followup = await delivered(handle)
    rid = result_id(followup.content)
    final = Image.open(io.BytesIO(followup.file(f"final-{rid}.png").data))
    assert final.size == (96, 64)

    # A JPEG stored 150x100 that its EXIF turns upright to 100x150 (Discord reports no size
    # for it here): the decoded, upright shape decides.
    exif = Image.Exif()
    exif[0x0112] = 6
    turned = StandInAttachment("phone.jpg", picture((150, 100), "JPEG", exif=exif))
    handle = await standin.send_slash("paint", {"prompt": "a tall tower", "image": turned})
    await delivered(handle)  # the job is queued after the download, well after the deferral
    job = (await bot.queue.list_jobs(limit=1))[0]
    assert job.params["prompt"] == "a tall tower"
    assert (job.params["width"], job.params["height"]) == (64, 96)

    # A size the member picks is kept: the picture is cropped to it.
    handle = await standin.send_slash("paint", {"prompt": "a square", "image": wide, "size": "64x64"})
    await delivered(handle)
    job = (await bot.queue.list_jobs(limit=1))[0]
    assert job.params["prompt"] == "a square"
    assert (job.params["width"], job.params["height"]) == (64, 64)


@pytest.mark.parametrize(
    "prompt",
    ["\u200b\u200b", "\u202e\u2066\u200d \u2069", "\ufeff\u00ad\u2060", "\u3164\u3164", "\u034f\ufe0f"],
    ids=["zero-width", "bidi", "format", "hangul-filler", "lone-marks"],
)
async def test_a_prompt_of_invisible_characters_is_refused_like_an_empty_one(
    world: World, prompt: str
) -> None:
    before = await job_count(world)
    text = await refused(await world.standin.send_slash("paint", {"prompt": prompt}))
    assert text == "The prompt has no visible characters: describe what to paint."
    assert await job_count(world) == before


async def test_a_prompt_with_invisible_characters_around_words_is_painted(world: World) -> None:
    handle = await world.standin.send_slash("paint", {"prompt": "\u200ba cat\u200d", "negative": "\u200b"})
    assert (await handle.response(timeout=5)).callback_type == 5
    job = (await world.bot.queue.list_jobs(limit=1))[0]
    assert job.params["prompt"] == "\u200ba cat\u200d" and "negative_prompt" not in job.params
    await delivered(handle)


async def test_a_checkpoint_with_a_path_longer_than_a_choice_value_is_offered_and_paints(
    world: World,
) -> None:
    standin = world.standin
    long_model = world.settings.discord.models.split(",")[-1]
    syncs = [r for r in standin.requests if r.route.endswith("/guilds/{guild_id}/commands")]
    assert syncs and all(r.ok for r in syncs)  # Discord would refuse a 100+ character value
    options = {o["name"]: o for o in standin.command("paint", guild_id=GUILD_ID)["options"]}
    choices = options["model"]["choices"]
    assert [c["value"] for c in choices[:2]] == ["tiny", "analytic"]
    offered = choices[2]
    assert len(offered["value"]) <= 100 and len(offered["name"]) <= 100
    assert offered["name"].startswith("…") and long_model.endswith(offered["name"][1:])
    assert "/" not in offered["name"]  # the folder's name, never the server's path to it

    handle = await standin.send_slash("paint", {"prompt": "a lighthouse", "model": offered["value"]})
    assert (await handle.response(timeout=5)).callback_type == 5
    job = (await world.bot.queue.list_jobs(limit=1))[0]
    assert job.params["model"] == long_model
    assert result_id((await delivered(handle)).content)
    # A value that names no offered checkpoint is refused.
    text = await refused(
        await standin.send_slash("paint", {"prompt": "x", "model": "sha256:0"}, strict=False)
    )
    assert text == "Unknown model; pick one from the list."

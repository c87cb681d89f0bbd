"""/paint's checks on what a member sends, through the real discord.py client and the stand-in.

A request the worker would fail on (a damaged picture, a strength that repaints no step, an
invisible prompt) is refused to the member alone before anything is queued or announced; a
picture given without a size is painted at the offered size closest to its shape; a
checkpoint whose path is longer than a Discord choice value is still offered. One bot (the
real runner, the tiny model) serves the tests of this module.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import discord.gateway
import discord.http
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.config import load_settings
from tests.discord_standin import DiscordStandIn, StandInAttachment
from tests.test_bot_e2e import TOKEN, World, bot_env, delivered, new_data_dir, refused, result_id

pytestmark = pytest.mark.asyncio(loop_scope="module")

SIZES = "64x64,96x64,64x96"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("paint-input"), data_dir)
    saved = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with DiscordStandIn(token=TOKEN, heartbeat_interval_ms=500) as standin:
        env = bot_env(
            data,
            standin,
            LATENT_PAINTER_DISCORD_SIZES=SIZES,
            LATENT_PAINTER_DISCORD_MODELS="tiny,analytic",
            LATENT_PAINTER_DISCORD_MAX_IMAGE_BYTES="100000",
        )
        world = World(standin, load_settings(env=env))
        await world.start()
        try:
            yield world
        finally:
            await world.stop()
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
        standin.assert_clean()


def picture(size: tuple[int, int], kind: str = "PNG", **save: object) -> bytes:
    """A picture with some structure (a gradient), encoded as ``kind``."""
    width, height = size
    ramp = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, kind, **save)
    return buf.getvalue()


async def job_count(world: World) -> int:
    return len(await world.bot.queue.list_jobs(limit=1000))


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

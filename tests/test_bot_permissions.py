"""Who may do what, and what the bot may do: the member cap, moderators, the bot's own permissions.

The bot here runs no worker of its own (``[discord] run_worker = false``), so a job stays
queued until a test runs :func:`bot.worker.run_worker` with the scripted runner of
``test_bot_delivery.py``; every member may have two jobs waiting or running.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from tests.discord_standin import StandInAttachment
from tests.discord_standin.world import ALICE_ID, BOB_ID, MOD_ID, OTHER_GENERAL_ID, OTHER_GUILD_ID, Permission
from tests.test_bot_delivery import scripted_world
from tests.test_bot_e2e import CHANNEL_POST, World, new_data_dir, refused
from tests.test_bot_waiting import queued_paint, until

on_world = pytest.mark.asyncio(loop_scope="module")

CAP = 2
FULL = (
    f"You already have {CAP} jobs waiting or running (the limit is {CAP}); try again when one has finished."
)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-permissions"), data_dir)
    async with scripted_world(
        data,
        LATENT_PAINTER_DISCORD_RUN_WORKER="false",
        LATENT_PAINTER_QUEUE_PER_USER_CAP=str(CAP),
    ) as world:
        yield world


def picture(value: int) -> StandInAttachment:
    """A small PNG to attach to /paint (well under the test bot's 4 KB limit)."""
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (value * 40 % 256, 120, 200)).save(buffer, "PNG")
    return StandInAttachment(f"picture-{value}.png", buffer.getvalue())


async def live_jobs(world: World, user_id: int) -> list[int]:
    jobs = await world.bot.queue.list_jobs(user_id=user_id, limit=1000)
    return sorted(job.id for job in jobs if job.is_live)


async def queued(world: World, count: int, user_id: int = ALICE_ID) -> bool:
    return len(await live_jobs(world, user_id)) == count


async def cancel_all(world: World, user_id: int) -> None:
    """Take the member's waiting jobs back, and wait until their replies say so (a clean slate)."""
    jobs = await live_jobs(world, user_id)
    for job_id in jobs:
        await world.bot.queue.cancel(job_id)
    world.bot.watcher.wake()
    for job_id in jobs:
        await until(lambda job_id=job_id: job_id in world.bot.watcher.ledger, f"job {job_id} to be delivered")


# -- the member cap ---------------------------------------------------------------------------


@on_world
async def test_the_queue_full_refusal_reads_as_the_early_cap_check_does(world: World) -> None:
    standin = world.standin
    try:
        for n in range(CAP):
            waiting = await standin.send_slash("paint", {"prompt": f"waiting {n}"}, user=BOB_ID)
            assert (await waiting.response(timeout=5)).callback_type == 5
        # Without a picture the queue itself refuses; with one, the check before the download.
        by_queue = await refused(await standin.send_slash("paint", {"prompt": "one more"}, user=BOB_ID))
        by_check = await refused(
            await standin.send_slash("paint", {"prompt": "one more", "image": picture(1)}, user=BOB_ID)
        )
        assert by_queue == by_check == FULL
    finally:
        await cancel_all(world, BOB_ID)


@on_world
async def test_picture_requests_sent_at_once_beyond_the_cap_are_refused_before_any_download(
    world: World,
) -> None:
    standin = world.standin
    downloads = len(standin.attachment_downloads)
    # Slow downloads: every request arrives while the first pictures are still on their way.
    standin.attachment_delay = 0.5
    try:
        handles = await asyncio.gather(
            *(
                standin.send_slash("paint", {"prompt": f"from a picture {n}", "image": picture(n)})
                for n in range(6)
            )
        )
        answers = [await handle.response(timeout=5) for handle in handles]
        accepted = [a for a in answers if a.callback_type == 5]
        refusals = [a for a in answers if a.callback_type == 4]
        assert len(accepted) == CAP and len(refusals) == 6 - CAP, [a.callback_type for a in answers]
        assert all(a.ephemeral and a.content == FULL for a in refusals)
        await until(lambda: queued(world, CAP), "the accepted requests to be queued")
        assert len(standin.attachment_downloads) - downloads == CAP
        # The places were given back once the jobs were queued: with those cancelled, the
        # member may send pictures again.
        await cancel_all(world, ALICE_ID)
        again = await standin.send_slash("paint", {"prompt": "after the others", "image": picture(9)})
        assert (await again.response(timeout=5)).callback_type == 5
        await until(lambda: queued(world, 1), "the new request to be queued")
        assert len(standin.attachment_downloads) - downloads == CAP + 1
    finally:
        standin.attachment_delay = 0.0
        await cancel_all(world, ALICE_ID)


# -- moderators cancel ------------------------------------------------------------------------


@on_world
async def test_a_moderator_of_the_server_cancels_a_members_job_and_the_reply_says_so(world: World) -> None:
    standin = world.standin
    refusal = f"Only <@{ALICE_ID}>, who asked for it, can cancel this job."
    first, first_id = await queued_paint(world, "something off-topic")
    second, second_id = await queued_paint(world, "something else off-topic")
    try:
        # A plain member is refused as before, and so is the owner of another server.
        plain = await standin.send_component(f"lp:cancel:{first_id}", message=first.original, user=BOB_ID)
        assert await refused(plain) == refusal
        elsewhere = await standin.send_component(
            f"lp:cancel:{first_id}",
            message=first.original,
            user=BOB_ID,
            guild=OTHER_GUILD_ID,
            channel=OTHER_GENERAL_ID,
        )
        assert await refused(elsewhere) == refusal
        assert await live_jobs(world, ALICE_ID) == [first_id, second_id]

        # Manage Server (the mods role): the reply says a moderator cancelled it, and the
        # watcher's delivery keeps saying so.
        click = await standin.send_component(f"lp:cancel:{first_id}", message=first.original, user=MOD_ID)
        answer = await click.response(timeout=5)
        said = "Your painting “something off-topic” was cancelled by a moderator."
        assert answer.callback_type == 7 and answer.content.endswith(f"\n{said}")
        await first.wait_for(lambda r: r.method == "PATCH" and r.ok and r.content == said, timeout=10)
        assert (await world.bot.queue.get(first_id)).status == "cancelled"

        # Manage Messages in the channel is enough too. The reply can no longer be edited by
        # the watcher (its token expired), so the member is told in the channel.
        second.expire()
        mark = standin.mark()
        click = await standin.send_component(
            f"lp:cancel:{second_id}",
            message=second.original,
            user=BOB_ID,
            permissions=Permission.EVERYONE | Permission.MANAGE_MESSAGES,
        )
        said = "Your painting “something else off-topic” was cancelled by a moderator."
        assert (await click.response(timeout=5)).content.endswith(f"\n{said}")
        posted = await standin.wait_for(lambda r: r.route == CHANNEL_POST and r.ok, since=mark, timeout=10)
        assert posted.content == f"<@{ALICE_ID}> {said}"
        assert posted.allowed_mentions["users"] == [ALICE_ID]
        assert await live_jobs(world, ALICE_ID) == []
    finally:
        await cancel_all(world, ALICE_ID)

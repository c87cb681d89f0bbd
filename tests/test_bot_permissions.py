"""Who may do what, and what the bot may do: the member cap, moderators, the bot's own permissions.

The bot here runs no worker of its own (``[discord] run_worker = false``), so a job stays
queued until a test runs :func:`bot.worker.run_worker` with the scripted runner of
``test_bot_delivery.py``; every member may have two jobs waiting or running.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from db.results import result_for_job
from tests.discord_standin import RecordedRequest, StandInAttachment
from tests.discord_standin.world import (
    ALICE_ID,
    BOB_ID,
    BOT_ROLE_ID,
    GENERAL_ID,
    GUILD_ID,
    MOD_ID,
    OTHER_GENERAL_ID,
    OTHER_GUILD_ID,
    Permission,
    StandInMember,
)
from tests.test_bot_delivery import scripted_world
from tests.test_bot_e2e import CHANNEL_POST, World, new_data_dir, refused, result_id
from tests.test_bot_waiting import queued_paint, until, work

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


# -- what the bot may do in the channel ---------------------------------------------------------


@contextlib.contextmanager
def bot_lacking(world: World, permissions: int) -> Iterator[None]:
    """The bot without ``permissions`` in the main server, as a server admin may leave it."""
    standin = world.standin
    guild = standin.guild(GUILD_ID)
    assert guild is not None
    granted = standin.bot_permissions(guild)
    member = StandInMember(standin.bot_user, roles=[BOT_ROLE_ID], permissions=granted & ~permissions)
    guild.members.append(member)
    try:
        yield
    finally:
        guild.members.remove(member)


def cannot_post(missing: str) -> str:
    return (
        f"I can't post results in this channel: I'm missing {missing}. "
        "Ask a server admin to allow it, or use another channel."
    )


async def painted_after_the_token_expired(world: World, prompt: str, lacking: int) -> tuple[int, int]:
    """A job queued while the bot could post, painted once its token expired and the bot lost
    ``lacking``; returns the job id and the stand-in's mark from before it was painted."""
    handle, job_id = await queued_paint(world, prompt)
    handle.expire()  # a long queue: the interaction's 15 minutes are over
    mark = world.standin.mark()
    with bot_lacking(world, lacking):
        assert await work(world) == 1
        await until(lambda: job_id in world.bot.watcher.ledger, "the result to be delivered")
    return job_id, mark


def posts_in(world: World, mark: int, channel_id: int | None) -> list[RecordedRequest]:
    """Message posts since ``mark`` in the channel (None: anywhere but the server's channels)."""
    guild_channels = {f"/channels/{c.id}/messages" for g in world.standin.guilds for c in g.channels}

    def here(r: RecordedRequest) -> bool:
        if r.route != CHANNEL_POST:
            return False
        return r.path == f"/channels/{channel_id}/messages" if channel_id else r.path not in guild_channels

    return world.standin.recorder.matching(here, since=mark)


@on_world
async def test_paint_is_refused_privately_where_the_bot_could_not_post_the_result(world: World) -> None:
    standin = world.standin
    downloads = len(standin.attachment_downloads)
    with bot_lacking(world, Permission.ATTACH_FILES):
        assert await refused(await standin.send_slash("paint", {"prompt": "a lighthouse"})) == cannot_post(
            "Attach Files"
        )
        with_picture = await standin.send_slash("paint", {"prompt": "a lighthouse", "image": picture(4)})
        assert await refused(with_picture) == cannot_post("Attach Files")
    with bot_lacking(world, Permission.SEND_MESSAGES | Permission.EMBED_LINKS):
        text = await refused(await standin.send_slash("paint", {"prompt": "a lighthouse"}))
        assert text == cannot_post("Send Messages and Embed Links")
    assert len(standin.attachment_downloads) == downloads  # refused before the picture was fetched
    assert await live_jobs(world, ALICE_ID) == []


@on_world
async def test_a_result_the_channel_takes_no_files_for_is_posted_without_them(world: World) -> None:
    standin = world.standin
    job_id, mark = await painted_after_the_token_expired(
        world, "with-trail harbour at night", Permission.ATTACH_FILES
    )
    refusal, posted = posts_in(world, mark, GENERAL_ID)
    assert refusal.status == 403 and refusal.files  # with its files
    assert posted.ok and not posted.files
    rid = result_id(posted.content)
    assert posted.content == (
        f"<@{ALICE_ID}> your painting `{rid}` is ready. I'm not allowed to attach files in this "
        f"channel, so they are left out; find result `{rid}` in /history."
    )
    assert posted.allowed_mentions["users"] == [ALICE_ID]
    assert "image" not in posted.embeds[0]  # it would point at a file that is not there
    assert not posts_in(world, mark, None)  # no direct message as well: delivered once
    message = standin.channel_messages("general")[-1]
    assert (await result_for_job(world.bot.db, job_id)).message_id == message.id

    # Its "Repaint with…" is refused, before anything is queued, where files cannot be attached.
    click = await standin.send_component(
        f"lp:repaint:{rid}",
        message=message,
        values=["glow"],
        app_permissions=Permission.BOT & ~Permission.ATTACH_FILES,
    )
    assert await refused(click) == cannot_post("Attach Files")
    assert await live_jobs(world, ALICE_ID) == []


@on_world
async def test_a_result_the_channel_refuses_goes_to_the_member_by_direct_message(world: World) -> None:
    job_id, mark = await painted_after_the_token_expired(world, "a harbour at dawn", Permission.SEND_MESSAGES)
    # Refused with its files, then without them: the channel takes nothing.
    assert [r.status for r in posts_in(world, mark, GENERAL_ID)] == [403, 403]
    [direct] = posts_in(world, mark, None)
    assert direct.ok
    rid = result_id(direct.content)
    assert sorted(direct.file_names) == sorted(
        [f"painting-{rid}.mp4", f"final-{rid}.png", f"heatmap-{rid}.png"]
    )
    assert direct.content == (
        f"Your painting `{rid}` is ready. I'm not allowed to post in [the channel you asked in]"
        f"(https://discord.com/channels/{GUILD_ID}/{GENERAL_ID}), so it comes here. "
        f"You can find result `{rid}` in /history."
    )
    assert not direct.message.get("components")  # the controls act in the server
    # /history links the messages in the result's channel; a direct message is none of them.
    assert (await result_for_job(world.bot.db, job_id)).message_id is None


@on_world
async def test_a_result_nobody_would_take_is_logged_with_its_id(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    alice = world.standin.user(ALICE_ID)
    assert alice is not None
    alice.accepts_dms = False  # her privacy settings
    try:
        with caplog.at_level(logging.WARNING, logger="latent_painter.bot.delivery"):
            job_id, mark = await painted_after_the_token_expired(
                world, "a harbour nobody sees", Permission.SEND_MESSAGES
            )
            await asyncio.sleep(1.5)  # a watcher tick or two: nothing is tried again
    finally:
        alice.accepts_dms = True
    [direct] = posts_in(world, mark, None)
    assert direct.status == 403
    assert [r.status for r in posts_in(world, mark, GENERAL_ID)] == [403, 403]
    result = await result_for_job(world.bot.db, job_id)
    assert result is not None
    [warning] = [
        r for r in caplog.records if r.levelno == logging.WARNING and "not delivered" in r.getMessage()
    ]
    assert f"job {job_id}:" in warning.getMessage() and result.public_id in warning.getMessage()

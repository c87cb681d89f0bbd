"""Who may put what in a gallery, vote for it and take it out, through the real discord.py client.

A repaint or transition of another member's result is that member's picture: it cannot go
in the gallery under someone else's name, and deleting the original takes such entries
down. A hall-of-fame post that fails is said to the member whose action made it (and tried
again on the next vote); /settings warns about a channel the bot cannot post in. Nobody
votes for their own entry. Manage Messages counts in the gallery channel itself, not
wherever /gallery remove was typed. The bot runs the scripted job runner of
``test_bot_delivery`` (real files, no model).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import delete, select

from bot.cogs.gallery import job_of_key
from db.engine import Database
from db.gallery import (
    Borrowed,
    GalleryPost,
    OwnEntryVote,
    VoteOutcome,
    borrowed_source,
    browse,
    count_entries,
    get_settings,
    record_post,
    result_posts,
    toggle_vote,
)
from db.models import GalleryEntry, GalleryVote, Result
from db.queue import JobQueue
from db.results import new_public_id
from tests import db_fixtures
from tests.discord_standin import InteractionHandle, StoredMessage
from tests.discord_standin.world import (
    ALICE_ID,
    BOB_ID,
    BOT_ROLE_ID,
    GALLERY_ID,
    GENERAL_ID,
    GUILD_ID,
    HALL_ID,
    MOD_ID,
    Permission,
    StandInMember,
)
from tests.test_bot_delivery import scripted_world
from tests.test_bot_e2e import CHANNEL_POST, FOLLOWUP, World, custom_ids, delivered, new_data_dir, result_id
from tests.test_bot_gallery_history import (
    clear_gallery,
    paint,
    posts_of,
    reset,
    settings,
    stored_paint,
    told_privately,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")
db_url, database, queue = db_fixtures.db_url, db_fixtures.database, db_fixtures.queue

ONLY_YOURS = "only your own paintings can go in the gallery."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-gallery-abuse"), data_dir)
    async with scripted_world(data) as world:
        yield world


async def repaint(world: World, message: StoredMessage, rid: str, user: int) -> tuple[str, StoredMessage]:
    """``user`` clicks "Repaint with… glow" under ``rid``'s message; the new result and its message."""
    click = await world.standin.send_component(
        f"lp:repaint:{rid}", message=message, user=user, values=["glow"]
    )
    new = result_id((await delivered(click, timeout=30)).content)
    return new, next(m for m in click.messages if f"lp:delete:{new}" in custom_ids(m))


def made_from(owner_id: int, kind: str, **params: str) -> Result:
    """A repaint or transition result row (no job made it), made from the results ``params`` name."""
    return Result(
        public_id=new_public_id(), kind=kind, owner_id=owner_id, guild_id=GUILD_ID, params=params, sizes={}
    )


async def submit(world: World, rid: str, user: int = ALICE_ID) -> InteractionHandle:
    """/gallery submit as ``user``."""
    return await world.standin.send_slash("gallery submit", {"result": rid}, user=user)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for a gateway event to reach the bot's cache."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the bot never saw {what}")


def denied_to_the_bot(permissions: int) -> list[dict]:
    """A channel's permission overwrites that deny the bot's role ``permissions``."""
    return [{"id": str(BOT_ROLE_ID), "type": 0, "allow": "0", "deny": str(permissions)}]


async def overwrite(world: World, channel_id: int, overwrites: list[dict]) -> None:
    """Give a channel these permission overwrites, as Discord tells the bot (CHANNEL_UPDATE).

    The stand-in's REST side knows no overwrites: this changes what the bot sees, not what
    the stand-in lets it do.
    """
    channel = world.standin.guild(GUILD_ID).channel(channel_id)
    await world.standin.dispatch(
        "CHANNEL_UPDATE", channel.payload(GUILD_ID) | {"permission_overwrites": overwrites}
    )
    cached = world.bot.get_guild(GUILD_ID)
    await until(lambda: len(cached.get_channel(channel_id).overwrites) == len(overwrites), "the overwrites")


def private_notes(handle: InteractionHandle) -> list[str]:
    """The texts of the ephemeral follow-ups the bot sent for an interaction so far."""
    return [r.content for r in handle.requests if r.ok and r.route == FOLLOWUP and r.ephemeral and r.content]


# -- 1. someone else's picture under your name ------------------------------------------------------


async def test_a_repaint_of_another_members_result_cannot_go_in_the_gallery(world: World) -> None:
    standin, bot = world.standin, world.bot
    alices, alices_message = await paint(world, "with-trail alice's lighthouse")
    await (await submit(world, alices)).followup(timeout=10)  # in the gallery: Bob may use it
    try:
        bobs, bobs_message = await repaint(world, alices_message, alices, BOB_ID)
        expected = f"That result repaints <@{ALICE_ID}>'s `{alices}`; {ONLY_YOURS}"
        assert await told_privately(await submit(world, bobs, BOB_ID)) == expected
        # The result's own "Add to gallery" button is the same submission.
        click = await standin.send_component(f"lp:submit:{bobs}", message=bobs_message, user=BOB_ID)
        assert await told_privately(click) == expected
        # A repaint of that repaint is still Alice's picture.
        again, _ = await repaint(world, bobs_message, bobs, BOB_ID)
        text = await told_privately(await submit(world, again, BOB_ID))
        assert text == f"That result comes from <@{ALICE_ID}>'s `{alices}`; {ONLY_YOURS}"
        assert [i.result.public_id for i in await browse(bot.db, GUILD_ID)] == [alices]
        assert not posts_of(world, "general", bobs) and not posts_of(world, "general", again)

        # Alice's own repaint of her own painting goes in as any painting of hers.
        hers, _ = await repaint(world, alices_message, alices, ALICE_ID)
        assert (await (await submit(world, hers)).followup(timeout=10)).embeds[0]["title"] == hers

        # Transitions: either end being someone else's is enough to refuse.
        async with bot.db.write() as session:
            mine = stored_paint(BOB_ID, "bob's own", trail_key="tests/bob.trail")
            session.add(mine)
            ends = {"from_trail": "tests/bob.trail", "to_trail": "tests/alice.trail"}
            towards = made_from(BOB_ID, "transition", from_result=mine.public_id, to_result=alices, **ends)
            backwards = made_from(BOB_ID, "transition", from_result=alices, to_result=mine.public_id)
            session.add_all([towards, backwards])
        text = await told_privately(await submit(world, towards.public_id, BOB_ID))
        assert text == f"That result is a transition to <@{ALICE_ID}>'s `{alices}`; {ONLY_YOURS}"
        text = await told_privately(await submit(world, backwards.public_id, BOB_ID))
        assert text == f"That result is a transition from <@{ALICE_ID}>'s `{alices}`; {ONLY_YOURS}"
        assert await count_entries(bot.db, GUILD_ID) == 2
    finally:
        await clear_gallery(world)


async def test_deleting_a_result_takes_down_other_members_repaints_of_it(world: World) -> None:
    standin, bot = world.standin, world.bot
    await settings(world, gallery_channel=GALLERY_ID)
    try:
        alices, alices_message = await paint(world, "with-trail a painting to be deleted")
        await (await submit(world, alices)).followup(timeout=10)
        bobs, _ = await repaint(world, alices_message, alices, BOB_ID)
        hers, _ = await repaint(world, alices_message, alices, ALICE_ID)
        unrelated, _ = await paint(world, "bob's own painting", user=BOB_ID)
        for rid, user in ((hers, ALICE_ID), (unrelated, BOB_ID)):
            await (await submit(world, rid, user)).followup(timeout=10)
        # Bob's repaint went in before repaints were refused: its entry and post are there.
        async with bot.db.write() as session:
            result = await session.scalar(select(Result).where(Result.public_id == bobs))
            entry = GalleryEntry(guild_id=GUILD_ID, result_id=result.id, submitted_by=BOB_ID, votes=0)
            session.add(entry)
        guild = standin.guild(GUILD_ID)
        post = standin.messages.create(
            channel_id=GALLERY_ID,
            guild=guild,
            author=standin.bot_user,
            body={"embeds": [{"title": bobs}]},
            files=[],
            flags=0,
            type=0,
            can_mention_everyone=False,
        )
        assert await record_post(bot.db, entry.id, GALLERY_ID, post.id)

        mark = standin.mark()
        click = await standin.send_component(f"lp:delete:{alices}", message=alices_message)
        assert (await click.response(timeout=5)).callback_type == 6
        await standin.wait_for(
            lambda r: r.method == "DELETE" and r.path.endswith(f"/{post.id}"), since=mark, timeout=10
        )
        assert not posts_of(world, "gallery", bobs) and not posts_of(world, "gallery", alices)
        # Alice's own repaint and Bob's own painting stay.
        assert sorted(i.result.public_id for i in await browse(bot.db, GUILD_ID)) == sorted([hers, unrelated])
        assert posts_of(world, "gallery", hers) and posts_of(world, "gallery", unrelated)

        # The original is gone, but the job that painted it says whose it was.
        text = await told_privately(await submit(world, bobs, BOB_ID))
        assert text == f"That result repaints <@{ALICE_ID}>'s `{alices}`; {ONLY_YOURS}"
        # And a source nothing is left of counts as someone else's.
        async with bot.db.write() as session:
            orphan = made_from(BOB_ID, "paint", from_result="ZZZZZZZZ", trail_key="tests/gone.trail")
            session.add(orphan)
        text = await told_privately(await submit(world, orphan.public_id, BOB_ID))
        assert text == (
            "That result repaints `ZZZZZZZZ`, which was deleted (so I cannot tell whose painting it was); "
            + ONLY_YOURS
        )
    finally:
        await reset(world, "gallery channel")
        await clear_gallery(world)


@pytest.mark.asyncio(loop_scope="function")
async def test_lineage_is_followed_both_ways_on_each_database(database: Database, queue: JobQueue) -> None:
    """Who made what a result comes from, and what was made from a deleted result (SQLite and PostgreSQL)."""
    alice, bob, carol = 1, 2, 3
    await queue.enqueue("paint", {"prompt": "the original"}, user_id=alice, guild_id=10)
    [job] = await queue.list_jobs(user_id=alice)

    def row(owner: int, kind: str = "paint", trail: str | None = None, **params: str) -> Result:
        rid = new_public_id()
        return Result(
            public_id=rid, kind=kind, owner_id=owner, params=params, sizes={}, trail_key=trail or f"t/{rid}"
        )

    original = row(alice, trail=f"jobs/{job.id}/1/trail.safetensors")
    repaint = row(bob, from_result=original.public_id, trail_key=original.trail_key)
    again = row(bob, from_result=repaint.public_id, trail_key=repaint.trail_key)
    # A repaint from before repaints named their source: its trail says where it came from.
    unnamed = row(bob, trail_key=original.trail_key)
    carols = row(carol)
    between = row(carol, "transition", None, from_result=carols.public_id, to_result=again.public_id)
    hers = row(alice, from_result=original.public_id, trail_key=original.trail_key)
    rows = [original, repaint, again, unnamed, carols, between, hers]
    async with database.write() as session:
        session.add_all(rows)
        await session.flush()
        entries = [GalleryEntry(guild_id=10, result_id=r.id, submitted_by=r.owner_id, votes=0) for r in rows]
        session.add_all(entries)
    for n, entry in enumerate(entries):
        assert await record_post(database, entry.id, 500, 9000 + n)

    assert await borrowed_source(database, original.public_id, alice) is None
    assert await borrowed_source(database, hers.public_id, alice) is None
    assert await borrowed_source(database, carols.public_id, carol) is None
    assert await borrowed_source(database, repaint.public_id, bob) == Borrowed(
        original.public_id, alice, "repaints"
    )
    assert await borrowed_source(database, again.public_id, bob) == Borrowed(
        original.public_id, alice, "comes from"
    )
    assert await borrowed_source(database, unnamed.public_id, bob) == Borrowed(
        original.public_id, alice, "repaints"
    )
    assert await borrowed_source(database, between.public_id, carol) == Borrowed(
        again.public_id, bob, "is a transition to"
    )

    # Deleting the original takes down what others made from it, however far down; hers stay.
    posts = await result_posts(database, original.id)
    taken = {original, repaint, again, unnamed, between}
    assert sorted(posts, key=lambda p: p.message_id) == [
        GalleryPost(500, 9000 + n) for n, r in enumerate(rows) if r in taken
    ]
    async with database.read() as session:
        left = (await session.scalars(select(GalleryEntry.result_id))).all()
    assert sorted(left) == sorted(r.id for r in rows if r not in taken - {original})

    # Once its row is gone, the job that painted its trail still says it was Alice's.
    async with database.write() as session:
        await session.execute(delete(Result).where(Result.id == original.id))
    assert await borrowed_source(database, repaint.public_id, bob) == Borrowed(
        original.public_id, None, "repaints"
    )
    found = await borrowed_source(database, repaint.public_id, bob, job_of_key=job_of_key)
    assert found == Borrowed(original.public_id, alice, "repaints")
    assert await borrowed_source(database, hers.public_id, alice, job_of_key=job_of_key) is None


# -- 2. posts the bot cannot make ---------------------------------------------------------------------


async def test_a_failed_hall_of_fame_post_is_told_to_the_member_and_retried(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, _ = await paint(world, "a painting for a locked hall of fame")
    guild = standin.guild(GUILD_ID)
    granted = standin.bot_permissions(guild)
    # The bot lost Send Messages in the hall of fame (as a channel overwrite would do).
    bot_member = StandInMember(
        standin.bot_user, roles=[BOT_ROLE_ID], permissions=granted & ~Permission.SEND_MESSAGES
    )
    guild.members.append(bot_member)
    await settings(world, hall_of_fame_channel=HALL_ID)  # every submission is featured
    try:
        submitted = await submit(world, rid)
        post = await submitted.followup(timeout=10)
        assert post.embeds[0]["title"] == rid and not post.ephemeral  # the gallery post itself
        [note] = await submitted.wait_for(lambda r: r.route == FOLLOWUP and r.ephemeral, timeout=10)
        assert note.content.startswith(f"I cannot post in <#{HALL_ID}>, so {rid} was not featured"), (
            note.content
        )
        assert "ask an admin" in note.content and "Send Messages" in note.content
        assert not posts_of(world, "hall-of-fame", rid)
        [entry] = await browse(bot.db, GUILD_ID)
        assert entry.entry.hall_of_fame_message_id is None  # still to be featured

        # Bob's vote tries again, fails again, and Bob is told too.
        message = next(m for m in submitted.messages if custom_ids(m))
        vote = await standin.send_component(custom_ids(message)[0], message=message, user=BOB_ID)
        await vote.wait_for(
            lambda r: r.route == FOLLOWUP and "I cannot post" in (r.content or ""), timeout=10
        )
        assert any("has 1 now" in text for text in private_notes(vote))

        # Permissions fixed: the next vote features it, once, however many votes follow.
        guild.members.remove(bot_member)
        mark = standin.mark()
        vote = await standin.send_component(custom_ids(message)[0], message=message, user=MOD_ID)
        await standin.wait_for(
            lambda r: r.ok and r.route == CHANNEL_POST and r.params.get("channel_id") == str(HALL_ID),
            since=mark,
            timeout=10,
        )
        for _ in range(2):  # Bob takes his vote back and votes again
            await (
                await standin.send_component(custom_ids(message)[0], message=message, user=BOB_ID)
            ).followup()
        assert len(posts_of(world, "hall-of-fame", rid)) == 1
        assert not [n for n in private_notes(vote) if "cannot post" in n]
    finally:
        if bot_member in guild.members:
            guild.members.remove(bot_member)
        await reset(world, "hall of fame channel")
        await clear_gallery(world)


async def test_settings_warn_about_a_channel_the_bot_cannot_post_in(world: World) -> None:
    standin, bot = world.standin, world.bot

    async def as_mod(**options: object) -> str:
        answer = await (await standin.send_slash("settings", options, user=MOD_ID)).response(timeout=5)
        assert answer.ok and answer.ephemeral
        return answer.content

    # The gallery denies the bot Send Messages and Attach Files, the hall of fame Embed Links.
    await overwrite(world, GALLERY_ID, denied_to_the_bot(Permission.SEND_MESSAGES | Permission.ATTACH_FILES))
    await overwrite(world, HALL_ID, denied_to_the_bot(Permission.EMBED_LINKS))
    try:
        text = await as_mod(gallery_channel=GALLERY_ID)
        assert text == (
            # Without Send Messages, Discord counts Embed Links and Attach Files as missing too.
            "Saved.\nWarning: I am missing Send Messages, Embed Links, Attach Files in the gallery channel "
            f"<#{GALLERY_ID}>: until I have them there, gallery submissions will be refused."
        )
        text = await as_mod(hall_of_fame_channel=HALL_ID)
        assert text.startswith(
            "Saved.\nWarning: I am missing Send Messages, Embed Links, Attach Files in the gallery"
        )
        assert text.endswith(
            f"\nWarning: I am missing Embed Links in the hall of fame channel <#{HALL_ID}>: "
            "until I have them there, entries will not be featured."
        )
        # Saved all the same: the admin may fix the permissions next.
        row = await get_settings(bot.db, GUILD_ID)
        assert (row.gallery_channel_id, row.hall_of_fame_channel_id) == (GALLERY_ID, HALL_ID)

        await overwrite(world, GALLERY_ID, [])
        text = await as_mod()
        assert text.startswith("Nothing changed") and "Embed Links in the hall of fame" in text
        assert "gallery channel" not in text
    finally:
        await overwrite(world, GALLERY_ID, [])
        await overwrite(world, HALL_ID, [])
        await reset(world, "gallery channel", "hall of fame channel")
    assert "Warning" not in await as_mod(hall_of_fame_channel=HALL_ID)
    await reset(world, "hall of fame channel")


# -- 3. votes for one's own entry ----------------------------------------------------------------------


async def test_members_cannot_vote_for_their_own_entries(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, _ = await paint(world, "a painting its maker likes")
    submitted = await submit(world, rid)
    await submitted.followup(timeout=10)
    message = submitted.messages[-1]
    vote_id = custom_ids(message)[0]
    try:
        mark = standin.mark()
        mine = await standin.send_component(vote_id, message=message, user=ALICE_ID)
        assert await told_privately(mine) == "You can't vote for your own entry."
        assert not standin.recorder.matching(lambda r: r.method == "PATCH", since=mark)
        assert standin.messages.get(message.id).components[0]["components"][0]["label"] == "▲ 0"
        theirs = await standin.send_component(vote_id, message=message, user=BOB_ID)
        assert "has 1 now" in (await theirs.followup(timeout=5)).content

        # The database refuses the entry's submitter and its result's maker alike; a vote of
        # theirs from before the rule can still be taken back.
        [item] = await browse(bot.db, GUILD_ID)
        async with bot.db.write() as session:
            made = stored_paint(ALICE_ID, "made by Alice, submitted by Mod")
            session.add(made)
            await session.flush()
            other = GalleryEntry(guild_id=GUILD_ID, result_id=made.id, submitted_by=MOD_ID, votes=1)
            session.add(other)
            await session.flush()
            session.add(GalleryVote(entry_id=other.id, user_id=ALICE_ID))
        for user in (ALICE_ID, MOD_ID):
            with pytest.raises(OwnEntryVote):
                await toggle_vote(bot.db, GUILD_ID, item.entry.id if user == ALICE_ID else other.id, user)
        assert await toggle_vote(bot.db, GUILD_ID, other.id, ALICE_ID) == VoteOutcome(False, 0)
        with pytest.raises(OwnEntryVote):
            await toggle_vote(bot.db, GUILD_ID, other.id, ALICE_ID)
        assert await toggle_vote(bot.db, GUILD_ID, other.id, BOB_ID) == VoteOutcome(True, 1)
    finally:
        await clear_gallery(world)
        async with bot.db.write() as session:
            await session.execute(delete(Result).where(Result.prompt == "made by Alice, submitted by Mod"))


# -- 4. who moderates the gallery ----------------------------------------------------------------------


async def test_manage_messages_counts_in_the_gallery_channel_not_where_the_command_is_typed(
    world: World,
) -> None:
    standin, bot = world.standin, world.bot
    await settings(world, gallery_channel=GALLERY_ID)
    try:
        rid, _ = await paint(world, "a painting a channel moderator wants gone")
        await (await submit(world, rid)).followup(timeout=10)
        assert len(posts_of(world, "gallery", rid)) == 1

        # Bob moderates #general (an overwrite there): not the gallery. Not offered, and refused.
        in_general = {
            "user": BOB_ID,
            "channel": GENERAL_ID,
            "permissions": Permission.EVERYONE | Permission.MANAGE_MESSAGES,
        }
        offered = await (
            await standin.send_autocomplete("gallery remove", {"result": ""}, focused="result", **in_general)
        ).choices()
        assert offered == []
        text = await told_privately(await standin.send_slash("gallery remove", {"result": rid}, **in_general))
        assert text.startswith(f"Only the member who submitted {rid}"), text
        assert [i.result.public_id for i in await browse(bot.db, GUILD_ID)] == [rid]
        assert len(posts_of(world, "gallery", rid)) == 1

        # Given Manage Messages in the gallery channel itself, Bob may, wherever he types it.
        allow = [{"id": str(BOB_ID), "type": 1, "allow": str(Permission.MANAGE_MESSAGES), "deny": "0"}]
        await overwrite(world, GALLERY_ID, allow)
        offered = await (
            await standin.send_autocomplete("gallery remove", {"result": ""}, focused="result", user=BOB_ID)
        ).choices()
        assert [c["value"] for c in offered] == [rid]
        done = await standin.send_slash("gallery remove", {"result": rid}, user=BOB_ID, channel=GENERAL_ID)
        assert (await done.followup(timeout=10)).content == f"{rid} is out of this server's gallery."
        assert not posts_of(world, "gallery", rid) and await count_entries(bot.db, GUILD_ID) == 0
    finally:
        await overwrite(world, GALLERY_ID, [])
        await reset(world, "gallery channel")
        await clear_gallery(world)

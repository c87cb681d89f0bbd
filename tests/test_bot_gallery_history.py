"""Gallery posts, /history links and picking results, through the real discord.py client and the stand-in.

A failed gallery post leaves no entry behind and says why; a deleted result takes its
gallery and hall-of-fame posts with it; ``/gallery remove`` and who may use it; the hall
of fame finds a voted entry however many have more votes; ``/history`` links each result's
message, in servers and in direct messages; a gallery page fits its pictures into the
upload limit; the "Transition from this" form outlives a restart; typed ids that are not
ids are quoted inertly. The bot runs the scripted job runner of ``test_bot_delivery``
(real files, no model): the paintings themselves are not the point here.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from sqlalchemy import delete, update

from bot.text import quote
from bot.views import result_view
from db.gallery import browse, count_entries
from db.models import GalleryEntry, Result
from db.results import new_public_id
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
    OWNER_ID,
    Permission,
    StandInMember,
)
from tests.test_bot_delivery import recorded_message, scripted_world
from tests.test_bot_e2e import World, custom_ids, delivered, new_data_dir, result_id

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-gallery-history"), data_dir)
    async with scripted_world(data) as world:
        # The bot syncs to the test server ([discord] sync_guild); a deployment syncs globally,
        # which is what makes the commands usable in direct messages. Offer them there too.
        world.standin.global_commands.extend(world.standin.guild_commands[GUILD_ID])
        yield world


async def paint(world: World, prompt: str, **envelope: object) -> tuple[str, StoredMessage]:
    """/paint (scripted); returns the result id and the message that delivered it."""
    handle = await world.standin.send_slash("paint", {"prompt": prompt}, **envelope)
    assert (await handle.response(timeout=5)).callback_type == 5
    followup = await delivered(handle, timeout=30)
    rid = result_id(followup.content)
    message = next(m for m in handle.messages if f"lp:delete:{rid}" in custom_ids(m))
    return rid, message


async def settings(world: World, **options: object) -> None:
    """/settings as the moderator; asserts it was accepted."""
    handle = await world.standin.send_slash("settings", options, user=MOD_ID)
    answer = await handle.response(timeout=5)
    assert answer.ok and answer.ephemeral, answer.json


async def reset(world: World, *names: str) -> None:
    for name in names:
        await settings(world, reset=name)


async def told_privately(handle: InteractionHandle) -> str:
    """The text of the bot's ephemeral answer, whether sent at once or after a deferral."""
    answer = await handle.response(timeout=5)
    assert answer.ephemeral, answer.json
    if answer.callback_type == 4:
        return answer.content
    await handle.wait_for(lambda r: r.ok and r.method in ("PATCH", "POST") and r.content, timeout=10)
    original = handle.original
    assert original is not None and original.ephemeral and not original.loading
    return original.content


def posts_of(world: World, channel: str, rid: str) -> list[StoredMessage]:
    """The live posts of a result in a channel (a gallery post's embed title is the result id)."""
    return [m for m in world.standin.channel_messages(channel) if m.embeds and m.embeds[0]["title"] == rid]


def field_of(handle_answer: object, rid: str) -> str:
    embed = handle_answer.embeds[0]  # type: ignore[attr-defined]
    return next(f["value"] for f in embed["fields"] if f["name"] == f"`{rid}`")


# -- /history ---------------------------------------------------------------------------------


async def test_history_links_each_result_message_in_servers_and_direct_messages(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, message = await paint(world, "a lighthouse for the history")
    dm_handle = await standin.send_slash("paint", {"prompt": "painted in private"}, guild=None, user=ALICE_ID)
    assert (await dm_handle.response(timeout=5)).callback_type == 5
    dm_rid = result_id((await delivered(dm_handle, timeout=30)).content)
    dm_message = next(m for m in dm_handle.messages if f"lp:delete:{dm_rid}" in custom_ids(m))
    dm_channel = dm_message.channel_id
    assert await recorded_message(world, rid) == message.id
    assert await recorded_message(world, dm_rid) == dm_message.id

    # In the server: where it was made, and a link that opens the message itself.
    answer = await (await standin.send_slash("history", {})).response(timeout=5)
    in_guild = field_of(answer, rid)
    assert f"in <#{GENERAL_ID}>" in in_guild
    assert f"(https://discord.com/channels/{GUILD_ID}/{GENERAL_ID}/{message.id})" in in_guild
    assert f"(https://discord.com/channels/@me/{dm_channel}/{dm_message.id})" in field_of(answer, dm_rid)
    assert f"<#{dm_channel}>" not in str(answer.embeds)

    # In direct messages a channel mention does not render: links only.
    answer = await (await standin.send_slash("history", {}, guild=None, user=ALICE_ID)).response(timeout=5)
    assert answer.ephemeral and "<#" not in str(answer.embeds)
    assert f"(https://discord.com/channels/{GUILD_ID}/{GENERAL_ID}/{message.id})" in field_of(answer, rid)
    assert f"(https://discord.com/channels/@me/{dm_channel}/{dm_message.id})" in field_of(answer, dm_rid)

    # A result delivered before messages were recorded: what is known (its channel).
    async with bot.db.write() as session:
        await session.execute(
            update(Result).where(Result.public_id.in_([rid, dm_rid])).values(message_id=None)
        )
    answer = await (await standin.send_slash("history", {})).response(timeout=5)
    assert f"in <#{GENERAL_ID}>" in field_of(answer, rid) and "https://" not in field_of(answer, rid)
    answer = await (await standin.send_slash("history", {}, guild=None, user=ALICE_ID)).response(timeout=5)
    assert "<#" not in str(answer.embeds)
    assert f"(https://discord.com/channels/{GUILD_ID}/{GENERAL_ID})" in field_of(answer, rid)
    assert f"(https://discord.com/channels/@me/{dm_channel})" in field_of(answer, dm_rid)


# -- a gallery post that cannot be made ---------------------------------------------------------


async def test_a_failed_gallery_post_leaves_no_entry_and_says_why(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, _ = await paint(world, "a picture for a broken gallery")
    guild = standin.guild(GUILD_ID)
    assert guild is not None
    granted = standin.bot_permissions(guild)
    # The bot's own member, with its permissions overridden (as a channel overwrite would).
    bot_member = StandInMember(standin.bot_user, roles=[BOT_ROLE_ID], permissions=granted)
    guild.members.append(bot_member)
    gallery_channel = guild.channel(GALLERY_ID)
    await settings(world, gallery_channel=GALLERY_ID)
    try:
        # The bot lost Attach Files in the gallery (403), then the channel was deleted (404).
        bot_member.permissions = granted & ~Permission.ATTACH_FILES
        for broken in ("permissions", "deleted"):
            if broken == "deleted":
                bot_member.permissions = granted
                guild.channels.remove(gallery_channel)
            text = await told_privately(await standin.send_slash("gallery submit", {"result": rid}))
            assert text.startswith(f"I cannot post in <#{GALLERY_ID}>"), text
            assert "ask an admin to check" in text and "Attach Files" in text, text
            assert "went wrong" not in text
            # Nothing half-written: no entry, so a retry is not "already in the gallery".
            assert await count_entries(bot.db, GUILD_ID) == 0, broken
            assert not posts_of(world, "general", rid)
        guild.channels.append(gallery_channel)
        guild.channels.sort(key=lambda c: c.position)

        # Fixed: the same submission now goes through.
        done = await standin.send_slash("gallery submit", {"result": rid})
        note = await done.followup(timeout=10)
        assert note.ephemeral and f"{rid} is in the gallery now: <#{GALLERY_ID}>" in note.content
        assert len(posts_of(world, "gallery", rid)) == 1
        assert await count_entries(bot.db, GUILD_ID) == 1
    finally:
        guild.members.remove(bot_member)
        if gallery_channel not in guild.channels:
            guild.channels.append(gallery_channel)
            guild.channels.sort(key=lambda c: c.position)
        await reset(world, "gallery channel")
        await clear_gallery(world)


async def clear_gallery(world: World) -> None:
    """Empty the server's gallery between tests (rows only; posts stay in the stand-in)."""
    async with world.bot.db.write() as session:
        await session.execute(delete(GalleryEntry))


# -- taking entries down ------------------------------------------------------------------------


async def test_deleting_a_result_takes_down_its_gallery_and_hall_of_fame_posts(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, message = await paint(world, "a painting that will be deleted")
    kept, _ = await paint(world, "a painting that stays")
    await settings(world, gallery_channel=GALLERY_ID)
    await settings(world, hall_of_fame_channel=HALL_ID)
    try:
        for each in (rid, kept):
            await (await standin.send_slash("gallery submit", {"result": each})).followup(timeout=10)
        [post] = posts_of(world, "gallery", rid)
        [featured] = posts_of(world, "hall-of-fame", rid)
        # Someone already deleted the hall-of-fame post by hand: that is fine (404 ignored).
        standin.messages.get(featured.id).deleted = True

        mark = standin.mark()
        click = await standin.send_component(f"lp:delete:{rid}", message=message)
        assert (await click.response(timeout=5)).callback_type == 6
        await standin.wait_for(
            lambda r: r.method == "DELETE" and r.path.endswith(f"/{post.id}"), since=mark, timeout=10
        )
        assert standin.messages.get(post.id) is None  # get() answers None for deleted messages
        assert standin.messages.get(message.id) is None
        assert not posts_of(world, "gallery", rid) and not posts_of(world, "hall-of-fame", rid)
        assert [i.result.public_id for i in await browse(bot.db, GUILD_ID)] == [kept]
        # The other entry's posts are untouched, and nothing was reported as an error.
        assert len(posts_of(world, "gallery", kept)) == 1 and len(posts_of(world, "hall-of-fame", kept)) == 1
        assert not [r for r in click.requests if r.route.startswith("POST /webhooks") and r.content]
        failed = standin.recorder.matching(
            lambda r: r.method == "DELETE" and not r.ok and r.status != 404, since=mark
        )
        assert not failed
    finally:
        await reset(world, "gallery channel", "hall of fame channel")
        await clear_gallery(world)


async def test_gallery_remove_is_for_the_submitter_the_maker_and_moderators(world: World) -> None:
    standin, bot = world.standin, world.bot
    rids = [(await paint(world, f"a gallery piece {n}"))[0] for n in range(4)]
    for rid in rids:
        await (await standin.send_slash("gallery submit", {"result": rid})).followup(timeout=10)
    assert all(len(posts_of(world, "general", rid)) == 1 for rid in rids)
    try:
        # Offered to Alice (hers), not to Bob (none of them is his).
        choices = await (
            await standin.send_autocomplete("gallery remove", {"result": ""}, focused="result")
        ).choices()
        assert sorted(c["value"] for c in choices) == sorted(rids)
        bobs = await (
            await standin.send_autocomplete("gallery remove", {"result": ""}, focused="result", user=BOB_ID)
        ).choices()
        assert bobs == []

        refusal = await told_privately(
            await standin.send_slash("gallery remove", {"result": rids[0]}, user=BOB_ID)
        )
        assert refusal.startswith(f"Only the member who submitted {rids[0]}") and "Manage Messages" in refusal
        assert await count_entries(bot.db, GUILD_ID) == 4 and posts_of(world, "general", rids[0])

        removers = [
            {"user": ALICE_ID},  # submitted it and made it
            {"user": MOD_ID},  # Manage Server
            # The server's owner (Manage Messages, where it counts: see test_bot_gallery_abuse).
            {"user": OWNER_ID},
        ]
        for rid, who in zip(rids, removers, strict=False):
            handle = await standin.send_slash("gallery remove", {"result": rid.lower()}, **who)
            assert (await handle.response(timeout=5)).ephemeral
            done = await handle.followup(timeout=10)
            assert done.ephemeral and done.content == f"{rid} is out of this server's gallery.", who
            assert not posts_of(world, "general", rid), who
        assert [i.result.public_id for i in await browse(bot.db, GUILD_ID)] == [rids[3]]
        assert len(posts_of(world, "general", rids[3])) == 1

        gone = await told_privately(await standin.send_slash("gallery remove", {"result": rids[0]}))
        assert gone == f"{rids[0]} is not in this server's gallery."
        # Taken out, it may go in again.
        again = await standin.send_slash("gallery submit", {"result": rids[0]})
        assert (await again.followup(timeout=10)).embeds[0]["title"] == rids[0]
    finally:
        await clear_gallery(world)


# -- the hall of fame by votes ------------------------------------------------------------------


def stored_paint(owner_id: int, prompt: str, **columns: object) -> Result:
    """A paint result row in this guild, written straight to the database (no job made it)."""
    columns.setdefault("public_id", new_public_id())
    return Result(
        kind="paint", owner_id=owner_id, guild_id=GUILD_ID, prompt=prompt, params={}, sizes={}, **columns
    )


async def test_hall_of_fame_features_a_voted_entry_behind_two_hundred_better_ones(world: World) -> None:
    standin, bot = world.standin, world.bot
    rid, _ = await paint(world, "an underdog")
    fillers = []
    async with bot.db.write() as session:
        for n in range(205):
            result = stored_paint(BOB_ID, f"filler {n}")
            session.add(result)
            fillers.append(result)
        await session.flush()
        session.add_all(
            GalleryEntry(guild_id=GUILD_ID, result_id=r.id, submitted_by=BOB_ID, votes=5) for r in fillers
        )
    await settings(world, hall_of_fame_channel=HALL_ID)
    await settings(world, hall_of_fame_votes=1)
    try:
        submitted = await standin.send_slash("gallery submit", {"result": rid})
        await submitted.followup(timeout=10)
        assert not posts_of(world, "hall-of-fame", rid)  # not featured until it has the votes
        post = submitted.messages[-1]
        mark = standin.mark()
        vote = await standin.send_component(custom_ids(post)[0], message=post, user=BOB_ID)
        assert (await vote.response(timeout=5)).callback_type == 7
        assert "has 1 now" in (await vote.followup(timeout=5)).content
        await standin.wait_for(
            lambda r: (
                r.route == "POST /channels/{channel_id}/messages"
                and r.params.get("channel_id") == str(HALL_ID)
            ),
            since=mark,
            timeout=10,
        )
        [featured] = posts_of(world, "hall-of-fame", rid)
        assert featured.attachments[0].filename == f"{rid}.png"
    finally:
        await reset(world, "hall of fame channel", "hall of fame votes")
        await clear_gallery(world)
        async with bot.db.write() as session:
            await session.execute(delete(Result).where(Result.id.in_([r.id for r in fillers])))


# -- /gallery show within the upload limit --------------------------------------------------------


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress (about 3 bytes a pixel), as a detailed painting is."""
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


async def gallery_of_big_pictures(world: World, count: int, side: int = 320) -> list[str]:
    """``count`` of Bob's results in the gallery, each a picture of about ``3 * side**2`` bytes."""
    bot = world.bot
    rows = []
    async with bot.db.write() as session:
        for n in range(count):
            rid = new_public_id()
            key = f"tests/{rid}.png"
            await asyncio.to_thread(bot.store.put_bytes, key, noise_png(side, n))
            result = stored_paint(BOB_ID, f"a detailed painting {n}", public_id=rid, image_key=key)
            session.add(result)
            rows.append(result)
        await session.flush()
        session.add_all(GalleryEntry(guild_id=GUILD_ID, result_id=r.id, submitted_by=BOB_ID) for r in rows)
    return [r.public_id for r in rows]


LIMIT = 1_000_000  # the server's upload limit in these tests: five pictures of 300 KB do not fit


async def test_a_gallery_page_fits_its_pictures_into_the_upload_limit(world: World) -> None:
    standin = world.standin
    rids = await gallery_of_big_pictures(world, 7)
    try:
        handle = await standin.send_slash("gallery show", {}, attachment_size_limit=LIMIT)
        page = await handle.followup(timeout=20)
        assert page.ok and page.ephemeral, page.response
        assert len(page.files) == 5 and sum(len(f.data) for f in page.files) <= LIMIT
        # Made smaller as delivery makes a picture smaller, and still shown by each embed.
        assert all(f.filename.endswith(".jpg") for f in page.files)
        assert [e["image"]["url"] for e in page.embeds] == [f"attachment://{f.filename}" for f in page.files]
        assert "went wrong" not in (page.content or "")

        # The next page, by its button: an edit within the same limit.
        message = handle.messages[-1]
        click = await standin.send_component("lp:gallery:new:2", message=message, attachment_size_limit=LIMIT)
        assert (await click.response(timeout=5)).callback_type == 6
        [edit] = await click.wait_for(lambda r: r.method == "PATCH", timeout=20)
        assert edit.ok, edit.response
        # Two pictures share the limit: each fits its half as it is.
        assert [f.filename for f in edit.files] == [f"{rid}.png" for rid in rids[1::-1]]
        assert "Page 2 of 2" in edit.embeds[-1]["footer"]["text"]
    finally:
        await clear_gallery(world)


async def test_a_gallery_page_refused_as_too_large_comes_without_its_pictures(world: World) -> None:
    standin = world.standin
    rids = await gallery_of_big_pictures(world, 2, side=64)
    # Discord (or a proxy before it) takes less than the bot was told: every upload is refused.
    standin.max_body_bytes = 4000
    try:
        handle = await standin.send_slash("gallery show", {})
        await handle.wait_for(lambda r: r.ok and r.route == FOLLOWUP, timeout=20)
        refused = [r for r in handle.requests if r.status == 413]
        assert refused, "the page with pictures was not even tried"
        page = handle.messages[-1]
        assert page.ephemeral and not page.attachments
        assert [e["title"] for e in page.embeds] == rids[::-1]
        assert all("image" not in e for e in page.embeds)
        assert "The pictures are too large to attach here." in page.embeds[-1]["footer"]["text"]
        assert "went wrong" not in (page.content or "")
    finally:
        standin.max_body_bytes = 64 * 1024 * 1024
        await clear_gallery(world)


FOLLOWUP = "POST /webhooks/{application_id}/{token}"


# -- "Transition from this" ------------------------------------------------------------------------


async def test_the_transition_form_is_answered_after_a_restart(world: World) -> None:
    standin = world.standin
    source, message = await paint(world, "the start of a transition with-trail")
    destination, _ = await paint(world, "the end of a transition with-trail")

    click = await standin.send_component(f"lp:transition:{source}", message=message)
    opened = await click.response(timeout=5)
    assert opened.callback_type == 9
    # Its id names the source, so any bot process can answer it, however late.
    assert opened.message["custom_id"] == f"lp:transition-modal:{source}"

    await world.restart()
    submitted = await click.submit_modal({"destination": destination.lower()})
    answer = await submitted.response(timeout=5)
    assert answer.callback_type == 5 and submitted.delay(answer) < 3.0
    [job] = [j for j in await world.bot.queue.list_jobs(user_id=ALICE_ID) if j.kind == "transition"]
    assert (job.params["from_result"], job.params["to_result"]) == (source, destination)
    await world.bot.queue.cancel(job.id)  # the scripted runner paints no transitions

    # A destination that is no result id is refused privately, quoted as typed.
    again = await standin.send_component(f"lp:transition:{source}", message=message)
    await again.response(timeout=5)
    junk = await again.submit_modal({"destination": "**@everyone**"})
    assert (await told_privately(junk)).startswith("`to`: “\\*\\*@\u200beveryone\\*\\*” is not a result id")


async def test_results_without_a_trail_get_no_repaint_or_transition_controls() -> None:
    def controls(**options: bool) -> list[str]:
        view = result_view("K3F97QXM", **options)
        return [item.custom_id for item in view.children]  # type: ignore[attr-defined]

    assert controls() == [
        "lp:repaint:K3F97QXM",
        "lp:transition:K3F97QXM",
        "lp:submit:K3F97QXM",
        "lp:delete:K3F97QXM",
    ]
    # A transition keeps no trail: no controls that could only refuse.
    assert controls(has_trail=False) == ["lp:submit:K3F97QXM", "lp:delete:K3F97QXM"]
    assert controls(has_trail=False, in_guild=False) == ["lp:delete:K3F97QXM"]


# -- what members typed, in refusals ---------------------------------------------------------------


async def test_refusals_quote_what_was_typed_and_say_what_can_be_picked(world: World) -> None:
    standin, bot = world.standin, world.bot
    typed = "<@&1300000000000000111> **x**"
    text = await told_privately(await standin.send_slash("gallery submit", {"result": typed}))
    assert text.startswith(f"“{quote(typed)}” is not a result id; ids are 8 letters and digits")
    assert "'" not in text and "**x**" not in text
    text = await told_privately(await standin.send_slash("gallery remove", {"result": "@everyone"}))
    assert text.startswith("“@\u200beveryone” is not a result id")
    text = await told_privately(
        await standin.send_slash("transition", {"from": "||y|| `x`", "to": "YYYYYYYY"})
    )
    assert text.startswith("`from`: “\\|\\|y\\|\\| \\`x\\`” is not a result id")

    # Unknown ids: the gallery is offered where there is one, not in direct messages.
    text = await told_privately(
        await standin.send_slash("transition", {"from": "ZZZZZZZZ", "to": "YYYYYYYY"})
    )
    assert text == (
        "`from`: no result you can use has that id. "
        "Pick one of yours (see /history) or one from this server's gallery."
    )
    text = await told_privately(
        await standin.send_slash("transition", {"from": "ZZZZZZZZ", "to": "YYYYYYYY"}, guild=None)
    )
    assert text == "`from`: no result you can use has that id. Pick one of yours (see /history)."

    # A painting made without a model next to a model's: said as it is, not as two VAEs.
    rids = []
    async with bot.db.write() as session:
        for model_id, vae_id in (("analytic", ""), ("tiny", "vae:tiny")):
            made = {"model_id": model_id, "vae_id": vae_id, "trail_key": "tests/scripted.trail"}
            result = stored_paint(ALICE_ID, f"made by {model_id}", **made)
            session.add(result)
            rids.append(result.public_id)
    painted, modelled = rids
    try:
        text = await told_privately(await standin.send_slash("transition", {"from": modelled, "to": painted}))
        assert text.startswith(f"{painted} was painted without a model"), text
        assert "can only transition to another" in text and "VAEs differ" not in text
    finally:
        async with bot.db.write() as session:
            await session.execute(delete(Result).where(Result.public_id.in_(rids)))

"""Results (public ids, history, who may see what) and the gallery (one vote per member, settings)."""

from __future__ import annotations

import pytest

from db import gallery
from db.engine import Database
from db.gallery import EntryNotFound, GalleryError
from db.models import Result
from db.params import EFFECTS, FORMATS, SCHEDULERS
from db.queue import JobQueue
from db.results import (
    ResultNotFound,
    get_result,
    history,
    list_results,
    new_public_id,
    normalize_public_id,
    result_for_job,
    set_visibility,
)
from tests import db_fixtures
from tests.test_queue_api import new_result

db_url, database, queue = db_fixtures.db_url, db_fixtures.database, db_fixtures.queue


async def make_result(queue: JobQueue, user_id: int, guild_id: int | None = 10, prompt: str = "p") -> Result:
    await queue.enqueue("paint", {"prompt": prompt}, user_id=user_id, guild_id=guild_id)
    lease = await queue.claim("w")
    return await queue.finish(lease, new_result(prompt=prompt))


def test_public_ids_are_short_and_forgiving_to_type() -> None:
    ids = {new_public_id() for _ in range(500)}
    assert len(ids) == 500 and all(len(i) == 8 and normalize_public_id(i) == i for i in ids)
    assert normalize_public_id(" k3f9-7qxm ") == "K3F97QXM"
    assert normalize_public_id("O1IL-abcd") == "0111ABCD"  # look-alikes read as digits
    for bad in ("", "K3F9", "K3F97QXMZ", "K3F9*QXM", "UUUUUUUU"):
        with pytest.raises(ValueError, match="is not a result id"):
            normalize_public_id(bad)


def test_db_lists_match_the_configuration_choices() -> None:
    from bot import config

    assert (EFFECTS, SCHEDULERS, FORMATS) == (config.EFFECTS, config.SCHEDULERS, config.FORMATS)


async def test_results_history_and_visibility(queue: JobQueue, database: Database) -> None:
    mine = [await make_result(queue, user_id=1, prompt=f"mine {i}") for i in range(3)]
    theirs = await make_result(queue, user_id=2, prompt="theirs")
    page = await history(database, 1, page=1, per_page=2)
    assert [r.prompt for r in page.items] == ["mine 2", "mine 1"] and (page.pages, page.total) == (2, 3)
    assert [r.prompt for r in (await history(database, 1, page=2, per_page=2)).items] == ["mine 0"]
    assert [r.owner_id for r in await list_results(database, user_id=2)] == [2]
    assert (await result_for_job(database, mine[0].job_id)).id == mine[0].id

    # Private by default: the owner sees it, another member of the guild does not.
    assert (await get_result(database, theirs.public_id, viewer_id=2, guild_id=10)).id == theirs.id
    with pytest.raises(ResultNotFound, match=f"no result with id {theirs.public_id}"):
        await get_result(database, theirs.public_id, viewer_id=1, guild_id=10)
    await set_visibility(database, theirs.public_id, 2, "guild")
    assert (await get_result(database, theirs.public_id, viewer_id=1, guild_id=10)).id == theirs.id
    with pytest.raises(ResultNotFound):
        await get_result(database, theirs.public_id, viewer_id=1, guild_id=99)
    with pytest.raises(ResultNotFound):
        await set_visibility(database, theirs.public_id, 1, "public")  # not the owner
    with pytest.raises(ResultNotFound, match="no result with id 00000000"):
        await get_result(database, "0000-0000")
    with pytest.raises(ValueError, match="is not a result id"):
        await get_result(database, "nope")


async def test_gallery_submission_votes_and_order(queue: JobQueue, database: Database) -> None:
    first = await make_result(queue, user_id=1, prompt="first")
    second = await make_result(queue, user_id=2, prompt="second")
    entry1 = await gallery.submit(database, 10, first.public_id, 1)
    entry2 = await gallery.submit(database, 10, second.public_id.lower(), 2)
    with pytest.raises(GalleryError, match="already in this server's gallery"):
        await gallery.submit(database, 10, first.public_id, 1)
    with pytest.raises(ResultNotFound, match="no result of yours"):
        await gallery.submit(database, 10, second.public_id, 1)

    # In the gallery, the private result is visible to the guild.
    assert (await get_result(database, first.public_id, viewer_id=3, guild_id=10)).id == first.id

    assert await gallery.toggle_vote(database, 10, entry1.id, 7) == gallery.VoteOutcome(True, 1)
    assert await gallery.toggle_vote(database, 10, entry1.id, 8) == gallery.VoteOutcome(True, 2)
    assert await gallery.toggle_vote(database, 10, entry1.id, 7) == gallery.VoteOutcome(False, 1)
    assert await gallery.toggle_vote(database, 10, entry1.id, 7) == gallery.VoteOutcome(True, 2)
    with pytest.raises(EntryNotFound):
        await gallery.toggle_vote(database, 11, entry1.id, 7)  # another guild's entry

    top = await gallery.browse(database, 10, order="top")
    assert [item.result.prompt for item in top] == ["first", "second"]
    new = await gallery.browse(database, 10, order="new")
    assert [item.entry.id for item in new] == [entry2.id, entry1.id]
    assert await gallery.count_entries(database, 10) == 2

    assert await gallery.claim_hall_of_fame(database, entry1.id, 555) is True
    assert await gallery.claim_hall_of_fame(database, entry1.id, 556) is False

    with pytest.raises(GalleryError, match="only the member who submitted it"):
        await gallery.remove(database, 10, entry1.id, 2)
    await gallery.remove(database, 10, entry1.id, 2, is_admin=True)
    assert [item.entry.id for item in await gallery.browse(database, 10)] == [entry2.id]


async def test_guild_settings(database: Database) -> None:
    defaults = await gallery.get_settings(database, 10)
    assert defaults.allowed_channel_ids == [] and defaults.gallery_channel_id is None
    saved = await gallery.update_settings(
        database, 10, updated_by=1, allowed_channel_ids=[5, 3, 5], gallery_channel_id=77, max_steps=40
    )
    assert saved.allowed_channel_ids == [3, 5]
    again = await gallery.get_settings(database, 10)
    assert (again.allowed_channel_ids, again.gallery_channel_id, again.max_steps) == ([3, 5], 77, 40)
    await gallery.update_settings(database, 10, updated_by=1, gallery_channel_id=None)
    assert (await gallery.get_settings(database, 10)).gallery_channel_id is None
    with pytest.raises(GalleryError, match="max_steps must be from 1 to 500"):
        await gallery.update_settings(database, 10, updated_by=1, max_steps=9000)
    with pytest.raises(GalleryError, match="unknown guild setting 'colour'"):
        await gallery.update_settings(database, 10, updated_by=1, colour="red")


async def test_flagged_results_policy(database: Database) -> None:
    saved = await gallery.update_settings(database, 11, updated_by=1, max_steps=30)
    assert (await gallery.get_settings(database, 11)).flagged_results == "refuse"
    assert saved.max_steps == 30
    await gallery.update_settings(database, 11, updated_by=1, flagged_results="spoiler")
    assert (await gallery.get_settings(database, 11)).flagged_results == "spoiler"
    with pytest.raises(GalleryError, match="flagged_results must be one of refuse, spoiler"):
        await gallery.update_settings(database, 11, updated_by=1, flagged_results="show")
    assert (await gallery.get_settings(database, 11)).flagged_results == "spoiler"


async def test_owner_deletes_a_result_with_its_gallery_entry(queue: JobQueue, database: Database) -> None:
    from db.results import delete_result

    mine = await make_result(queue, user_id=1, prompt="mine")
    entry = await gallery.submit(database, 10, mine.public_id, 1)
    await gallery.toggle_vote(database, 10, entry.id, 7)
    with pytest.raises(ResultNotFound, match="of yours"):
        await delete_result(database, mine.public_id, 2)
    assert (await get_result(database, mine.public_id)).id == mine.id
    keys = await delete_result(database, mine.public_id.lower(), 1)
    assert sorted(keys) == ["jobs/1/1/image.png", "jobs/1/1/video.mp4"]
    with pytest.raises(ResultNotFound):
        await get_result(database, mine.public_id)
    assert list(await gallery.browse(database, 10)) == []
    with pytest.raises(ResultNotFound):
        await delete_result(database, mine.public_id, 1)


async def test_gallery_posts_are_recorded_and_listed_for_the_result(
    queue: JobQueue, database: Database
) -> None:
    mine = await make_result(queue, user_id=1, prompt="mine")
    entry = await gallery.submit(database, 10, mine.public_id, 1)
    other_guild = await gallery.submit(database, 11, mine.public_id, 1)
    assert await gallery.result_posts(database, mine.id) == []  # nothing posted yet
    assert await gallery.record_post(database, entry.id, 100, 2**62 + 1) is True
    assert await gallery.claim_hall_of_fame(database, entry.id, 2**62 + 2, 200) is True
    assert await gallery.record_post(database, other_guild.id, 300, 3) is True
    assert sorted((p.channel_id, p.message_id) for p in await gallery.result_posts(database, mine.id)) == [
        (100, 2**62 + 1),
        (200, 2**62 + 2),
        (300, 3),
    ]
    item = await gallery.get_item(database, 10, entry.id)
    assert item.result.public_id == mine.public_id
    assert gallery.posts_of(item.entry) == [
        gallery.GalleryPost(100, 2**62 + 1),
        gallery.GalleryPost(200, 2**62 + 2),
    ]
    with pytest.raises(EntryNotFound):
        await gallery.get_item(database, 11, entry.id)  # another guild's id

    # A post made for an entry that is gone meanwhile is reported, to be taken down again.
    await gallery.discard_entry(database, other_guild.id)
    assert await gallery.record_post(database, other_guild.id, 300, 4) is False
    assert await gallery.claim_hall_of_fame(database, other_guild.id, 5, 200) is False
    assert await gallery.count_entries(database, 11) == 0


async def test_who_may_take_a_result_out_of_the_gallery(queue: JobQueue, database: Database) -> None:
    mine = await make_result(queue, user_id=1, prompt="mine")
    entry = await gallery.submit(database, 10, mine.public_id, 1)
    await gallery.record_post(database, entry.id, 100, 7)
    with pytest.raises(GalleryError, match="Manage Messages or Manage Server") as refused:
        await gallery.remove_result(database, 10, mine.public_id, 2)
    assert not isinstance(refused.value, EntryNotFound)
    with pytest.raises(EntryNotFound, match=f"{mine.public_id} is not in this server's gallery"):
        await gallery.remove_result(database, 11, mine.public_id, 1)
    with pytest.raises(ValueError, match="is not a result id"):
        await gallery.remove_result(database, 10, "nope", 1)
    assert await gallery.count_entries(database, 10) == 1

    removed = await gallery.remove_result(database, 10, mine.public_id.lower(), 2, moderator=True)
    assert removed.entry.id == entry.id and gallery.posts_of(removed.entry) == [gallery.GalleryPost(100, 7)]
    assert await gallery.count_entries(database, 10) == 0
    # An entry submitted by someone else (as an older bot allowed): its submitter and the
    # result's owner may each remove it.
    from db.models import GalleryEntry

    for remover in (3, 1):
        async with database.write() as session:
            session.add(GalleryEntry(guild_id=10, result_id=mine.id, submitted_by=3, votes=0))
        with pytest.raises(GalleryError, match="only the member who submitted"):
            await gallery.remove_result(database, 10, mine.public_id, 2)
        assert (await gallery.remove_result(database, 10, mine.public_id, remover)).entry.submitted_by == 3
        assert await gallery.count_entries(database, 10) == 0


async def test_a_result_remembers_the_message_that_delivered_it(queue: JobQueue, database: Database) -> None:
    from db.results import set_result_message

    mine = await make_result(queue, user_id=1)
    assert mine.message_id is None
    await set_result_message(database, mine.id, 2**63 - 1)  # the largest snowflake fits
    assert (await get_result(database, mine.public_id)).message_id == 2**63 - 1

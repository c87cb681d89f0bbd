"""While a member waits: the Cancel button, the reply's last word before its token expires,
and plain refusals on result buttons for members who do not own the result.

The bot here runs no worker of its own (``[discord] run_worker = false``), so a job stays
queued until a test runs :func:`bot.worker.run_worker` with the scripted runner of
``test_bot_delivery.py`` — which makes "queued" and "running" states a test can rely on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import update

from bot.progress import FAREWELL
from bot.worker import run_worker
from db.models import Job, utcnow
from db.results import delete_result
from tests.discord_standin.world import ALICE_ID, BOB_ID
from tests.test_bot_delivery import scripted_runner, scripted_world
from tests.test_bot_e2e import CHANNEL_POST, FOLLOWUP, World, custom_ids, delivered, new_data_dir, result_id

on_world = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> AsyncIterator[World]:
    data = new_data_dir(tmp_path_factory.mktemp("bot-waiting"), data_dir)
    async with scripted_world(
        data,
        LATENT_PAINTER_DISCORD_RUN_WORKER="false",
        LATENT_PAINTER_QUEUE_PER_USER_CAP="1",
    ) as world:
        yield world


def work(world: World) -> asyncio.Task[int]:
    """A worker painting with the scripted runner until the queue is empty; returns jobs handled."""
    return asyncio.create_task(
        run_worker(world.settings, runner=scripted_runner, exit_when_idle=True, handle_signals=False)
    )


async def until(check: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Wait for ``check()`` (sync or async) to be true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def queued_paint(world: World, prompt: str) -> tuple[object, int]:
    """/paint as Alice; returns the handle and the job id once the reply shows a Cancel button."""
    handle = await world.standin.send_slash("paint", {"prompt": prompt})
    assert (await handle.response(timeout=5)).callback_type == 5

    def cancel_shown() -> bool:
        original = handle.original  # type: ignore[attr-defined]
        return original is not None and any(c.startswith("lp:cancel:") for c in custom_ids(original))

    await until(cancel_shown, "the progress reply's Cancel button")
    [custom_id] = custom_ids(handle.original)  # type: ignore[attr-defined]
    return handle, int(custom_id.rsplit(":", 1)[1])


async def job(world: World, job_id: int) -> Job:
    return await world.bot.queue.get(job_id)


# -- Cancel ---------------------------------------------------------------------------------


@on_world
async def test_the_requester_cancels_a_queued_job_which_frees_their_place(world: World) -> None:
    standin = world.standin
    handle, job_id = await queued_paint(world, "a wrong prompt")
    original = handle.original  # type: ignore[attr-defined]
    assert original.components[0]["components"][0]["label"] == "Cancel"
    full = await standin.send_slash("paint", {"prompt": "the right prompt"})
    assert (await full.response(timeout=5)).callback_type == 4  # per-user cap of 1 reached

    # Someone else's click is refused, naming who can; the job stays queued.
    other = await standin.send_component(f"lp:cancel:{job_id}", message=original, user=BOB_ID)
    refusal = await other.response(timeout=5)
    assert refusal.callback_type == 4 and refusal.ephemeral
    assert refusal.content == f"Only <@{ALICE_ID}>, who asked for it, can cancel this job."
    assert (await job(world, job_id)).status == "queued"

    # The button is persistent: it works after a restart.
    await world.restart()
    mark = standin.mark()
    click = await standin.send_component(f"lp:cancel:{job_id}", message=original, user=ALICE_ID)
    answer = await click.response(timeout=5)
    assert answer.callback_type == 7  # the reply itself is edited
    assert (
        answer.content.endswith("\nYour painting “a wrong prompt” was cancelled.")
        and not answer.json["data"]["components"]
    )
    cancelled = await job(world, job_id)
    assert cancelled.status == "cancelled" and cancelled.started_at is None
    # The watcher's delivery says the same in the reply, and posts nothing: she knows.
    await handle.wait_for(  # type: ignore[attr-defined]
        lambda r: r.method == "PATCH" and r.content == "Your painting “a wrong prompt” was cancelled.",
        timeout=10,
    )
    await told_only_in_the_reply(world, handle, job_id, mark)

    # The place is free again: a new /paint is accepted, and only it is painted.
    retry = await standin.send_slash("paint", {"prompt": "the right prompt"})
    assert (await retry.response(timeout=5)).callback_type == 5
    assert await work(world) == 1
    assert result_id((await delivered(retry, timeout=30)).content)
    assert (await job(world, job_id)).started_at is None


@on_world
async def test_the_requester_cancels_a_running_job_at_its_next_step(world: World) -> None:
    handle, job_id = await queued_paint(world, "slow and unwanted")
    mark = world.standin.mark()
    worker = work(world)
    await until(lambda: _status(world, job_id, "running"), "the job to start")
    started = time.monotonic()
    click = await world.standin.send_component(
        f"lp:cancel:{job_id}",
        message=handle.original,  # type: ignore[attr-defined]
    )
    answer = await click.response(timeout=5)
    assert answer.callback_type == 7 and "Cancelling: the job stops at its next step." in answer.content
    await until(lambda: _status(world, job_id, "cancelled"), "the worker to stop the job")
    # The scripted runner takes 3 s in all; it stopped at its next frame (0.5 s apart).
    assert time.monotonic() - started < 2.5
    assert await asyncio.wait_for(worker, 30) == 1
    await told_only_in_the_reply(world, handle, job_id, mark)
    original = handle.original  # type: ignore[attr-defined]
    assert original.content == "Your painting “slow and unwanted” was cancelled."
    assert not original.components and not original.embeds


@on_world
async def test_a_cancellation_the_reply_cannot_show_is_posted_mentioning_the_requester(world: World) -> None:
    """Cancelled by an operator (``latent-painter cancel``) when the reply cannot say so."""
    standin = world.standin
    expected = f"<@{ALICE_ID}> Your painting “{{}}” was cancelled."

    # The reply's token has expired: a channel message, as the reply's last edit promised.
    handle, job_id = await queued_paint(world, "cancelled after the token expired")
    handle.expire()  # type: ignore[attr-defined]
    mark = standin.mark()
    await world.bot.queue.cancel(job_id)
    world.bot.watcher.wake()
    posted = await standin.wait_for(lambda r: r.route == CHANNEL_POST, since=mark, timeout=10)
    assert posted.content == expected.format("cancelled after the token expired")
    assert standin.messages.get(int(posted.response["id"])).mentions.users == (ALICE_ID,)  # type: ignore[union-attr,index]

    # The reply was deleted (a moderator, say): the news goes to the channel all the same.
    handle, job_id = await queued_paint(world, "cancelled after the reply was deleted")
    handle.original.deleted = True  # type: ignore[attr-defined]
    mark = standin.mark()
    await world.bot.queue.cancel(job_id)
    world.bot.watcher.wake()
    posted = await standin.wait_for(
        lambda r: r.route in (FOLLOWUP, CHANNEL_POST) and r.method == "POST", since=mark, timeout=10
    )
    assert posted.ok and posted.content == expected.format("cancelled after the reply was deleted")


@on_world
async def test_a_prompt_cannot_reverse_the_bots_own_words_around_it(world: World) -> None:
    """A right-to-left override in a prompt is left out wherever the bot quotes the prompt."""
    handle, job_id = await queued_paint(world, "a cat \u202eyrtnuoc eht ni esuoh")
    original = handle.original  # type: ignore[attr-defined]
    assert original.content.startswith("**Painting** a cat yrtnuoc eht ni esuoh\n")
    click = await world.standin.send_component(f"lp:cancel:{job_id}", message=original)
    told = "Your painting “a cat yrtnuoc eht ni esuoh” was cancelled."
    assert (await click.response(timeout=5)).content.endswith(f"\n{told}")
    await until(lambda: job_id in world.bot.watcher.ledger, "the cancellation to be delivered")
    assert handle.original.content == told  # type: ignore[attr-defined]


async def told_only_in_the_reply(world: World, handle: object, job_id: int, mark: int) -> None:
    """Wait for the cancelled job's delivery; it edited the reply and posted nothing."""
    await until(lambda: job_id in world.bot.watcher.ledger, "the cancellation to be delivered")
    posted = world.standin.recorder.matching(lambda r: r.route in (FOLLOWUP, CHANNEL_POST), since=mark)
    assert not posted, [r.content for r in posted]
    original = handle.original  # type: ignore[attr-defined]
    assert original.content.endswith(" was cancelled.") and not original.mentions.users


async def _status(world: World, job_id: int, status: str) -> bool:
    return (await job(world, job_id)).status == status


@on_world
async def test_cancel_after_the_job_finished_says_so_and_drops_the_button(world: World) -> None:
    standin = world.standin
    # Delivered in place: the reply loses its button with the delivery.
    handle, job_id = await queued_paint(world, "a finished job")
    assert await work(world) == 1
    await delivered(handle, timeout=30)
    await until(lambda: not handle.original.components, "the Cancel button to go")  # type: ignore[attr-defined]

    # Delivered in the channel (the token expired): the reply keeps its button, which still
    # answers, since a click brings its own token.
    mark = standin.mark()
    handle, job_id = await queued_paint(world, "finished after the token expired")
    handle.expire()  # type: ignore[attr-defined]
    assert await work(world) == 1
    await standin.wait_for(lambda r: r.route == CHANNEL_POST and bool(r.files), since=mark, timeout=30)
    original = handle.original  # type: ignore[attr-defined]
    assert custom_ids(original) == [f"lp:cancel:{job_id}"]
    click = await standin.send_component(f"lp:cancel:{job_id}", message=original)
    assert (await click.response(timeout=5)).callback_type == 7
    note = await click.followup(timeout=5)
    expected = (
        "Your painting “finished after the token expired” cannot be cancelled: it has finished already."
    )
    assert note.ephemeral and note.content == expected
    assert not handle.original.components  # type: ignore[attr-defined]
    assert (await job(world, job_id)).status == "done"


# -- the reply's last edit before its token expires --------------------------------------------


@on_world
async def test_the_reply_says_where_the_result_will_go_before_its_token_expires(world: World) -> None:
    standin = world.standin
    handle, job_id = await queued_paint(world, "a long wait")
    assert not any(FAREWELL in r.content for r in handle.requests if r.method == "PATCH")  # type: ignore[attr-defined]
    # As if the job had waited 14 minutes: the bot stops using the token in 30 s.
    async with world.bot.db.write() as session:
        await session.execute(
            update(Job).where(Job.id == job_id).values(token_expires_at=utcnow() + timedelta(seconds=30))
        )
    world.bot.watcher.wake()
    [last] = await handle.wait_for(  # type: ignore[attr-defined]
        lambda r: r.method == "PATCH" and r.ok and FAREWELL in r.content, timeout=10
    )
    assert last.content.startswith("**Painting** a long wait\nQueued")
    original = handle.original  # type: ignore[attr-defined]
    assert original.content.endswith(FAREWELL)
    assert custom_ids(original) == [f"lp:cancel:{job_id}"]  # still works once the token is gone

    mark = standin.mark()
    handle.expire()  # type: ignore[attr-defined]
    assert await work(world) == 1
    posted = await standin.wait_for(
        lambda r: r.route == CHANNEL_POST and bool(r.files), since=mark, timeout=30
    )
    assert posted.content.startswith(f"<@{ALICE_ID}> your painting")
    assert handle.original.content.endswith(FAREWELL)  # type: ignore[attr-defined]


# -- result buttons for members who do not own the result ------------------------------------


@on_world
async def test_result_buttons_refuse_other_members_plainly_and_before_the_modal(world: World) -> None:
    standin = world.standin
    handle, _ = await queued_paint(world, "alice's own picture with-trail")
    assert await work(world) == 1
    followup = await delivered(handle, timeout=30)
    rid = result_id(followup.content)
    message = next(m for m in standin.messages.all() if f"lp:repaint:{rid}" in custom_ids(m))

    repaint = await standin.send_component(f"lp:repaint:{rid}", message=message, values=["glow"], user=BOB_ID)
    refusal = await repaint.response(timeout=5)
    assert refusal.callback_type == 4 and refusal.ephemeral
    assert refusal.content == (
        f"Only <@{ALICE_ID}> can repaint this result; it is private (not in this server's gallery)."
    )
    assert refusal.json["data"]["allowed_mentions"]["parse"] == []

    # No modal: Bob is told before he types a destination.
    transition = await standin.send_component(f"lp:transition:{rid}", message=message, user=BOB_ID)
    refusal = await transition.response(timeout=5)
    assert refusal.callback_type == 4 and refusal.ephemeral
    assert refusal.content.startswith(f"Only <@{ALICE_ID}> can transition from this result;")

    # Alice may use it: she gets the form asking for the destination.
    own = await standin.send_component(f"lp:transition:{rid}", message=message, user=ALICE_ID)
    answer = await own.response(timeout=5)
    assert answer.callback_type == 9 and answer.message["custom_id"] == f"lp:transition-modal:{rid}"

    # A result deleted elsewhere (its message stays): said plainly, to its owner too.
    await delete_result(world.bot.db, rid, ALICE_ID)
    for user in (ALICE_ID, BOB_ID):
        gone = await standin.send_component(f"lp:repaint:{rid}", message=message, values=["fade"], user=user)
        assert (await gone.response(timeout=5)).content == f"That result ({rid}) was deleted."
    gone = await standin.send_component(f"lp:transition:{rid}", message=message, user=BOB_ID)
    assert (await gone.response(timeout=5)).content == f"That result ({rid}) was deleted."


async def test_the_step_count_shown_is_the_painters_own(world: World) -> None:
    """An img2img run takes steps × strength steps: the reply counts those, not the steps asked for."""
    bot = world.bot
    job = (await bot.queue.enqueue("paint", {"prompt": "from a photo", "steps": 30}, user_id=BOB_ID)).job
    try:
        lease = await bot.queue.claim("test-worker")
        assert lease is not None and lease.job_id == job.id
        await bot.queue.progress(lease, 3, 0, 12)  # what the runner reports: step 3 of the painter's 12
        running = await bot.queue.get(job.id)
        # (An ETA follows once some job has finished.)
        assert (await bot.watcher.progress.status(running)).startswith("Generating: step 3/12.")
    finally:
        await bot.queue.cancel(job.id)

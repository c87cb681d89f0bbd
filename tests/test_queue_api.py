"""The queue API against real SQLite and PostgreSQL: each state change, fairness, limits, recovery."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from db.engine import Database
from db.models import Job, Result, utcnow
from db.queue import (
    MODERATOR_CANCEL,
    STALE_ERROR,
    JobNotFound,
    JobQueue,
    LeaseLost,
    QueueFull,
    QueuePolicy,
)
from db.results import NewResult
from tests import db_fixtures

db_url, database, queue = db_fixtures.db_url, db_fixtures.database, db_fixtures.queue


def paint(prompt: str = "a lighthouse") -> dict:
    return {"prompt": prompt}


def new_result(**fields) -> NewResult:
    return NewResult(
        fields={"prompt": "a lighthouse", "seed": 1, "model_id": "m", "vae_id": "v", **fields},
        artifact_keys={"video": "jobs/1/1/video.mp4", "image": "jobs/1/1/image.png"},
        sizes={"video": 10, "image": 5},
    )


async def count(db: Database, model=Job) -> int:
    async with db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_claim_runs_jobs_in_order_and_finish_writes_one_result(queue: JobQueue) -> None:
    first = (await queue.enqueue("paint", paint("one"), user_id=1)).job
    second = (await queue.enqueue("paint", paint("two"), user_id=1)).job
    lease = await queue.claim("w1")
    assert lease is not None and lease.job_id == first.id and lease.attempt == 1
    assert lease.job.status == "running" and lease.job.worker_id == "w1"
    result = await queue.finish(lease, new_result())
    assert result.job_id == first.id and result.owner_id == 1
    assert result.video_key == "jobs/1/1/video.mp4" and result.sizes == {"video": 10, "image": 5}
    job = await queue.get(first.id)
    assert job.status == "done" and job.finished_at is not None
    # A finished lease cannot finish again: no second result row.
    with pytest.raises(LeaseLost):
        await queue.finish(lease, new_result())
    assert await count(queue.db, Result) == 1
    assert (await queue.claim("w1")).job_id == second.id
    assert await queue.claim("w1") is None


async def test_round_robin_across_users_then_priority_then_age(queue: JobQueue) -> None:
    queue.policy = QueuePolicy(per_user_cap=10)
    a = [(await queue.enqueue("paint", paint(f"a{i}"), user_id=100)).job.id for i in range(3)]
    b = [(await queue.enqueue("paint", paint(f"b{i}"), user_id=200)).job.id for i in range(2)]
    urgent = (await queue.enqueue("paint", paint("a-urgent"), user_id=100, priority=-5)).job.id
    order = []
    while (lease := await queue.claim("w")) is not None:
        order.append(lease.job_id)
        await queue.finish(lease, new_result())
    # User 100 asked first, so goes first, with its most urgent job; then users alternate.
    assert order == [urgent, b[0], a[0], b[1], a[1], a[2]]


async def test_per_user_cap_and_dedupe_write_nothing_extra(queue: JobQueue) -> None:
    for i in range(5):
        await queue.enqueue("paint", paint(f"p{i}"), user_id=7)
    with pytest.raises(QueueFull, match="limit is 5"):
        await queue.enqueue("paint", paint("one too many"), user_id=7)
    assert await count(queue.db) == 5
    # Another user is not affected.
    first = await queue.enqueue("paint", paint(), user_id=8, dedupe_key="msg-1")
    again = await queue.enqueue("paint", paint("different"), user_id=8, dedupe_key="msg-1")
    assert first.created and not again.created and again.job.id == first.job.id
    assert await count(queue.db) == 6
    # Once the job is no longer live, the same key may be queued again.
    await queue.cancel(first.job.id)
    third = await queue.enqueue("paint", paint(), user_id=8, dedupe_key="msg-1")
    assert third.created and third.job.id != first.job.id


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("sculpt", {"prompt": "x"}, "unknown job kind 'sculpt'"),
        ("paint", {}, "a paint job needs prompt"),
        ("paint", {"prompt": "   "}, "prompt must not be empty"),
        ("paint", {"prompt": "x", "effect": "smear"}, "effect must be one of strokes"),
        ("paint", {"prompt": "x", "steps": 0}, "steps must be between 1 and 500"),
        ("paint", {"prompt": "x", "width": 500}, "width must be a multiple of 8"),
        ("paint", {"prompt": "x", "steps": True}, "steps must be a whole number"),
        ("paint", {"prompt": "x", "colour": "red"}, "unknown parameter 'colour'"),
        ("transition", {"from_trail": "jobs/1/1/t.safetensors"}, "a transition job needs from_result"),
        (
            "transition",
            {"from_result": "AAAA0000", "to_result": "BBBB1111", "from_trail": "jobs/1/1/t"},
            "needs from_trail and to_trail",
        ),
        (
            "transition",
            {
                "from_result": "A",
                "to_result": "B",
                "from_trail": "jobs/1/1/t",
                "to_trail": "../../etc/passwd",
            },
            "to_trail must be an artifact key",
        ),
        ("paint", {"prompt": "x", "image_key": "/etc/passwd"}, "image_key must be an artifact key"),
        ("paint", {"prompt": "x", "strength": 0}, "strength must be in \\(0, 1\\]"),
    ],
)
async def test_bad_input_is_refused_with_a_clear_message_and_no_row(
    queue: JobQueue, kind: str, params: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await queue.enqueue(kind, params, user_id=1)
    assert await count(queue.db) == 0


async def test_bad_requester_values_write_no_row(queue: JobQueue) -> None:
    with pytest.raises(ValueError, match="user_id"):
        await queue.enqueue("paint", paint(), user_id=-3)
    with pytest.raises(ValueError, match="priority"):
        await queue.enqueue("paint", paint(), user_id=1, priority=5000)
    assert await count(queue.db) == 0


async def test_fail_retries_with_backoff_then_fails_for_good_keeping_the_error(queue: JobQueue) -> None:
    queue.policy = QueuePolicy(max_attempts=2, backoff_seconds=30)
    job = (await queue.enqueue("paint", paint(), user_id=1)).job
    lease = await queue.claim("w")
    before = utcnow()
    retried = await queue.fail(lease, "RuntimeError: out of memory")
    assert retried.status == "queued" and retried.attempts == 1 and retried.worker_id is None
    # Equal jitter on 30 s: between 15 and 30 s from now.
    assert timedelta(seconds=14) < retried.run_at - before < timedelta(seconds=31)
    assert await queue.claim("w") is None  # still backing off
    async with queue.db.write() as session:
        await session.execute(update(Job).values(run_at=utcnow()))
    lease = await queue.claim("w")
    assert lease.attempt == 2
    failed = await queue.fail(lease, "RuntimeError: out of memory again")
    assert failed.status == "failed" and failed.attempts == 2
    assert (await queue.get(job.id)).error == "RuntimeError: out of memory again"


async def test_non_retryable_failure_is_final_at_once(queue: JobQueue) -> None:
    await queue.enqueue("paint", paint(), user_id=1)
    lease = await queue.claim("w")
    job = await queue.fail(lease, "bad prompt", retry=False)
    assert job.status == "failed" and job.attempts == 1


def test_backoff_grows_exponentially_with_jitter() -> None:
    policy = QueuePolicy(backoff_seconds=2, backoff_max_seconds=100)
    for attempt, full in ((1, 2), (2, 4), (3, 8), (10, 100)):
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # really jittered


async def test_cancel_queued_at_once_and_running_through_the_flag(queue: JobQueue) -> None:
    queued = (await queue.enqueue("paint", paint("a"), user_id=1)).job
    running = (await queue.enqueue("paint", paint("b"), user_id=2)).job
    lease = await queue.claim("w")
    assert lease.job_id == queued.id
    # The first job is running now; cancel the other while queued, and this one while running.
    assert (await queue.cancel(running.id)).status == "cancelled"
    job = await queue.cancel(queued.id, user_id=1)
    assert job.status == "running" and job.cancel_requested
    assert await queue.heartbeat(lease) is True  # the worker learns of it
    assert (await queue.confirm_cancel(lease)).status == "cancelled"
    with pytest.raises(JobNotFound):
        await queue.cancel(9999)
    with pytest.raises(JobNotFound, match="of yours"):
        await queue.cancel(queued.id, user_id=42)


async def test_a_cancel_note_is_kept_with_the_job_whether_queued_or_running(queue: JobQueue) -> None:
    """Who cancelled a job (a moderator) is in its row, written with the cancellation, so
    an announcement made after a restart still says so; a plain cancel leaves no note."""
    from bot.delivery import failure_text

    running = (await queue.enqueue("paint", paint("a"), user_id=1)).job
    queued = (await queue.enqueue("paint", paint("b"), user_id=2)).job
    failing = (await queue.enqueue("paint", paint("c"), user_id=3)).job
    plain = (await queue.enqueue("paint", paint("d"), user_id=4)).job
    lease = await queue.claim("w")
    assert lease.job_id == running.id
    assert (await queue.cancel(queued.id, by_moderator=True)).error == MODERATOR_CANCEL
    assert (await queue.cancel(running.id, by_moderator=True)).cancel_requested
    assert await queue.heartbeat(lease) is True
    await queue.confirm_cancel(lease)
    # Cancelled while running, and its attempt failed before the worker heard of it.
    other = await queue.claim("w")
    assert other.job_id == failing.id
    await queue.cancel(failing.id, by_moderator=True)
    assert (await queue.fail(other, "RuntimeError: boom")).status == "cancelled"
    await queue.cancel(plain.id, user_id=4)
    fresh = JobQueue(queue.db)  # as the bot reads them after a restart
    texts = [failure_text(await fresh.get(job.id)) for job in (running, queued, failing, plain)]
    assert texts == [
        "Your painting “a” was cancelled by a moderator.",
        "Your painting “b” was cancelled by a moderator.",
        "Your painting “c” was cancelled by a moderator.",
        "Your painting “d” was cancelled.",
    ]


async def test_heartbeat_and_progress_need_the_lease(queue: JobQueue) -> None:
    await queue.enqueue("paint", paint(), user_id=1)
    lease = await queue.claim("w")
    assert await queue.progress(lease, 3, 10, 40) is False
    job = await queue.get(lease.job_id)
    assert (job.progress_step, job.progress_frame, job.progress_total) == (3, 10, 40)
    other = type(lease)(job=lease.job, worker_id="impostor")
    with pytest.raises(LeaseLost):
        await queue.heartbeat(other)


async def test_stale_lease_is_taken_back_by_the_next_claim(queue: JobQueue) -> None:
    job = (await queue.enqueue("paint", paint(), user_id=1)).job
    dead = await queue.claim("dead-worker")
    assert await queue.claim("w2") is None  # the lease is fresh
    async with queue.db.write() as session:
        await session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    taken = await queue.claim("w2")
    assert taken.job_id == job.id and taken.attempt == 2 and taken.job.error == STALE_ERROR
    # The dead worker's lease is void: it can neither heartbeat nor finish.
    with pytest.raises(LeaseLost):
        await queue.heartbeat(dead)
    with pytest.raises(LeaseLost):
        await queue.finish(dead, new_result())
    await queue.finish(taken, new_result())
    assert (await queue.get(job.id)).error is None
    assert await count(queue.db, Result) == 1


async def test_result_of_tells_a_finished_attempt_from_a_taken_over_one(queue: JobQueue) -> None:
    """After a finish whose answer was lost (the connection dropped at the commit), a retry
    raises LeaseLost either way; result_of says whether this very attempt recorded it."""
    job = (await queue.enqueue("paint", paint(), user_id=1)).job
    dead = await queue.claim("dead-worker")
    assert await queue.result_of(dead) is None
    async with queue.db.write() as session:
        await session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    taken = await queue.claim("w2")
    result = await queue.finish(taken, new_result())
    with pytest.raises(LeaseLost):
        await queue.finish(taken, new_result())
    assert (await queue.result_of(taken)).id == result.id
    assert await queue.result_of(dead) is None  # an earlier attempt of the same job
    assert await queue.result_of(type(taken)(job=taken.job, worker_id="dead-worker")) is None
    assert (await queue.get(job.id)).status == "done"


async def test_stale_job_out_of_attempts_ends_failed_not_retried(queue: JobQueue) -> None:
    job = (await queue.enqueue("paint", paint(), user_id=1, max_attempts=1)).job
    await queue.claim("dead-worker")
    async with queue.db.write() as session:
        await session.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    # Another worker (its own queue object, its first claim) runs the rescue and settles it.
    rescuer = JobQueue(queue.db, queue.policy)
    assert await rescuer.claim("w2") is None
    settled = await queue.get(job.id)
    assert settled.status == "failed" and settled.error == STALE_ERROR
    # ...and is told which jobs it ended, once, to delete what they left behind.
    assert [(j.id, j.status) for j in rescuer.take_rescued()] == [(job.id, "failed")]
    assert rescuer.take_rescued() == [] and queue.take_rescued() == []


async def test_the_rescue_reports_a_cancelled_job_whose_worker_died(queue: JobQueue) -> None:
    image = {"prompt": "a lighthouse", "image_key": "uploads/1/2.png"}
    job = (await queue.enqueue("paint", image, user_id=1)).job
    fresh = (await queue.enqueue("paint", paint(), user_id=2)).job
    await queue.claim("dead-worker")
    await queue.cancel(job.id, user_id=1)  # its worker is dead: nobody confirms the cancel
    async with queue.db.write() as session:
        await session.execute(
            update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=60))
        )
    rescuer = JobQueue(queue.db, queue.policy)
    assert (await rescuer.claim("w2")).job_id == fresh.id
    [ended] = rescuer.take_rescued()
    assert (ended.id, ended.status, ended.params["image_key"]) == (job.id, "cancelled", "uploads/1/2.png")


async def test_storage_references_name_live_jobs_their_uploads_and_result_keys(queue: JobQueue) -> None:
    done = (await queue.enqueue("paint", paint(), user_id=1)).job
    await queue.finish(await queue.claim("w"), new_result())
    running = (await queue.enqueue("paint", {"prompt": "x", "image_key": "uploads/2/1.png"}, user_id=2)).job
    await queue.claim("w")
    queued = (await queue.enqueue("paint", {"prompt": "y", "image_key": "uploads/3/1.png"}, user_id=3)).job
    ended = (await queue.enqueue("paint", {"prompt": "z", "image_key": "uploads/4/1.png"}, user_id=4)).job
    await queue.cancel(ended.id)
    refs = await queue.storage_references()
    assert refs.live_jobs == {running.id, queued.id} and done.id not in refs.live_jobs
    assert refs.live_inputs == {"uploads/2/1.png", "uploads/3/1.png"}
    assert refs.result_keys == {"jobs/1/1/video.mp4", "jobs/1/1/image.png"}


async def test_release_puts_the_job_back_without_using_an_attempt(queue: JobQueue) -> None:
    job = (await queue.enqueue("paint", paint(), user_id=1)).job
    lease = await queue.claim("w")
    released = await queue.release(lease)
    assert released.status == "queued" and released.attempts == 0 and released.worker_id is None
    again = await queue.claim("w")
    assert again.job_id == job.id and again.attempt == 1


async def test_position_and_eta(queue: JobQueue) -> None:
    queue.policy = QueuePolicy(per_user_cap=10)
    ids = [(await queue.enqueue("paint", paint(), user_id=1)).job.id for _ in range(3)]
    other = (await queue.enqueue("paint", paint(), user_id=2)).job.id
    position = await queue.position(ids[2])
    assert position.ahead == 3 and position.eta_seconds is None  # nothing measured yet
    # Finish one job that took 10 s; the ETA follows from it.
    lease = await queue.claim("w")
    async with queue.db.write() as session:
        await session.execute(
            update(Job).where(Job.id == lease.job_id).values(started_at=utcnow() - timedelta(seconds=10))
        )
    lease = type(lease)(job=await queue.get(lease.job_id), worker_id="w")
    await queue.finish(lease, new_result())
    position = await queue.position(other)
    assert position.ahead == 0 and position.typical_seconds == pytest.approx(10, abs=1)
    assert position.eta_seconds == pytest.approx(10, abs=1.5)
    last = await queue.position(ids[2])
    assert last.ahead == 2 and last.eta_seconds == pytest.approx(30, abs=3)
    with pytest.raises(JobNotFound):
        await queue.position(12345)


async def test_positions_follow_the_claim_order(queue: JobQueue) -> None:
    """What each member is told ("N jobs ahead") is the order the workers really take them in."""
    queue.policy = QueuePolicy(per_user_cap=10)
    # User 5 was served before; 9 and 2 never were (the first claim breaks their tie by job id).
    served = (await queue.enqueue("paint", paint(), user_id=5)).job.id
    lease = await queue.claim("w")
    assert lease.job_id == served
    await queue.finish(lease, new_result())
    ids = []
    for user in (9, 2, 9, 5, 2, 9, 5):
        ids.append((await queue.enqueue("paint", paint(), user_id=user)).job.id)
    told = {job_id: (await queue.position(job_id)).ahead for job_id in ids}
    order = []
    while (lease := await queue.claim("w")) is not None:
        order.append(lease.job_id)
        await queue.finish(lease, new_result())
    assert sorted(order) == sorted(ids)
    assert {job_id: order.index(job_id) for job_id in ids} == told


async def test_list_and_count_jobs(queue: JobQueue) -> None:
    await queue.enqueue("paint", paint(), user_id=1)
    trails = {"from_trail": "jobs/1/1/trail.safetensors", "to_trail": "jobs/2/1/trail.safetensors"}
    await queue.enqueue(
        "transition", {"from_result": "AAAA0000", "to_result": "BBBB1111", **trails}, user_id=2
    )
    assert [j.kind for j in await queue.list_jobs()] == ["transition", "paint"]
    assert [j.user_id for j in await queue.list_jobs(user_id=1)] == [1]
    assert (await queue.counts())["queued"] == 2
    with pytest.raises(ValueError, match="status must be one of"):
        await queue.list_jobs(status="sleeping")


async def test_failing_or_releasing_a_job_with_a_cancel_request_ends_it_cancelled(queue: JobQueue) -> None:
    first = (await queue.enqueue("paint", paint(), user_id=1)).job
    second = (await queue.enqueue("paint", paint(), user_id=2)).job
    leases = [await queue.claim("w"), await queue.claim("w")]
    for job in (first, second):
        await queue.cancel(job.id)
    failed = await queue.fail(leases[0], "RuntimeError: boom")
    released = await queue.release(leases[1])
    for job in (failed, released):
        assert job.status == "cancelled" and job.finished_at is not None
        assert job.finished_at.tzinfo is not None and abs(job.finished_at - utcnow()) < timedelta(seconds=30)

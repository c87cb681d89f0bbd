"""Bounding storage and finding old work: ``latent-painter results delete|prune`` and autocomplete.

The operator commands run as a person types them, against real SQLite and PostgreSQL
databases and a real artifact store filled by a real worker (the cheap test runner): a
deleted result's row and files are gone, a file already missing is no error, a file
another row still points at stays, results in a server gallery are kept unless asked
(their Discord posts are out of the command's reach), and a dry run deletes nothing.

Autocomplete (``/transition``, ``/gallery submit``, ``/gallery remove``) filters in the
database, so a result older than the newest hundred is found by typing part of its
prompt or the start of its id; ``%`` and ``_`` are plain characters.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from bot.artifacts import LocalArtifactStore
from bot.cli_queue import main
from db.engine import Database
from db.gallery import count_entries, record_post, submit
from db.models import GalleryEntry, Result, utcnow
from db.results import new_public_id
from tests.db_fixtures import BACKENDS, dispose_url, fresh_url, write_config
from tests.discord_standin.world import ALICE_ID, BOB_ID, GALLERY_ID, GUILD_ID
from tests.test_cogs_unit import Harness, harness  # noqa: F401 - the module-scoped bot fixture

SERVER = 4242  # the guild of the CLI tests' gallery entries


@dataclass
class Operator:
    """A deployment's database and artifact store, and the command line that manages them."""

    url: str
    config: Path
    store: LocalArtifactStore
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--config", str(self.config)])
        out = self.capsys.readouterr()
        return code, out.out, out.err

    def db(self, work: Any) -> Any:
        """Run ``work(db)`` on a fresh connection (each CLI command opens its own)."""

        async def go() -> Any:
            db = Database.from_url(self.url)
            try:
                return await work(db)
            finally:
                await db.dispose()

        return asyncio.run(go())

    def results(self) -> dict[str, dict[str, Any]]:
        code, out, _ = self.run("results", "--json")
        assert code == 0
        return {r["id"]: r for r in json.loads(out)}

    def paint(self, *jobs: tuple[str, int]) -> list[dict[str, Any]]:
        """Queue (prompt, user) jobs, let a real worker finish them; their results, in order."""
        for prompt, user in jobs:
            code, _, err = self.run("submit", prompt, "--user", str(user))
            assert code == 0, err
        code, _, err = self.run("worker", "--runner", "tests.job_runners:run_job", "--exit-when-idle")
        assert code == 0, err
        by_prompt = {r["prompt"]: r for r in self.results().values()}
        return [by_prompt[prompt] for prompt, _ in jobs]

    def age(self, public_id: str, days: float) -> None:
        async def work(db: Database) -> None:
            async with db.write() as session:
                await session.execute(
                    update(Result)
                    .where(Result.public_id == public_id)
                    .values(created_at=utcnow() - timedelta(days=days))
                )

        self.db(work)

    def put_in_gallery(self, result: dict[str, Any], message_id: int) -> None:
        async def work(db: Database) -> None:
            entry = await submit(db, SERVER, result["id"], result["owner_id"])
            assert await record_post(db, entry.id, GALLERY_ID, message_id)

        self.db(work)

    def gallery_size(self) -> int:
        return int(self.db(lambda db: count_entries(db, SERVER)))

    def files(self, result: dict[str, Any]) -> dict[str, int]:
        """Key -> size of the result's files still in the store."""
        paths = {key: self.store.root / key for key in result["artifacts"].values()}
        return {key: path.stat().st_size for key, path in paths.items() if path.is_file()}


@pytest.fixture(params=BACKENDS)
def operator(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Operator]:
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("LATENT_PAINTER_CONFIG", raising=False)
    url = asyncio.run(fresh_url(request.param, tmp_path))
    data = tmp_path / "data"
    config = write_config(
        tmp_path / "config.toml", url, data, poll_seconds=0.02, heartbeat_seconds=0.2, backoff_seconds=0
    )
    try:
        yield Operator(url, config, LocalArtifactStore(data / "artifacts"), capsys)
    finally:
        asyncio.run(dispose_url(request.param, url))


def human(size: int) -> str:
    return f"{size / 1000:.1f} kB" if size >= 1000 else f"{size} B"


def summary(out: str) -> str:
    return out.strip().splitlines()[-1]


def test_prune_deletes_old_results_and_their_files_and_keeps_gallery_ones(operator: Operator) -> None:
    old, gallery, recent, others = operator.paint(
        ("an old mill", 1), ("a gallery piece", 2), ("a new bridge", 1), ("an old barn", 2)
    )
    for result, days in ((old, 40), (gallery, 45), (recent, 2), (others, 50)):
        operator.age(result["id"], days)
    operator.put_in_gallery(gallery, message_id=777)
    sizes = {r["id"]: operator.files(r) for r in (old, gallery, recent, others)}
    assert all(len(files) == 4 for files in sizes.values())

    # A dry run says what would go and deletes nothing.
    code, out, err = operator.run("results", "prune", "--older-than", "30", "--dry-run")
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert [line.split()[:3] for line in lines[:-1]] == [
        ["would", "delete", old["id"]],
        ["would", "delete", others["id"]],
    ]
    would = sum(sizes[old["id"]].values()) + sum(sizes[others["id"]].values())
    assert lines[-1].startswith(f"would delete 2 results (8 files), freeing {human(would)} ({would:,} bytes)")
    assert "nothing was deleted (--dry-run); kept 1 result in a server gallery" in lines[-1]
    assert len(operator.results()) == 4
    assert all(operator.files(r) == sizes[r["id"]] for r in (old, gallery, recent, others))

    # --user: only that member's old results.
    code, out, _ = operator.run("results", "prune", "--older-than", "30", "--user", "2")
    assert code == 0
    assert out.splitlines()[0].startswith(f"deleted {others['id']}  owner 2  ")
    freed = sum(sizes[others["id"]].values())
    assert summary(out).startswith(f"deleted 1 result (4 files), freed {human(freed)} ({freed:,} bytes)")
    assert "kept 1 result in a server gallery" in summary(out)
    assert operator.files(others) == {} and set(operator.results()) == {
        old["id"],
        gallery["id"],
        recent["id"],
    }
    assert operator.files(old) == sizes[old["id"]]

    # Everyone's: the gallery's result stays, with its files and its entry.
    code, out, _ = operator.run("results", "prune", "--older-than", "30")
    assert code == 0 and out.splitlines()[0].startswith(f"deleted {old['id']}  owner 1  ")
    assert summary(out).startswith("deleted 1 result (4 files)")
    assert operator.files(old) == {} and set(operator.results()) == {gallery["id"], recent["id"]}
    assert operator.files(gallery) == sizes[gallery["id"]] and operator.gallery_size() == 1

    # --include-gallery: it goes, its entry with it, and the post left on Discord is named.
    code, out, _ = operator.run("results", "prune", "--older-than", "30", "--include-gallery")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"deleted {gallery['id']}  owner 2  ")
    assert "gallery entry" in lines[1] and f"in server {SERVER} goes with it" in lines[1]
    assert f"https://discord.com/channels/{SERVER}/{GALLERY_ID}/777" in lines[1]
    assert summary(out).startswith("deleted 1 result (4 files)") and "kept" not in summary(out)
    assert operator.files(gallery) == {} and operator.gallery_size() == 0
    assert set(operator.results()) == {recent["id"]} and operator.files(recent) == sizes[recent["id"]]

    # Nothing left that old: a summary of nothing, not an error.
    code, out, _ = operator.run("results", "prune", "--older-than", "2.5")
    assert code == 0 and out.strip() == "deleted 0 results (0 files), freed 0 B (0 bytes)"


def test_prune_keeps_results_a_queued_job_reads_until_it_has_run(operator: Operator) -> None:
    """A member's queued transition of two old results must not fail because an operator's
    prune took its ends first; once it has run, the next prune takes them."""
    from db.queue import JobQueue

    start, end, source, alone = operator.paint(
        ("an old dawn", 1), ("an old dusk", 1), ("an old river", 3), ("an old noon", 2)
    )
    for result in (start, end, source, alone):
        operator.age(result["id"], 40)

    async def queue_jobs(db: Database) -> None:
        params = {"from_result": start["id"], "to_result": end["id"], "effect": "fade"}
        params |= {"from_trail": start["artifacts"]["trail"], "to_trail": end["artifacts"]["trail"]}
        await JobQueue(db).enqueue("transition", params, user_id=1)
        # A repaint queued before repaints named their source: its trail key alone.
        repaint = {"prompt": "an old river", "trail_key": source["artifacts"]["trail"]}
        await JobQueue(db).enqueue("paint", repaint, user_id=3)

    operator.db(queue_jobs)
    code, out, err = operator.run("results", "prune", "--older-than", "30")
    assert code == 0 and err == ""
    assert [line.split()[:2] for line in out.strip().splitlines()[:-1]] == [["deleted", alone["id"]]]
    assert "kept 3 results that queued jobs still read" in summary(out)
    assert set(operator.results()) == {start["id"], end["id"], source["id"]}
    assert operator.files(start) and operator.files(end) and operator.files(source)

    code, _, err = operator.run("worker", "--runner", "tests.job_runners:run_job", "--exit-when-idle")
    assert code == 0, err
    code, out, _ = operator.run("results", "prune", "--older-than", "30")
    assert code == 0 and "kept" not in summary(out)
    gone = {line.split()[1] for line in out.strip().splitlines()[:-1]}
    assert {start["id"], end["id"], source["id"]} <= gone


def test_delete_by_id_all_or_nothing(operator: Operator) -> None:
    mill, piece, bridge = operator.paint(("an old mill", 1), ("a gallery piece", 2), ("a new bridge", 1))
    operator.put_in_gallery(piece, message_id=888)
    everything = set(operator.results())

    # An id that does not exist: nothing is deleted, and the error names it.
    missing = "ZZZZZZZZ" if "ZZZZZZZZ" not in everything else "YYYYYYYY"
    code, out, err = operator.run("results", "delete", mill["id"], missing)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"latent-painter results: error: no result with id {missing}; nothing was deleted"
    ]
    # A result in a gallery is refused (with the others named beside it) unless asked.
    code, out, err = operator.run("results", "delete", mill["id"], piece["id"])
    assert code == 2 and out == ""
    [line] = err.strip().splitlines()
    assert line.startswith(f"latent-painter results: error: {piece['id']} (gallery of server {SERVER}) is in")
    assert "--include-gallery" in line and line.endswith("Nothing was deleted")
    assert set(operator.results()) == everything and operator.gallery_size() == 1
    # Text that is no id at all.
    code, _, err = operator.run("results", "delete", "not-an-id")
    assert code == 2 and "'not-an-id' is not a result id" in err
    assert set(operator.results()) == everything

    # A dry run.
    code, out, _ = operator.run("results", "delete", mill["id"], "--dry-run")
    assert code == 0 and out.startswith(f"would delete {mill['id']}  owner 1  ")
    assert len(operator.files(mill)) == 4 and set(operator.results()) == everything

    # Typed as members type ids; one of its files is already gone (no error), and another
    # row still points at its trail (as rows from before repaints copied their source's
    # trail did): that file stays.
    video = mill["artifacts"]["video"]
    operator.store.delete(video)
    trail = mill["artifacts"]["trail"]
    sharer = new_public_id()

    async def share(db: Database) -> None:
        async with db.write() as session:
            session.add(
                Result(
                    public_id=sharer, kind="paint", owner_id=1, prompt="a repaint", params={}, sizes={},
                    trail_key=trail,
                )
            )  # fmt: skip

    operator.db(share)
    left = operator.files(mill)
    typed = f"{mill['id'][:4].lower()}-{mill['id'][4:].lower()}"
    code, out, err = operator.run("results", "delete", typed)
    assert code == 0 and err == ""
    assert out.splitlines()[0].startswith(f"deleted {mill['id']}  owner 1  ")
    freed = sum(size for key, size in left.items() if key != trail)
    assert summary(out) == f"deleted 1 result (2 files), freed {human(freed)} ({freed:,} bytes)"
    assert operator.files(mill) == {trail: left[trail]}
    assert mill["id"] not in operator.results() and sharer in operator.results()

    # With --include-gallery: the row, its files and its entry go; its post is named.
    code, out, _ = operator.run("results", "delete", piece["id"], bridge["id"], "--include-gallery")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"deleted {piece['id']}  owner 2  ")
    assert f"https://discord.com/channels/{SERVER}/{GALLERY_ID}/888" in lines[1]
    assert lines[2].startswith(f"deleted {bridge['id']}  owner 1  ")
    assert summary(out).startswith("deleted 2 results (8 files)")
    assert operator.files(piece) == {} and operator.files(bridge) == {} and operator.gallery_size() == 0
    assert set(operator.results()) == {sharer}

    # The deleted id is gone for good.
    code, _, err = operator.run("results", "delete", mill["id"])
    assert code == 2 and f"no result with id {mill['id']}" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["results", "prune", "--older-than", "0"], "--older-than must be a number of days above 0, got '0'"),
        (["results", "prune", "--older-than", "soon"], "--older-than must be a number, got 'soon'"),
        (["results", "prune", "--older-than", "9e9"], "--older-than 9e9 days reaches back before the year 1"),
        (["results", "prune", "--older-than", "3", "--user", "me"], "--user must be a whole number"),
        (["results", "--json", "delete", "K3F97QXM"], "--json and --limit go with listing results"),
        (["results", "--user", "1", "delete", "K3F97QXM"], "`results delete` takes result ids"),
    ],
)
def test_bad_flags_are_one_line_and_touch_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    code = main([*argv, "--config", str(config)])
    out = capsys.readouterr()
    assert code == 2 and out.out == ""
    [line] = out.err.strip().splitlines()
    assert line.startswith("latent-painter results: error: ") and message in line
    assert not (tmp_path / "data").exists()


def test_prune_before_anything_was_painted_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    assert main(["results", "prune", "--older-than", "30", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "deleted 0 results (0 files), freed 0 B (0 bytes)"
    assert main(["results", "delete", "K3F97QXM", "--config", str(config)]) == 2
    assert "no result with id K3F97QXM; nothing was deleted" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # not even the database file


# -- autocomplete finds old work ----------------------------------------------------------------

on_bot = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Made:
    old: Result  # Alice's oldest result, in the gallery, behind 150 newer ones
    lanterns: Result  # "1000 lanterns": what an unescaped "100%" would also find
    underscore: Result  # "one_two", and "oneXtwo" beside it


_made: dict[str, Made] = {}


async def alices_work(harness: Harness) -> Made:  # noqa: F811 - the fixture's value
    """Alice's results (once per module): the old ones first, then 120 with trails, then 30 without."""
    if "made" in _made:
        return _made["made"]
    start = utcnow() - timedelta(days=30)
    rows: list[Result] = []

    def add(prompt: str, *, trail: bool = True) -> Result:
        public_id = new_public_id()
        row = Result(
            public_id=public_id,
            kind="paint",
            owner_id=ALICE_ID,
            guild_id=GUILD_ID,
            prompt=prompt,
            params={},
            sizes={},
            trail_key=f"results/{public_id}.trail" if trail else None,
            created_at=start + timedelta(minutes=len(rows)),
        )
        rows.append(row)
        return row

    old = add("an old red lighthouse, 100% done")
    lanterns = add("1000 lanterns")
    underscore = add("one_two")
    add("oneXtwo")
    for n in range(120):
        add(f"filler {n}")
    for n in range(30):
        add(f"sketch {n}", trail=False)
    async with harness.bot.db.write() as session:
        session.add_all(rows)
        await session.flush()
        # The old one went into the gallery first; 110 newer entries came after it.
        entries = [old] + rows[4:114]
        session.add_all(
            GalleryEntry(
                guild_id=GUILD_ID,
                result_id=row.id,
                submitted_by=ALICE_ID,
                votes=0,
                created_at=start + timedelta(minutes=n),
            )
            for n, row in enumerate(entries)
        )
    async with harness.bot.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Result)) >= 154
    _made["made"] = Made(old=old, lanterns=lanterns, underscore=underscore)
    return _made["made"]


async def complete(harness: Harness, command: str, typed: str, *, user_id: int = ALICE_ID) -> list[str]:  # noqa: F811
    """The result ids autocomplete offers for ``command`` ("transition", "gallery submit", …)."""
    option: dict[str, Any] = {"type": 3, "value": typed, "focused": True}
    if command == "transition":
        data = {"id": "1", "name": "transition", "type": 1, "options": [{"name": "from", **option}]}
    else:
        group, sub = command.split()
        inner = [{"name": sub, "type": 1, "options": [{"name": "result", **option}]}]
        data = {"id": "1", "name": group, "type": 1, "options": inner}
    sent = await harness.call(harness.payload(4, data, user_id=user_id))
    assert sent[0].callback_type == 8, sent[0].json
    return [choice["value"] for choice in sent[0].json["data"]["choices"]]


@on_bot
async def test_transition_autocomplete_finds_a_result_older_than_the_newest_hundred(
    harness: Harness,  # noqa: F811
) -> None:
    made = await alices_work(harness)
    assert await complete(harness, "transition", "red LIGHTHOUSE") == [made.old.public_id]
    # By the start of its id, typed as members type ids.
    prefix = f"{made.old.public_id[:2].lower()}-{made.old.public_id[2:5].lower()}"
    assert made.old.public_id in await complete(harness, "transition", prefix)
    # % and _ are what they are, not wildcards.
    assert await complete(harness, "transition", "100%") == [made.old.public_id]
    assert await complete(harness, "transition", "one_two") == [made.underscore.public_id]
    # Nothing typed: the 25 newest with a trail (the 30 newest have none).
    offered = await complete(harness, "transition", "")
    assert len(offered) == 25
    async with harness.bot.db.read() as session:
        newest = (
            await session.scalars(
                select(Result.public_id)
                .where(Result.owner_id == ALICE_ID, Result.trail_key.is_not(None))
                .order_by(Result.created_at.desc(), Result.id.desc())
                .limit(25)
            )
        ).all()
    assert offered == list(newest)
    # Bob has nothing of his own: he finds Alice's through the server's gallery.
    assert await complete(harness, "transition", "lighthouse", user_id=BOB_ID) == [made.old.public_id]
    assert await complete(harness, "transition", "lanterns", user_id=BOB_ID) == []


@on_bot
async def test_gallery_autocomplete_finds_old_results_and_old_entries(harness: Harness) -> None:  # noqa: F811
    made = await alices_work(harness)
    # /gallery submit: her own, trail or not.
    assert await complete(harness, "gallery submit", "lighthouse") == [made.old.public_id]
    assert await complete(harness, "gallery submit", "lanterns") == [made.lanterns.public_id]
    assert len(await complete(harness, "gallery submit", "sketch 2")) == 11  # sketch 2, 20-29
    assert await complete(harness, "gallery submit", "lighthouse", user_id=BOB_ID) == []
    # /gallery remove: her entry behind 110 newer ones; not Bob's to take out.
    assert await complete(harness, "gallery remove", "LIGHTHOUSE") == [made.old.public_id]
    assert await complete(harness, "gallery remove", "lighthouse", user_id=BOB_ID) == []
    assert len(await complete(harness, "gallery remove", "filler")) == 25

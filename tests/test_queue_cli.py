"""The operator commands: submit, jobs, results, cancel, worker and db, as a person or a script uses them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from PIL import Image

from bot.cli_queue import main
from tests.db_fixtures import create_postgres_database, drop_postgres_database, write_config


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    monkeypatch.delenv("LATENT_PAINTER_CONFIG", raising=False)
    data = tmp_path / "data"
    path = tmp_path / "config.toml"
    path.write_text(
        f'[storage]\ndata_dir = "{data}"\n\n[queue]\npoll_seconds = 0.02\nheartbeat_seconds = 0.2\n'
        "backoff_seconds = 0\n"
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_submit_work_and_list_as_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", str(config))
    code, out, _ = run(capsys, "submit", "a lighthouse at dusk", "--effect", "glow", "--size", "512x768", *c)
    assert code == 0
    first = int(out.strip())
    code, out, _ = run(
        capsys, "submit", "a second one", "--user", "42", "--seed", "7", "--dedupe-key", "k", *c
    )
    second = int(out.strip())
    code, out, err = run(capsys, "submit", "same key again", "--user", "42", "--dedupe-key", "k", *c)
    assert code == 0 and int(out.strip()) == second and "already queued" in err

    code, out, _ = run(capsys, "jobs", "--json", *c)
    jobs = json.loads(out)
    assert [(j["id"], j["status"]) for j in jobs] == [(second, "queued"), (first, "queued")]
    assert jobs[1]["params"] == {
        "prompt": "a lighthouse at dusk",
        "effect": "glow",
        "width": 512,
        "height": 768,
    }
    assert "interaction_token" not in jobs[0]

    code, _, _ = run(capsys, "worker", *c, "--runner", "tests.job_runners:run_job", "--exit-when-idle")
    assert code == 0

    code, out, _ = run(capsys, "results", "--json", *c)
    results = json.loads(out)
    assert sorted(r["job_id"] for r in results) == [first, second]
    for result in results:
        assert len(result["id"]) == 8 and result["status"] == "done"
        job = result["job_id"]
        assert result["video_key"] == f"jobs/{job}/1/video.mp4"
        assert set(result["artifacts"]) == {"video", "image", "heatmap", "trail"}
        assert (config.parent / "data" / "artifacts" / result["image_key"]).is_file()
    code, out, _ = run(capsys, "results", "--user", "42", "--json", *c)
    assert [r["job_id"] for r in json.loads(out)] == [second]

    code, out, _ = run(capsys, "jobs", "--status", "done", *c)
    assert code == 0 and "done" in out and "a lighthouse at dusk" in out
    code, out, _ = run(capsys, "results", *c)
    assert code == 0 and "test-runner" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", ""], "prompt must not be empty"),
        (
            ["submit", "x", "--effect", "smear"],
            "effect must be one of strokes, glow, flip, fade, dissolve, sharpen",
        ),
        (["submit", "x", "--size", "big"], "--size 'big' must look like 512x512"),
        (["submit", "x", "--size", "500x500"], "width must be a multiple of 8"),
        (["submit", "x", "--steps", "ten"], "--steps must be a whole number"),
        (["submit", "x", "--seed", "-1"], "seed must be between 0 and"),
        (["submit", "x", "--duration", "nan"], "--duration must be a finite number, got 'nan'"),
        (["submit", "x", "--strength", "0.5"], "--strength needs --image"),
        (["submit", "x", "--start-from-image"], "--start-from-image needs --image"),
        (["submit", "x", "--image", "/nowhere.png"], "--image /nowhere.png: file not found"),
        (["submit", "x", "--max-bytes", "10"], "max_bytes must be between 10000 and"),
        (
            ["jobs", "--status", "sleeping"],
            "--status must be one of queued, running, done, failed, cancelled",
        ),
        (["results", "--user", "me"], "--user must be a whole number"),
        (["cancel", "77"], "no job 77"),
        (["worker", "--runner", "nowhere"], "must look like module:function"),
    ],
)
def test_user_errors_are_one_line_and_write_nothing(
    config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv, "--config", str(config))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith(f"latent-painter {argv[0]}: error: ") and message in lines[0]
    )
    assert not (config.parent / "data").exists()  # not even the database file


def test_cancel_a_queued_job(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", str(config))
    _, out, _ = run(capsys, "submit", "x", *c)
    job = out.strip()
    code, out, _ = run(capsys, "cancel", job, *c)
    assert code == 0 and out.strip() == f"job {job}: cancelled"
    _, out, _ = run(capsys, "jobs", "--status", "cancelled", "--json", *c)
    assert [j["id"] for j in json.loads(out)] == [int(job)]


def test_a_shared_postgresql_database_must_be_upgraded_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LATENT_PAINTER_DATABASE_URL", raising=False)
    url = asyncio.run(create_postgres_database())
    try:
        config = write_config(tmp_path / "config.toml", url, tmp_path / "data", poll_seconds=0.02)
        c = ("--config", str(config))
        code, out, err = run(capsys, "submit", "x", *c)
        assert code == 1 and out == ""
        assert err.strip().splitlines() == [
            "latent-painter submit: error: database has no schema yet; run `latent-painter db upgrade` first"
        ]
        code, out, _ = run(capsys, "db", "current", *c)
        assert code == 0 and "revision none" in out
        code, out, _ = run(capsys, "db", "upgrade", *c)
        assert code == 0 and "schema at revision" in out
        code, out, _ = run(capsys, "submit", "x", "--json", *c)
        assert code == 0 and json.loads(out)["status"] == "queued"
        code, out, _ = run(capsys, "db", "check", *c)
        assert code == 0 and "matches the models" in out
    finally:
        asyncio.run(drop_postgres_database(url))


def test_submit_a_picture_to_paint_from(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--image goes into the artifact store, as a /paint attachment does, and the worker paints it."""
    c = ("--config", str(config))
    picture = tmp_path / "photo.png"
    Image.new("RGB", (96, 64), (30, 90, 200)).save(picture)
    paint = ("--model", "analytic", "--size", "64x64", "--steps", "4", "--fps", "8", "--duration", "1")
    code, out, err = run(
        capsys,
        "submit",
        "a blue card",
        *paint,
        "--image",
        str(picture),
        "--max-bytes",
        "200000",
        "--json",
        *c,
    )
    assert code == 0, err
    params = json.loads(out)["params"]
    key = params.pop("image_key")
    assert key.startswith("uploads/0/cli-") and key.endswith(".png")
    assert params == {
        "prompt": "a blue card",
        "model": "analytic",
        "width": 64,
        "height": 64,
        "steps": 4,
        "fps": 8,
        "duration": 1.0,
        "max_bytes": 200000,
    }
    # SDEdit's options go with a model (the analytic painter paints the picture itself).
    sdedit = ("--model", "tiny", "--steps", "4", "--image", str(picture), "--strength", "0.5")
    code, out, err = run(capsys, "submit", "oil", *sdedit, "--start-from-image", "--json", *c)
    assert code == 0, err
    queued = json.loads(out)
    assert (queued["params"]["strength"], queued["params"]["start_from_image"]) == (0.5, True)
    assert run(capsys, "cancel", str(queued["id"]), *c)[0] == 0
    assert (config.parent / "data" / "artifacts" / key).read_bytes() == picture.read_bytes()

    code, _, err = run(capsys, "worker", "--exit-when-idle", *c)
    assert code == 0, err
    _, out, _ = run(capsys, "jobs", "--json", *c)
    assert [job["status"] for job in json.loads(out)] == ["cancelled", "done"], out
    _, out, _ = run(capsys, "results", "--json", *c)
    image = config.parent / "data" / "artifacts" / json.loads(out)[0]["image_key"]
    # The analytic painter paints the picture itself: its final image is the blue card.
    assert Image.open(image).convert("RGB").resize((1, 1)).getpixel((0, 0)) == pytest.approx(
        (30, 90, 200), abs=12
    )
    # The submitted picture was needed only for the job: it is gone once the job is done.
    assert not (config.parent / "data" / "artifacts" / key).exists()

    # Cancelled while queued (no worker ever saw it): the cancel deletes it.
    code, out, err = run(capsys, "submit", "again", *paint, "--image", str(picture), "--json", *c)
    assert code == 0, err
    job = json.loads(out)
    assert (config.parent / "data" / "artifacts" / job["params"]["image_key"]).is_file()
    assert run(capsys, "cancel", str(job["id"]), *c)[0] == 0
    assert not (config.parent / "data" / "artifacts" / job["params"]["image_key"]).exists()


def test_a_picture_that_is_not_one_is_refused_before_anything_is_written(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    code, out, err = run(capsys, "submit", "x", "--image", str(text), "--config", str(config))
    assert (code, out) == (2, "")
    assert (
        err.strip()
        == f"latent-painter submit: error: --image {text}: not a PNG, JPEG, WebP, GIF, BMP or TIFF picture"
    )
    assert not (config.parent / "data").exists()


def test_jobs_show_progress_only_while_running(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = ("--config", str(config))
    run(capsys, "submit", "frames=4 sleep=1", *c)  # progress is saved with the heartbeat (0.2 s)
    code, _, _ = run(capsys, "worker", *c, "--runner", "tests.job_runners:run_job", "--exit-when-idle")
    assert code == 0
    _, out, _ = run(capsys, "jobs", "--json", *c)
    assert json.loads(out)[0]["progress"]["total"] == 4  # the row keeps its last progress
    _, out, _ = run(capsys, "jobs", *c)
    header, row = out.splitlines()
    assert header.split()[5] == "PROGRESS" and row.split()[1] == "done"
    assert row.split()[5] == "-"  # a finished job has no progress to show


def test_a_database_url_that_cannot_be_parsed_is_one_line(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LATENT_PAINTER_DATABASE_URL", "postgresql+asyncpg//u:hunter2@host/db")
    for argv in (["db", "current"], ["db", "upgrade"], ["submit", "x"], ["jobs"]):
        code, out, err = run(capsys, *argv, "--config", str(config))
        assert (code, out) == (2, ""), argv
        assert err.strip().splitlines() == [
            f"latent-painter {argv[0]}: error: [database] url 'postgresql+asyncpg//u:***@host/db' cannot be "
            "parsed; use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB"
        ]


def test_jobs_table_says_which_phase_a_running_job_is_in() -> None:
    """The PROGRESS column showed ``0/30`` for the whole generation (the frame count, still 0)."""
    from types import SimpleNamespace

    from bot.cli_queue import progress_text

    def job(status: str, step: int, frame: int, total: int) -> SimpleNamespace:
        return SimpleNamespace(status=status, progress_step=step, progress_frame=frame, progress_total=total)

    assert progress_text(job("running", 4, 0, 30)) == "step 4/30"
    assert progress_text(job("running", 30, 65, 450)) == "frame 65/450"
    assert progress_text(job("running", 0, 0, 0)) == "-"
    assert progress_text(job("done", 30, 450, 450)) == "-"

"""Bad input on the command line: one line on stderr naming the problem, exit 2, nothing left behind.

Each case here once ended in a traceback, a loop of tracebacks, a library's warning before
the error, or files left on disk. Most run ``bot.cli.main`` in-process; the ones about what
reaches the terminal run the installed ``latent-painter`` command.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bot.cli import main

FAST = ["--model", "tiny", "--steps", "2", "--size", "64x64", "--duration", "1", "--fps", "8", "--seed", "1"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a refused command (fails if there are more, or none)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("latent-painter: error: "), err
    return err[0]


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_cli(
    *argv: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed ``latent-painter`` command, as a user runs it."""
    command = [str(Path(sys.executable).with_name("latent-painter")), *argv]
    return subprocess.run(
        command,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workdir(env_for: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, with the tiny model's data directory set up elsewhere."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_save_trail_into_a_missing_directory_is_refused_before_painting(workdir: Path, capsys) -> None:
    code = main(["paint", "x", *FAST, "--out", "a.mp4", "--save-trail", "nodir/t.safetensors"])
    assert code == 2
    assert one_line_error(capsys).endswith("output directory nodir does not exist")
    assert files_under(workdir) == []


def test_an_out_directory_that_cannot_be_written_is_one_line(workdir: Path, capsys) -> None:
    # /proc exists everywhere this runs; as root os.access() says it is writable, but
    # nothing can be created in it (the encoder failed there with a traceback).
    assert main(["paint", "x", *FAST, "--out", "/proc/a.mp4"]) == 2
    assert "/proc" in one_line_error(capsys)
    assert main(["paint", "x", *FAST, "--out", "a.mp4", "--save-trail", "/proc/t.safetensors"]) == 2
    assert "/proc" in one_line_error(capsys)
    assert files_under(workdir) == []


def test_an_unwritable_data_directory_is_one_line(workdir: Path, monkeypatch, capsys) -> None:
    # The tiny model is built under the data directory on first use.
    monkeypatch.setenv("LATENT_PAINTER_STORAGE_DATA_DIR", "/proc/latent-painter-data")
    assert main(["paint", "x", *FAST, "--out", "a.mp4"]) == 2
    line = one_line_error(capsys)
    assert "data directory ([storage] data_dir): /proc/latent-painter-data" in line
    assert files_under(workdir) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--duration", "nan"], "[painter] duration must be a finite number"),
        (["--guidance", "inf"], "[painter] guidance must be a finite number"),
        (["--strength", "nan", "--image", "x.png"], "[painter] strength must be a finite number"),
    ],
)
def test_non_finite_flags_name_the_key(workdir: Path, capsys, flags: list[str], message: str) -> None:
    assert main(["paint", "x", "--model", "tiny", *flags]) == 2
    assert message in one_line_error(capsys)
    assert files_under(workdir) == []


def test_nan_lease_stops_the_worker_at_start_up(tmp_path: Path) -> None:
    # It used to start and loop on timedelta(seconds=nan) tracebacks forever; hence a process.
    env = {
        "LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path / "data"),
        "LATENT_PAINTER_DATABASE_URL": "",
        "LATENT_PAINTER_QUEUE_LEASE_SECONDS": "nan",
    }
    done = run_cli("worker", "--exit-when-idle", env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "latent-painter worker: error: [queue] lease_seconds must be a finite number, got 'nan'"
    ]
    assert not (tmp_path / "data").exists()


def test_an_out_suffix_that_is_no_animation_format_needs_format(workdir: Path, capsys) -> None:
    assert main(["paint", "x", *FAST, "--out", "a.txt"]) == 2
    assert "--out a.txt does not end in .mp4, .gif or .webp" in one_line_error(capsys)
    assert files_under(workdir) == []
    # Asked for explicitly, the format may go under any name.
    assert main(["paint", "x", *FAST, "--out", "a.bin", "--format", "gif"]) == 0
    assert (workdir / "a.bin").read_bytes()[:6] in (b"GIF87a", b"GIF89a")


def test_demo_out_dir_that_is_a_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    assert main(["demo", "--out-dir", "afile"]) == 2
    assert one_line_error(capsys) == "latent-painter: error: --out-dir afile exists and is not a directory"
    assert main(["demo", "--out-dir", "afile/sub"]) == 2
    assert one_line_error(capsys) == (
        "latent-painter: error: cannot create the output directory: afile/sub: Not a directory"
    )
    assert main(["demo", "--out-dir", "/proc/latent-painter-demo"]) == 2
    assert one_line_error(capsys).startswith(
        "latent-painter: error: cannot create the output directory: /proc/latent-painter-demo: "
    )
    assert files_under(tmp_path) == ["afile"]


def test_demo_refusing_its_input_leaves_no_directory(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notimage.png").write_text("not a picture")
    assert main(["demo", "--out-dir", "d", "--image", "notimage.png"]) == 2
    assert "notimage.png: not a" in one_line_error(capsys)
    assert main(["demo", "--out-dir", "d/e/f", "--size", "100x100"]) == 2
    assert "not a positive multiple of 8" in one_line_error(capsys)
    assert files_under(tmp_path) == ["notimage.png"]


def test_bad_database_urls_are_one_line_without_the_password(workdir: Path, monkeypatch, capsys) -> None:
    for url in ("garbage", "postgresql+asyncpg//u:hunter2@host/db"):
        monkeypatch.setenv("LATENT_PAINTER_DATABASE_URL", url)
        for argv in (["db", "current"], ["db", "upgrade"], ["jobs"]):
            assert main(argv) == 2, (url, argv)
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "[database] url" in err[0] and "cannot be parsed" in err[0], err
            assert "hunter2" not in err[0]
    assert files_under(workdir) == []


def test_the_terminal_shows_only_the_error(tmp_path: Path) -> None:
    env = {"LATENT_PAINTER_STORAGE_DATA_DIR": str(tmp_path / "data"), "LATENT_PAINTER_DATABASE_URL": ""}
    # An unknown hub id: huggingface_hub's deprecation warning came before the error.
    done = run_cli("paint", "x", "--model", "someone/notamodel", "--size", "64x64", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "latent-painter: error: model 'someone/notamodel' is not in the local Hugging Face cache and "
        "HF_HUB_OFFLINE is set: download it once online (run once without HF_HUB_OFFLINE, or "
        "`hf download someone/notamodel`) or give a local pipeline directory"
    ]
    # Result ids look the trails up in the database: Alembic logged its plugins at INFO.
    done = run_cli("transition", "ZZZZZZZZ", "YYYYYYYY", "--out", "t.mp4", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "latent-painter: error: no result with id ZZZZZZZZ: the queue's database is empty"
    ]


def test_the_demo_still_paints_a_good_picture_after_checking_it(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "ok.png")
    assert main(["demo", "--out-dir", "d", "--image", "ok.png", "--size", "64x64", "--duration", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["demo.heatmap.png", "demo.mp4", "demo.png"]


def test_outputs_never_overwrite_the_picture_painted_from(workdir: Path, capsys) -> None:
    """``--image photo.png --out photo.mp4`` would write the final image over photo.png."""
    Image.new("RGB", (40, 30), (200, 60, 40)).save("photo.png")
    before = Path("photo.png").read_bytes()
    analytic = ["--model", "analytic", "--steps", "2", "--size", "64x64", "--duration", "1"]
    assert main(["paint", "", *analytic, "--image", "photo.png", "--out", "photo.mp4"]) == 2
    assert "photo.png is the picture being painted" in one_line_error(capsys)
    assert main(["paint", "", *analytic, "--image", "photo.png", "--save-trail", "photo.png"]) == 2
    assert "it would be overwritten" in one_line_error(capsys)
    Path("d").mkdir()
    Path("d/demo.png").write_bytes(before)
    assert main(["demo", "--image", "d/demo.png", "--out-dir", "d", "--size", "64x64", "--steps", "2"]) == 2
    assert "d/demo.png is the picture being painted" in one_line_error(capsys)
    assert Path("photo.png").read_bytes() == before == Path("d/demo.png").read_bytes()
    assert files_under(workdir) == ["d", "d/demo.png", "photo.png"]


ANALYTIC_P = ["--model", "analytic", "--image", "p.png"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "tiny", "--strength", "0.5"], "--strength needs --image"),
        ([*ANALYTIC_P, "--strength", "0.5"], "does not apply to the analytic model"),
        ([*ANALYTIC_P, "--start-from-image"], "leave out --start-from-image"),
        # The closed form's trail is pixels: 2048² took 4 GB; the same bound as a model's.
        ([*ANALYTIC_P, "--size", "2048x2048"], "width 2048 must be between 16 and"),
    ],
)
def test_picture_options_that_cannot_apply_are_refused(workdir: Path, capsys, options, message) -> None:
    Image.new("RGB", (40, 30), (200, 60, 40)).save("p.png")
    assert main(["paint", "x", *options, "--steps", "2", "--duration", "1", "--out", "a.mp4"]) == 2
    assert message in one_line_error(capsys)
    assert files_under(workdir) == ["p.png"]


def test_sigterm_mid_paint_leaves_nothing_behind(workdir: Path, env_for: Path) -> None:
    """``timeout``, systemd and ``docker stop`` send SIGTERM: the command stops as for Ctrl-C,
    removing its half-written files (it left x.png without an animation, and temporaries)."""
    import signal
    import time

    Image.new("RGB", (96, 64), (30, 90, 200)).save("p.png")
    command = [str(Path(sys.executable).with_name("latent-painter")), "paint", "", "--model", "analytic"]
    command += ["--image", "p.png", "--size", "256x256", "--steps", "30", "--duration", "60"]
    command += ["--out", "x.mp4"]
    process = subprocess.Popen(
        command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    # Wait until it is writing (the final picture and the video are written beside their names).
    while files_under(workdir) == ["p.png"] and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert err.strip().endswith("latent-painter: terminated")
    assert files_under(workdir) == ["p.png"]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://painter:s3cret@127.0.0.1:1/lp",
        # psycopg's errors come wrapped in SQLAlchemy's, with a hint and a link (170 lines).
        "postgresql+psycopg://painter@127.0.0.1:1/lp?password=s3cret",
    ],
)
@pytest.mark.parametrize("command", [["jobs"], ["db", "upgrade"], ["bot"], ["worker"]])
def test_an_unreachable_database_is_named_as_such(workdir: Path, command: list[str], url: str) -> None:
    """A database server that refuses connections is not a "file system error" (the bot said
    so) nor a bare "[Errno 111]": one line naming [database] url, exit 1, no password."""
    done = run_cli(*command, env={"LATENT_PAINTER_DATABASE_URL": url, "DISCORD_TOKEN": "x.y.z"}, cwd=workdir)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "error: cannot reach the database ([database] url): " in lines[-1], lines
    # The bot says what it starts first (model, masked database URL); nothing else.
    assert all(" INFO " in line or " WARNING " in line for line in lines[:-1]), lines
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_health_with_an_unreachable_database_says_so_in_one_line(workdir: Path) -> None:
    url = "postgresql+psycopg://painter@127.0.0.1:1/lp?password=s3cret"
    done = run_cli("health", env={"LATENT_PAINTER_DATABASE_URL": url}, cwd=workdir)
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("unhealthy: cannot reach the database ([database] url): connection failed")
    assert len(done.stdout.strip().splitlines()) == 1 and "s3cret" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "argv",
    [["-v", "bot"], ["bot", "-v"], ["db", "upgrade", "-v"], ["paint", "x", "--verbose"], ["-v", "jobs"]],
)
def test_verbose_goes_before_or_after_the_command(argv: list[str]) -> None:
    """`latent-painter bot -v` was refused ("unrecognized arguments: -v")."""
    from bot.cli import build_parser

    assert build_parser().parse_args(argv).verbose is True
    assert build_parser().parse_args([a for a in argv if a not in ("-v", "--verbose")]).verbose is False

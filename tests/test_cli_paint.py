"""`latent-painter paint` and `demo` end to end: real pipeline, real ffmpeg, files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bot.cli import main
from painter.trail import Trail
from painter.video import read_frames


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def video_psnr(frame: np.ndarray, image: np.ndarray) -> float:
    """PSNR on luma: yuv420p keeps colour at half resolution, which random-weight noise defeats."""
    return psnr(luma(frame), luma(image))


BASE = ["--size", "128x128", "--steps", "8", "--seed", "5", "--scheduler", "ddim"]


def test_paint_writes_animation_image_and_heatmap(env_for, tmp_path, capsys):
    out = tmp_path / "lighthouse.mp4"
    trail_path = tmp_path / "t.safetensors"
    code = main(
        [
            "paint",
            "a lighthouse in a storm",
            *BASE,
            "--fps",
            "12",
            "--duration",
            "3",
            "--out",
            str(out),
            "--save-trail",
            str(trail_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "lighthouse.png" in printed and "lighthouse.heatmap.png" in printed
    meta, frames = read_frames(out)
    assert len(frames) == 36
    assert meta["fps"] == pytest.approx(12)
    assert meta["duration"] == pytest.approx(3.0, abs=0.1)
    final = np.asarray(Image.open(tmp_path / "lighthouse.png").convert("RGB"))
    assert final.shape == (128, 128, 3)
    # The animation ends on the final picture (through H.264's loss) and starts on blank paper.
    assert video_psnr(frames[-1], final) >= 35
    assert video_psnr(frames[len(frames) // 4], final) < 30
    paper = np.array((245, 240, 230))
    on_paper = lambda f: np.mean(np.abs(f.astype(int) - paper).sum(-1) < 30)  # noqa: E731
    assert on_paper(frames[0]) > 0.3
    assert on_paper(frames[0]) > on_paper(frames[-1])
    assert on_paper(frames[-1]) < 0.05
    heat = Image.open(tmp_path / "lighthouse.heatmap.png")
    assert heat.size == (128, 128)
    info = Image.open(tmp_path / "lighthouse.png").text
    assert info["prompt"] == "a lighthouse in a storm" and info["seed"] == "5"
    assert "Steps: 8" in info["parameters"]
    trail = Trail.load(trail_path)
    assert trail.meta.prompt == "a lighthouse in a storm"
    assert trail.latents.shape[1:] == (4, 16, 16)


@pytest.mark.parametrize("effect", ["glow", "sharpen"])
def test_other_effects_and_gif(env_for, tmp_path, effect):
    out = tmp_path / f"{effect}.gif"
    assert (
        main(
            ["paint", "boats", *BASE, "--effect", effect, "--fps", "8", "--duration", "2", "--out", str(out)]
        )
        == 0
    )
    assert out.read_bytes()[:6] == b"GIF89a"
    meta, frames = read_frames(out)
    assert len(frames) == 16


def test_size_budget_holds_when_small(env_for, tmp_path):
    out = tmp_path / "small.mp4"
    budget = 30_000
    assert (
        main(
            [
                "paint",
                "fields",
                *BASE,
                "--size",
                "192x192",
                "--fps",
                "12",
                "--duration",
                "4",
                "--max-bytes",
                str(budget),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert 0 < out.stat().st_size <= budget
    meta, frames = read_frames(out)
    assert len(frames) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["paint", ""], "prompt is empty"),
        (["paint", "x", "--size", "100x100"], "multiple of 8"),
        (["paint", "x", "--size", "4096x4096"], "between 64 and 1024"),
        (["paint", "x", "--steps", "0"], "steps"),
        (["paint", "x", "--model", "/nowhere/model"], "not a readable diffusers pipeline"),
        (["paint", "x", "--out", "/nowhere/dir/a.mp4"], "output directory /nowhere/dir does not exist"),
        (["paint", "x", "--out", "a.gif", "--format", "mp4"], "contradicts"),
        (["paint", "x", "--image", "/nowhere.png"], "nowhere.png"),
        (["paint", "x", "--fps", "500"], "fps"),
    ],
)
def test_bad_input_one_line_no_output(env_for, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["paint", "x", "--effect", "splash"], "invalid choice: 'splash'"),
        (["paint", "x", "--scheduler", "nope"], "invalid choice: 'nope'"),
        (["paint", "x", "--size", "big"], "must look like 512x512"),
    ],
)
def test_bad_choices_are_named(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_directory(env_for, tmp_path, capsys):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # permissions bind (not running as root)
            assert main(["paint", "x", *BASE, "--out", str(locked / "a.mp4")]) == 2
            assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)
    (locked / "a.mp4").mkdir()
    assert main(["paint", "x", *BASE, "--out", str(locked / "a.mp4")]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in locked.iterdir()) == ["a.mp4"]


def test_an_output_that_is_not_a_regular_file_is_left_alone(env_for, tmp_path, capsys):
    import os
    import stat

    pipe = tmp_path / "a.mp4"
    os.mkfifo(pipe)  # a device or a pipe would be renamed over by the finished video
    assert main(["paint", "x", *BASE, "--out", str(pipe)]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


def test_demo_paints_a_recognisable_picture(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    args = ["demo", "--out-dir", str(out_dir), "--size", "128x128", "--duration", "2", "--fps", "15"]
    assert main(args) == 0
    video = out_dir / "demo.mp4"
    meta, frames = read_frames(video)
    assert len(frames) == 30
    final = np.asarray(Image.open(out_dir / "demo.png").convert("RGB"))
    from painter.sample_image import sample_picture

    picture = np.asarray(sample_picture(128, 128))
    assert psnr(final, picture) > 35
    assert video_psnr(frames[-1], final) > 35
    assert (out_dir / "demo.heatmap.png").exists()


def test_demo_paints_the_users_picture(tmp_path):
    picture = tmp_path / "mine.png"
    grid = np.zeros((96, 96, 3), np.uint8)
    grid[:, :48] = (200, 30, 30)
    grid[:, 48:] = (20, 40, 200)
    Image.fromarray(grid).save(picture)
    out_dir = tmp_path / "d"
    assert (
        main(
            [
                "demo",
                "--image",
                str(picture),
                "--out-dir",
                str(out_dir),
                "--size",
                "96x96",
                "--duration",
                "1",
                "--fps",
                "10",
            ]
        )
        == 0
    )
    final = np.asarray(Image.open(out_dir / "demo.png").convert("RGB"))
    assert psnr(final, grid) > 35


def test_sdedit_from_a_picture(env_for, tmp_path):
    """SDEdit: the trail has steps × strength entries; --start-from-image opens on the picture."""
    picture = tmp_path / "in.png"
    art = np.zeros((128, 128, 3), np.uint8)
    art[:64] = (30, 90, 200)
    art[64:] = (40, 160, 60)
    art[40:90, 50:80] = (230, 200, 40)
    Image.fromarray(art).save(picture)
    out = tmp_path / "edit.mp4"
    trail_path = tmp_path / "edit.trail"
    args = [
        "paint",
        "a sunny meadow",
        *BASE,
        "--steps",
        "10",
        "--strength",
        "0.5",
        "--image",
        str(picture),
        "--start-from-image",
        "--fps",
        "10",
        "--duration",
        "2",
        "--out",
        str(out),
        "--save-trail",
        str(trail_path),
    ]
    assert main(args) == 0
    trail = Trail.load(trail_path)
    assert len(trail) == 5 and trail.meta.strength == 0.5
    meta, frames = read_frames(out)
    assert len(frames) == 20
    assert video_psnr(frames[0], art) >= 35  # opens on the input picture
    final = np.asarray(Image.open(tmp_path / "edit.png").convert("RGB"))
    assert video_psnr(frames[-1], final) >= 35
    # Its PNG names the picture it started from and how far it was noised.
    parameters = Image.open(tmp_path / "edit.png").text["parameters"]
    assert "Picture: in.png" in parameters and "Denoising strength: 0.5" in parameters
    assert "Sampler: " in parameters and "Seed: " in parameters


def test_sdedit_without_start_opens_on_paper(env_for, tmp_path):
    picture = tmp_path / "in.png"
    Image.fromarray(np.full((128, 128, 3), (200, 40, 40), np.uint8)).save(picture)
    out = tmp_path / "e.mp4"
    args = [
        "paint",
        "red",
        *BASE,
        "--image",
        str(picture),
        "--fps",
        "10",
        "--duration",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    meta, frames = read_frames(out)
    paper = np.array((245, 240, 230))
    assert np.mean(np.abs(frames[0].astype(int) - paper).sum(-1) < 30) > 0.95


@pytest.mark.parametrize("kind", ["text", "truncated", "huge"])
def test_bad_pictures_are_refused(env_for, tmp_path, monkeypatch, capsys, kind):
    import struct
    import zlib

    bad = tmp_path / "bad.png"
    if kind == "text":
        bad.write_text("this is not a picture\n")
    elif kind == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), np.uint8)).save(bad)
        bad.write_bytes(bad.read_bytes()[:2000])
    else:
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
        chunk = b"IHDR" + header
        bad.write_bytes(
            b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
        )
    monkeypatch.chdir(tmp_path)
    code = main(["paint", "x", *BASE, "--image", str(bad), "--out", "o.mp4"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "bad.png" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png"]


def test_taesd_paints_the_animation_and_the_vae_the_picture(env_for, tiny_taesd, tmp_path, monkeypatch):
    """[model] decoder = taesd: the animation is decoded by TAESD (fast), the delivered
    picture by the pipeline's own VAE (TAESD only approximates it)."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    from painter.decode import Decoder

    taesd_dir = tiny_taesd
    monkeypatch.setenv("LATENT_PAINTER_MODEL_DECODER", "taesd")
    monkeypatch.setenv("LATENT_PAINTER_MODEL_TAESD_ID", str(taesd_dir))
    out = tmp_path / "t.mp4"
    trail_path = tmp_path / "t.safetensors"
    code = main(
        ["paint", "a lighthouse", *BASE, "--fps", "8", "--duration", "2", "--out", str(out)]
        + ["--save-trail", str(trail_path)]
    )
    assert code == 0
    final_latent = Trail.load(trail_path).final[None]
    vae = AutoencoderKL.from_pretrained(env_for / "models" / "tiny" / "vae")
    by_vae = Decoder(vae, scaling_factor=float(vae.config.scaling_factor)).decode(final_latent)[0]
    by_taesd = Decoder(AutoencoderTiny.from_pretrained(taesd_dir)).decode(final_latent)[0]
    picture = np.asarray(Image.open(tmp_path / "t.png").convert("RGB"))
    assert np.array_equal(picture, by_vae)
    assert psnr(picture, by_taesd) < 20  # the two decoders really differ here
    _, frames = read_frames(out)
    assert video_psnr(frames[-1], by_taesd) > video_psnr(frames[-1], by_vae) + 5


def test_a_relative_model_path_is_recorded_absolute(env_for, tmp_path, monkeypatch, tiny_model):
    """--model ./dir: the trail names the model so it loads again from any directory
    (a transition or a repaint of it runs elsewhere, later)."""
    from painter.models import load_pipeline

    project = tmp_path / "project"
    project.mkdir()
    (project / "my-model").symlink_to(tiny_model)
    monkeypatch.chdir(project)
    trail_path = tmp_path / "t.safetensors"
    args = ["paint", "a lighthouse", *BASE, "--fps", "4", "--duration", "1", "--model", "./my-model"]
    assert main([*args, "--out", str(tmp_path / "t.mp4"), "--save-trail", str(trail_path)]) == 0
    recorded = Trail.load(trail_path).meta.model_id
    assert recorded == str((project / "my-model").resolve())
    monkeypatch.chdir(tmp_path)
    assert load_pipeline(recorded).model_id == recorded
    # The picture is shown to members: its text names the checkpoint's folder, not the
    # server's path to it.
    text = Image.open(tmp_path / "t.png").text
    folder = Path(recorded).name
    assert text["model"] == folder and f"Model: {folder}," in text["parameters"]
    assert str(Path(recorded).parent) not in " ".join(text.values())


def test_members_see_a_local_checkpoint_by_its_folder_name() -> None:
    from painter.models import model_label

    assert model_label("/home/owner/models/sd15-house") == "sd15-house"
    assert model_label("/srv/sd15/") == "sd15"
    for shown in ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tiny", "analytic", None):
        assert model_label(shown) == shown


def test_a_job_failing_mid_animation_leaves_no_file(env_for, tmp_path):
    """The picture and trail are written while the animation renders; if the animation
    then fails (here: the progress callback raises, as a cancelled job's does), they go
    too — nothing of the job is left."""
    import time

    from bot.config import load_settings
    from bot.paint_job import PaintRequest, run_paint

    settings = load_settings(
        env={},
        overrides={
            "model": {"id": "tiny"},
            "painter": {"width": 64, "height": 64, "steps": 4, "fps": 10, "duration": 2.0},
            "storage": {"data_dir": str(env_for)},
        },
    )

    class Stop(Exception):
        pass

    def on_frame(done: int, total: int, image: np.ndarray) -> None:
        if done == total - 2:
            # Written beside the animation, not after it: it appears while the animation waits.
            deadline = time.monotonic() + 30
            while not (tmp_path / "job.png").is_file() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (tmp_path / "job.png").is_file()
            raise Stop

    with pytest.raises(Stop):
        run_paint(settings, PaintRequest("a lighthouse", seed=3), tmp_path / "job.mp4", on_frame=on_frame)
    assert list(tmp_path.iterdir()) == []
    outputs = run_paint(settings, PaintRequest("a lighthouse", seed=3), tmp_path / "job.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "job.heatmap.png",
        "job.mp4",
        "job.png",
        "job.trail.safetensors",
    ]
    assert outputs.trail_path == tmp_path / "job.trail.safetensors"


def test_an_analytic_paint_records_its_picture_and_no_sampler_guidance_or_seed(tmp_path, capsys):
    """The closed-form model has no sampler, guidance or seed: its PNG says which picture it painted."""
    picture = tmp_path / "harbour.png"
    art = np.zeros((64, 64, 3), np.uint8)
    art[:32] = (40, 90, 200)
    art[32:] = (200, 120, 40)
    Image.fromarray(art).save(picture)
    out = tmp_path / "h.mp4"
    args = ["paint", "", "--model", "analytic", "--image", str(picture), "--size", "64x64"]
    assert main([*args, "--seed", "7", "--fps", "10", "--duration", "1", "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("model analytic, 30 steps")  # no seed printed either
    info = Image.open(tmp_path / "h.png").text
    parameters = info["parameters"]
    for absent in ("Sampler", "CFG scale", "Seed", "Negative prompt"):
        assert absent not in parameters
    assert not {"seed", "guidance", "negative_prompt", "sampler"} & info.keys()
    assert "Picture: harbour.png" in parameters and info["picture"] == "harbour.png"
    assert "Model: analytic" in parameters and "Steps: 30" in parameters
    assert parameters.endswith("Effect: strokes")

"""`latent-painter transition` end to end: tiny models, real trails, real ffmpeg."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from bot import cli_transition
from bot.cli import main
from bot.config import EFFECTS, load_settings
from painter import transition
from painter.capture import Generation, capture
from painter.decode import Decoder
from painter.models import LoadedModel, load_pipeline
from painter.trail import Trail
from painter.video import read_frames

# 24 frames: the opening on the source, a dozen painted, and the closing hold.
FAST = ["--fps", "8", "--duration", "3"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR of the luma (BT.601 Y) of two RGB uint8 pictures, in dB.

    Luma, because the MP4 is yuv420p: chroma keeps a quarter of its samples, and the
    tiny random VAE paints per-pixel colour noise, which caps RGB PSNR near 25 dB even
    losslessly encoded; luma is what H.264 keeps at full resolution.
    """
    weights = np.array([0.299, 0.587, 0.114])
    mse = np.mean((a.astype(np.float64) @ weights - b.astype(np.float64) @ weights) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def decode(model: LoadedModel, latent: torch.Tensor) -> np.ndarray:
    """The picture a final latent shows, decoded independently of the command."""
    config = model.vae.config
    decoder = Decoder(
        model.vae, scaling_factor=config.scaling_factor, shift_factor=config.shift_factor or 0.0
    )
    return decoder.decode(latent[None])[0]


class Results:
    """Trail files of a few tiny generations, and the models that made them."""

    def __init__(self, root: Path, data_dir: Path, pair: tuple[Path, Path], other: Path) -> None:
        self.root = root
        self.models: dict[str, LoadedModel] = {}
        self.trails: dict[str, Path] = {}
        self.data_dir = data_dir
        self.make("a", "tiny", seed=1)
        self.make("b", "tiny", seed=2)
        self.make("c", "tiny", seed=3)
        self.make("wide", "tiny", seed=4, width=96)
        self.make("pair_a", str(pair[0]), seed=5)
        self.make("pair_b", str(pair[1]), seed=6)
        self.make("other", str(other), seed=7)

    def model(self, model_id: str) -> LoadedModel:
        if model_id not in self.models:
            self.models[model_id] = load_pipeline(model_id, data_dir=self.data_dir, device="cpu")
        return self.models[model_id]

    def make(self, name: str, model_id: str, *, seed: int, width: int = 64) -> None:
        gen = Generation(prompt=f"a picture {name}", seed=seed, steps=4, guidance=3.0, width=width, height=64)
        _, trail = capture(self.model(model_id), gen)
        self.trails[name] = trail.save(self.root / f"{name}.trail.safetensors")

    def paths(self, *names: str) -> list[Path]:
        return [self.trails[name] for name in names]

    def final_image(self, name: str) -> np.ndarray:
        trail = Trail.load(self.trails[name])
        return decode(self.model(trail.meta.model_id), trail.final)


@pytest.fixture(scope="module")
def results(tmp_path_factory, data_dir, tiny_pair_same_vae, tiny_other_vae) -> Results:
    return Results(tmp_path_factory.mktemp("trails"), data_dir, tiny_pair_same_vae, tiny_other_vae)


@pytest.fixture
def run(env_for, capsys):
    """Run the command in-process; returns (exit code, stdout, stderr)."""

    def _run(*argv: str | Path) -> tuple[int, str, str]:
        code = main([str(arg) for arg in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return _run


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("latent-painter: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_guidance_choices_match_the_library() -> None:
    assert cli_transition.GUIDANCES == transition.GUIDANCES


@pytest.mark.parametrize("effect", EFFECTS)
def test_video_starts_on_the_source_and_ends_on_the_destination(run, results, tmp_path, effect) -> None:
    out = tmp_path / "ab.mp4"
    code, stdout, err = run("transition", *results.paths("a", "b"), "--effect", effect, *FAST, "--out", out)
    assert code == 0, err
    _, frames = read_frames(out)
    assert len(frames) == 24
    a, b = results.final_image("a"), results.final_image("b")
    assert psnr(frames[0], a) >= 35 and psnr(frames[0], b) < 25
    assert psnr(frames[-1], b) >= 35 and psnr(frames[-1], a) < 25
    # The final picture is the destination's, exactly; the heatmap is the video's size.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ab.png")), b)
    assert Image.open(tmp_path / "ab.heatmap.png").size == (64, 64)
    assert str(out) in stdout


def test_last_frame_is_the_destination_exactly_before_encoding(env_for, results, tmp_path) -> None:
    images: list[np.ndarray] = []
    outputs = cli_transition.run_transition(
        load_settings(overrides={"painter": {"fps": 8, "duration": 3.0}}),
        results.paths("a", "b"),
        tmp_path / "ab.mp4",
        depth=0.5,
        on_frame=lambda done, total, image: images.append(image.copy()),
    )
    assert len(images) == 24
    assert np.array_equal(images[-1], results.final_image("b"))
    assert np.array_equal(images[0], results.final_image("a"))
    assert torch.equal(outputs.plan.start, Trail.load(results.trails["a"]).final)
    assert outputs.paths() == [tmp_path / "ab.mp4", tmp_path / "ab.png", tmp_path / "ab.heatmap.png"]


def test_transition_between_two_checkpoints_sharing_a_vae(run, results, tmp_path) -> None:
    out = tmp_path / "pair.mp4"
    code, stdout, err = run(
        "transition", *results.paths("pair_a", "pair_b"), *FAST, "--depth", "0.5", "--out", out
    )
    assert code == 0, err
    _, frames = read_frames(out)
    assert psnr(frames[0], results.final_image("pair_a")) >= 35
    assert psnr(frames[-1], results.final_image("pair_b")) >= 35
    # Two UNets with different weights made these trails.
    metas = [Trail.load(path).meta for path in results.paths("pair_a", "pair_b")]
    assert metas[0].model_id != metas[1].model_id
    assert metas[0].vae_id == metas[1].vae_id
    assert f"{metas[0].model_id} → {metas[1].model_id}" in stdout


def test_interpolate_guidance_and_gif(run, results, tmp_path) -> None:
    out = tmp_path / "edit.gif"
    code, _, err = run(
        "transition", *results.paths("a", "c"), "--guidance", "interpolate", *FAST, "--out", out
    )
    assert code == 0, err
    assert out.read_bytes()[:6] == b"GIF89a"
    assert (tmp_path / "edit.heatmap.png").is_file()


def test_chain_through_three_results_is_one_video(run, results, tmp_path) -> None:
    out = tmp_path / "reel.mp4"
    code, stdout, err = run("transition", *results.paths("a", "b", "c"), *FAST, "--out", out)
    assert code == 0, err
    parameters = Image.open(tmp_path / "reel.png").text["parameters"]
    assert 'Transition: from "a picture a" (Seed: 1, Model: tiny) via "a picture b" (Seed: 2' in parameters
    _, frames = read_frames(out)
    assert len(frames) == 24
    assert psnr(frames[0], results.final_image("a")) >= 35
    assert psnr(frames[-1], results.final_image("c")) >= 35
    assert "3 results" in stdout


def test_the_png_says_it_is_a_transition_and_from_what(run, results, tmp_path) -> None:
    out = tmp_path / "ab.mp4"
    code, _, err = run("transition", *results.paths("a", "b"), "--effect", "glow", *FAST, "--out", out)
    assert code == 0, err
    info = Image.open(tmp_path / "ab.png").text
    first, parameters, transition_line = info["parameters"].split("\n")
    # The picture is the destination's: its own generation, with no effect of its own ...
    assert first == "a picture b" and info["prompt"] == "a picture b" and info["seed"] == "2"
    assert "Seed: 2" in parameters and "Effect" not in parameters
    # ... reached by a transition from the source, with the transition's effect.
    assert transition_line == (
        'Transition: from "a picture a" (Seed: 1, Model: tiny), Effect: glow, Guidance: schedule, Depth: 1'
    )
    assert info["transition_from"] == '"a picture a" (Seed: 1, Model: tiny)'
    assert info["effect"] == "glow"


def test_different_vaes_are_refused_naming_both(run, results, tmp_path) -> None:
    code, _, err = run("transition", *results.paths("a", "other"), "--out", tmp_path / "x.mp4")
    a, other = (Trail.load(path).meta for path in results.paths("a", "other"))
    assert a.vae_id != other.vae_id
    assert_one_line_error(code, err, a.vae_id, other.vae_id, a.model_id, other.model_id)
    assert list(tmp_path.iterdir()) == []


def test_sizes_differ_refused_without_resize_and_painted_with_it(run, results, tmp_path) -> None:
    out = tmp_path / "wide.mp4"
    code, _, err = run("transition", *results.paths("a", "wide"), *FAST, "--out", out)
    assert_one_line_error(code, err, "sizes differ (8×8 vs 12×8 latents)", "--resize")
    assert list(tmp_path.iterdir()) == []

    code, stdout, err = run("transition", *results.paths("a", "wide"), *FAST, "--resize", "--out", out)
    assert code == 0, err
    meta, frames = read_frames(out)
    assert meta["size"] == (64, 64)
    assert psnr(frames[0], results.final_image("a")) >= 35
    # The last frame is the destination's middle at the source's size, decoded: 96x64 is
    # already as tall as 64x64, so its middle 8 of 12 latent columns, not a squeezed whole.
    wide = Trail.load(results.trails["wide"])
    middle = decode(results.model("tiny"), wide.final[:, :, 2:10])
    assert psnr(frames[-1], middle) >= 35
    assert psnr(frames[-1], decode(results.model("tiny"), transition.resize_trail(wide, (8, 8)).final)) < 25
    assert f"{results.trails['wide']}: cropped from 96x64 to 64x64 (left and right cut)" in stdout
    final = Image.open(tmp_path / "wide.png")
    assert final.size == (64, 64)
    assert "Size: 64x64," in final.text["parameters"] and "Size: 96x64" not in final.text["parameters"]
    assert final.text["parameters"].endswith(
        ", Destination: cropped from 96x64 to 64x64 (left and right cut)"
    )


def test_missing_and_truncated_trails_are_refused(run, results, tmp_path) -> None:
    out = tmp_path / "x.mp4"
    code, _, err = run("transition", tmp_path / "nope.safetensors", *results.paths("b"), "--out", out)
    assert_one_line_error(code, err, "trail file not found", "nope.safetensors")

    data = results.trails["b"].read_bytes()
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = run("transition", *results.paths("a"), truncated, "--out", out)
    assert_one_line_error(code, err, "cut.safetensors", "damaged or truncated")
    assert [p.name for p in tmp_path.iterdir()] == ["cut.safetensors"]


@pytest.mark.parametrize("depth", ["0", "1.5", "-0.2", "nan"])
def test_depth_outside_range_is_refused(run, results, tmp_path, depth) -> None:
    code, _, err = run("transition", *results.paths("a", "b"), "--depth", depth, "--out", tmp_path / "x.mp4")
    assert_one_line_error(code, err, "depth must be in (0, 1]")
    assert list(tmp_path.iterdir()) == []


def test_same_trail_twice_and_missing_output_directory_are_refused(run, results, tmp_path) -> None:
    code, _, err = run("transition", *results.paths("a", "a"), "--out", tmp_path / "x.mp4")
    assert_one_line_error(code, err, "same trail")
    code, _, err = run("transition", *results.paths("a", "b"), "--out", tmp_path / "no" / "x.mp4")
    assert_one_line_error(code, err, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_trails_saved_by_paint_transition(run, results, tmp_path) -> None:
    trail = tmp_path / "p.trail.safetensors"
    paint = ["paint", "a lighthouse", "--model", "tiny", "--size", "64x64", "--steps", "3", "--seed", "9"]
    code, _, err = run(*paint, *FAST, "--out", tmp_path / "p.mp4", "--save-trail", trail)
    assert code == 0, err
    out = tmp_path / "pb.mp4"
    code, _, err = run("transition", trail, *results.paths("b"), *FAST, "--out", out)
    assert code == 0, err
    _, frames = read_frames(out)
    assert psnr(frames[0], np.asarray(Image.open(tmp_path / "p.png"))) >= 35
    assert psnr(frames[-1], results.final_image("b")) >= 35


def circle_picture(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> Path:
    """A picture of ``size`` with a centred circle, a third of its shorter side across, on white."""
    image = Image.new("RGB", size, "white")
    radius = min(size) / 3
    centre = size[0] / 2, size[1] / 2
    box = [centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius]
    ImageDraw.Draw(image).ellipse(box, fill=colour)
    image.save(path)
    return path


def blue_box(picture: np.ndarray) -> tuple[int, int]:
    """Height and width of the clearly blue pixels of an RGB picture."""
    rgb = picture.astype(int)
    blue = (rgb[..., 2] > 128) & (rgb[..., 0] < 100) & (rgb[..., 1] < 100)
    rows, cols = np.flatnonzero(blue.any(axis=1)), np.flatnonzero(blue.any(axis=0))
    return int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1


def test_another_shape_is_cropped_not_stretched_and_the_png_says_so(run, tmp_path) -> None:
    """A tall painting of a circle shown square stays a circle (scaled to cover, top and
    bottom cut), and the final picture's text gives the size delivered and how it was made."""
    trails = {}
    for name, size, colour in (("square", (128, 128), (200, 30, 30)), ("tall", (64, 128), (30, 30, 200))):
        picture = circle_picture(tmp_path / f"{name}-picture.png", size, colour)
        trails[name] = tmp_path / f"{name}.trail.safetensors"
        code, _, err = run(
            "paint", "", "--model", "analytic", "--image", picture, "--size", f"{size[0]}x{size[1]}",
            *FAST, "--out", tmp_path / f"{name}.mp4", "--save-trail", trails[name],
        )  # fmt: skip
        assert code == 0, err
    height, width = blue_box(np.asarray(Image.open(tmp_path / "tall.png")))
    assert height == width and abs(height - 44) <= 2, (height, width)

    out = tmp_path / "t.mp4"
    code, stdout, err = run(
        "transition", trails["square"], trails["tall"], "--resize", "--effect", "fade", *FAST, "--out", out
    )
    assert code == 0, err
    note = "cropped from 64x128 to 128x128 (scaled to 128x256, top and bottom cut)"
    assert f"{trails['tall']}: {note}" in stdout
    meta, frames = read_frames(out)
    assert meta["size"] == (128, 128)
    final = Image.open(tmp_path / "t.png")
    assert final.size == (128, 128)
    # Twice as large, and round: a stretched 44x44 circle would be 44 high and 88 wide.
    for picture in (np.asarray(final), frames[-1]):
        height, width = blue_box(picture)
        assert abs(height - width) <= 2 and abs(height - 88) <= 3, (height, width)
    parameters = final.text["parameters"].split("\n")
    assert parameters[1].endswith("Picture: tall-picture.png, Size: 128x128")
    assert parameters[2] == (
        "Transition: from analytic painting of square-picture.png, Effect: fade, Guidance: schedule, "
        f"Depth: 1, Destination: {note}"
    )
    assert (final.text["transition_fitted"], final.text["transition_fitted_from"]) == ("cropped", "64x128")

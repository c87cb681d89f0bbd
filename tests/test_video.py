"""Streaming H.264 encoding, GIF/WebP, and the size budget, through real ffmpeg."""

from __future__ import annotations

import numpy as np
import pytest

from painter.video import (
    EncodeError,
    FrameEncoder,
    encoder_processes,
    fit_to_budget,
    probe_frames,
    read_frames,
)


def noisy_frames(n: int, size=(128, 96), seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for i in range(n):
        frame = np.roll(base, i * 3, axis=1)
        yield frame


def write_master(path, n=30, fps=10, size=(128, 96), crf=18):
    with FrameEncoder(path, size=size, fps=fps, crf=crf) as enc:
        for frame in noisy_frames(n, size):
            enc.write(frame)
    return path


def test_mp4_is_h264_yuv420p_with_faststart(tmp_path):
    path = write_master(tmp_path / "a.mp4")
    meta, frames = read_frames(path)
    assert len(frames) == 30
    assert meta["size"] == (128, 96)
    assert meta["fps"] == pytest.approx(10)
    data = path.read_bytes()
    # faststart puts the index (moov) before the media data (mdat).
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    assert b"avc1" in data


def test_bad_frame_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        with FrameEncoder(tmp_path / "b.mp4", size=(64, 64), fps=5) as enc:
            enc.write(np.zeros((32, 32, 3), np.uint8))


def _luma_psnr(a: np.ndarray, b: np.ndarray) -> float:
    weights = np.array([0.299, 0.587, 0.114])
    mse = np.mean((a.astype(float) @ weights - b.astype(float) @ weights) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_segments_encoded_side_by_side_join_into_one_stream_of_every_frame(tmp_path):
    # 47 frames in segments of 10 over 3 processes: five segments, the last one short,
    # and a process reused for the fourth and fifth.
    source = list(noisy_frames(47))
    alone = tmp_path / "alone.mp4"
    with FrameEncoder(alone, size=(128, 96), fps=10, crf=18) as enc:
        for frame in source:
            enc.write(frame)
    joined = tmp_path / "joined.mp4"
    with FrameEncoder(joined, size=(128, 96), fps=10, crf=18, processes=3, segment=10) as enc:
        for frame in source:
            enc.write(frame)
    meta, frames = read_frames(joined)
    assert len(frames) == 47 and meta["fps"] == pytest.approx(10)
    assert meta["duration"] == pytest.approx(4.7, abs=0.15)
    data = joined.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")
    # Frame for frame the same picture as one process makes, in order.
    _, single = read_frames(alone)
    for i in (0, 9, 10, 11, 29, 30, 46):
        assert _luma_psnr(frames[i], source[i]) > 30
        assert _luma_psnr(frames[i], single[i]) > 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alone.mp4", "joined.mp4"]


def test_a_failed_segmented_encode_leaves_no_segment_files(tmp_path):
    out = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="painter failed"):
        with FrameEncoder(out, size=(128, 96), fps=10, processes=2, segment=4) as enc:
            for i, frame in enumerate(noisy_frames(20)):
                if i == 13:
                    raise RuntimeError("painter failed")
                enc.write(frame)
    assert list(tmp_path.iterdir()) == []


def test_an_ffmpeg_failure_in_a_segment_is_reported(tmp_path):
    # ffmpeg cannot write into a directory that does not exist: the segment's process fails.
    out = tmp_path / "missing" / "x.mp4"
    with pytest.raises(EncodeError, match="video encoding failed"):
        with FrameEncoder(out, size=(128, 96), fps=10, processes=2, segment=4) as enc:
            for frame in noisy_frames(12):
                enc.write(frame)


def test_encoder_processes_follow_the_cores_unless_set():
    assert encoder_processes(0, cores=2) == 1
    assert encoder_processes(0, cores=7) == 1
    assert encoder_processes(0, cores=8) == 2
    assert encoder_processes(0, cores=16) == 4
    assert encoder_processes(0, cores=128) == 4
    assert encoder_processes(3, cores=2) == 3
    with pytest.raises(ValueError, match="whole number"):
        encoder_processes(-1)


def test_budget_met_by_bitrate_then_fps_then_resolution(tmp_path):
    master = write_master(tmp_path / "m.mp4", n=60, crf=0)
    big = master.stat().st_size
    out = tmp_path / "small.mp4"
    info = fit_to_budget(master, out, "mp4", fps=10, frames=60, width=128, height=96, max_bytes=big // 6)
    assert out.stat().st_size <= big // 6
    assert info.bytes == out.stat().st_size
    assert not master.exists()
    count, duration = probe_frames(out)
    assert duration == pytest.approx(6.0, abs=0.3)
    assert not list(tmp_path.glob("*.try"))


def test_impossible_budget_still_produces_the_smallest_file(tmp_path):
    master = write_master(tmp_path / "m.mp4", n=40, crf=0)
    out = tmp_path / "tiny.mp4"
    info = fit_to_budget(master, out, "mp4", fps=10, frames=40, width=128, height=96, max_bytes=10_000)
    assert out.exists()
    assert info.width < 128 or info.fps < 10 or info.bytes <= 10_000


@pytest.mark.parametrize(("fmt", "magic"), [("gif", b"GIF89a"), ("webp", b"WEBP")])
def test_gif_and_webp(tmp_path, fmt, magic):
    master = write_master(tmp_path / "m.mp4", n=20)
    out = tmp_path / f"a.{fmt}"
    info = fit_to_budget(master, out, fmt, fps=10, frames=20, width=128, height=96, max_bytes=5_000_000)
    head = out.read_bytes()[:16]
    assert magic in head
    assert info.format == fmt


def _picture(size=(128, 96), seed=1) -> np.ndarray:
    """A smooth picture with some edges and texture, like a painting's final frame."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([200 * x + 30, 160 * y + 50, 120 * (1 - x * y) + 60], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(8, 25)
        disc = (np.mgrid[0:h, 0:w][1] - cx) ** 2 + (np.mgrid[0:h, 0:w][0] - cy) ** 2 < r * r
        img[disc] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_painting(path, picture: np.ndarray, fps=10, hold=10):
    """A master that paints ``picture`` onto paper as the painter does: a blurred picture
    fades in, then its details arrive a little each frame (small steps from frame to frame
    are what lossy animated WebP let drift), then the finished picture is held."""
    from PIL import Image, ImageFilter

    paper = np.full(picture.shape, 240.0)
    blurred = np.asarray(Image.fromarray(picture).filter(ImageFilter.GaussianBlur(4)), dtype=np.float64)
    sharp = picture.astype(np.float64)
    steps = [paper + k / 8 * (blurred - paper) for k in range(1, 9)]
    steps += [blurred + k / 24 * (sharp - blurred) for k in range(1, 25)]
    with FrameEncoder(path, size=picture.shape[1::-1], fps=fps, crf=12) as enc:
        for frame in steps + [sharp] * hold:
            enc.write(np.round(frame).astype(np.uint8))
    return path


def test_webp_under_a_small_budget_ends_on_the_clean_picture_and_uses_the_budget(tmp_path):
    from PIL import Image

    picture = _picture()
    master = write_painting(tmp_path / "m.mp4", picture)
    unlimited = tmp_path / "big.webp"
    fit_to_budget(
        write_painting(tmp_path / "m2.mp4", picture),
        unlimited,
        "webp",
        fps=10,
        frames=42,
        width=128,
        height=96,
        max_bytes=10_000_000,
    )
    budget = unlimited.stat().st_size // 2
    out = tmp_path / "small.webp"
    info = fit_to_budget(master, out, "webp", fps=10, frames=42, width=128, height=96, max_bytes=budget)
    assert info.bytes == out.stat().st_size <= budget
    # Most of the budget goes into the picture, not left unused.
    assert info.bytes >= 0.6 * budget, (info.bytes, budget)
    anim = Image.open(out)
    assert anim.n_frames > 1
    anim.seek(anim.n_frames - 1)
    last = np.asarray(anim.convert("RGB"))
    ref = np.asarray(Image.fromarray(picture).resize(anim.size, Image.LANCZOS))
    assert _luma_psnr(last, ref) >= 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.webp", "small.webp"]

"""Streaming H.264 encoding, GIF/WebP, and the size budget, through real ffmpeg."""

from __future__ import annotations

import numpy as np
import pytest

from painter.video import FrameEncoder, fit_to_budget, probe_frames, read_frames


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

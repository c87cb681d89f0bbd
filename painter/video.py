"""Stream frames into H.264 MP4 (or GIF / animated WebP) with imageio-ffmpeg, within a size budget.

Frames are encoded as they arrive, from a background thread, so decoding the next
batch overlaps encoding the last and no animation is ever held in memory whole. The
first encode is the high-quality master; only if it is over the byte budget is it
transcoded, lowering the bitrate first, then the frame rate, then the resolution —
a budget is always met, never refused.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

FORMATS = ("mp4", "gif", "webp")
# How far the size budget may push an animation down before it is accepted as it is.
MIN_BITRATE = 8_000
MIN_SIDE = 32
MIN_FPS = 5
_STOP = object()


class EncodeError(RuntimeError):
    """ffmpeg failed; the message carries the end of its log."""


@dataclass
class VideoInfo:
    path: Path
    format: str
    frames: int
    fps: float
    width: int
    height: int
    bytes: int


# x264's "fast" preset: on painted frames (512², CRF 20) it encoded 1.2-1.5x faster than
# "medium" with the same quality (34.1 against 34.2 dB) and 5 % smaller files; with TAESD on a
# GPU the encoder, not the decoder, is what a job waits for at its end (bench/RESULTS.md).
PRESET = "fast"


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


class FrameEncoder:
    """Encodes RGB frames to an H.264 MP4 as they are written; use as a context manager."""

    def __init__(self, path: str | Path, *, size: tuple[int, int], fps: float, crf: int = 20) -> None:
        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.crf = crf
        self.frames = 0
        self._queue: queue.Queue = queue.Queue(maxsize=32)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="frame-encoder", daemon=True)

    def __enter__(self) -> FrameEncoder:
        self._thread.start()
        return self

    def _run(self) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(self.path),
            self.size,
            fps=self.fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=2,
            output_params=["-crf", str(self.crf), "-preset", PRESET, "-movflags", "+faststart"],
            ffmpeg_log_level="error",
        )
        try:
            writer.send(None)
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if self._error is None:
                    writer.send(item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
            self._error = exc
            while self._queue.get() is not _STOP:
                pass
        finally:
            try:
                writer.close()
            except Exception as exc:  # noqa: BLE001
                self._error = self._error or exc

    def write(self, frame: np.ndarray) -> None:
        """Queue one ``[H, W, 3]`` uint8 frame; blocks when the encoder is behind."""
        if self._error is not None:
            raise EncodeError(f"video encoding failed: {self._error}")
        if frame.shape[1::-1] != self.size or frame.dtype != np.uint8:
            raise ValueError(f"frame is {frame.shape} {frame.dtype}, expected {self.size[::-1]}x3 uint8")
        self._queue.put(np.ascontiguousarray(frame))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if exc_type is None and self._error is not None:
            raise EncodeError(f"video encoding failed: {self._error}")


def _run_ffmpeg(args: list[str]) -> None:
    proc = subprocess.run(
        [ffmpeg_exe(), "-nostdin", "-y", "-hide_banner", "-loglevel", "error", *args],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise EncodeError(f"ffmpeg failed: {proc.stderr.strip()[-500:]}")


def transcode(
    master: Path,
    out: Path,
    fmt: str,
    *,
    fps: float,
    width: int,
    height: int,
    bitrate: int | None = None,
    crf: int = 20,
) -> None:
    """Re-encode the master MP4 to ``fmt`` at the given rate, size and bitrate."""
    scale = f"fps={fps:g},scale={width}:{height}:flags=lanczos"
    if fmt == "mp4":
        rate = (
            ["-b:v", str(bitrate), "-maxrate", str(bitrate), "-bufsize", str(2 * bitrate)]
            if bitrate
            else ["-crf", str(crf)]
        )
        args = ["-i", str(master), "-vf", scale, "-c:v", "libx264", "-pix_fmt", "yuv420p", *rate]
        args += ["-preset", PRESET, "-movflags", "+faststart", "-an", "-f", "mp4", str(out)]
    elif fmt == "gif":
        # A palette made from the animation itself keeps GIF banding down.
        graph = f"{scale},split[a][b];[a]palettegen=stats_mode=diff[p];[b][p]paletteuse=dither=bayer"
        args = ["-i", str(master), "-filter_complex", graph, "-loop", "0", "-f", "gif", str(out)]
    elif fmt == "webp":
        quality = 80 if bitrate is None else max(5, min(80, bitrate // 20_000))
        args = ["-i", str(master), "-vf", scale, "-c:v", "libwebp_anim", "-lossless", "0"]
        args += ["-q:v", str(quality), "-loop", "0", "-an", "-f", "webp", str(out)]
    else:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    _run_ffmpeg(args)


def fit_to_budget(
    master: Path,
    out: Path,
    fmt: str,
    *,
    fps: float,
    frames: int,
    width: int,
    height: int,
    max_bytes: int,
) -> VideoInfo:
    """Write ``out`` from the master within ``max_bytes``: bitrate, then fps, then resolution.

    The master itself is used when it is already an MP4 within budget. Each try is
    written to a temporary name, so ``out`` only ever appears complete.
    """
    duration = max(frames / fps, 1e-3)
    if fmt == "mp4" and master.stat().st_size <= max_bytes:
        os.replace(master, out)
        return VideoInfo(out, fmt, frames, fps, width, height, out.stat().st_size)
    attempt = out.with_name(out.name + ".try")
    cur_fps, cur_w, cur_h = float(fps), width, height
    # Leave room for the container and rate-control overshoot.
    bitrate = int(max_bytes * 8 * 0.85 / duration)
    bitrate_tries = 0
    try:
        while True:
            transcode(master, attempt, fmt, fps=cur_fps, width=cur_w, height=cur_h, bitrate=bitrate)
            size = attempt.stat().st_size
            floor = (cur_w <= MIN_SIDE or cur_h <= MIN_SIDE) and cur_fps <= MIN_FPS
            if size <= max_bytes or (floor and (fmt == "gif" or bitrate <= MIN_BITRATE)):
                # Within budget, or as small as an animation can usefully get.
                os.replace(attempt, out)
                shown = max(1, round(frames * cur_fps / fps))
                return VideoInfo(out, fmt, shown, cur_fps, cur_w, cur_h, size)
            if fmt != "gif" and bitrate > MIN_BITRATE and bitrate_tries < 3:
                # GIF has no rate control; the others shrink in proportion to the overshoot.
                bitrate = max(MIN_BITRATE, int(bitrate * 0.9 * max_bytes / size))
                bitrate_tries += 1
            elif cur_fps > 10:
                cur_fps = max(10.0, cur_fps / 2)
            elif cur_w > MIN_SIDE and cur_h > MIN_SIDE:
                cur_w, cur_h = _even(cur_w * 0.7), _even(cur_h * 0.7)
            elif cur_fps > MIN_FPS:
                cur_fps = float(MIN_FPS)
            else:
                bitrate = MIN_BITRATE
    finally:
        attempt.unlink(missing_ok=True)
        master.unlink(missing_ok=True)


def _even(value: float) -> int:
    return max(MIN_SIDE, int(value) // 2 * 2)


def probe_frames(path: str | Path) -> tuple[int, float]:
    """Count the frames of a video and read its duration, by decoding it with ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    count = sum(1 for _ in reader)
    return count, float(meta.get("duration") or 0.0)


def read_frames(path: str | Path) -> tuple[dict, list[np.ndarray]]:
    """Decode a whole (short) video to RGB frames; for tests and previews."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    return meta, frames

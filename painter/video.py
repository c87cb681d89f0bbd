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


def encoder_processes(setting: int = 0, cores: int | None = None) -> int:
    """How many x264 processes to encode one animation with: ``setting``, or with 0 (auto)
    one per 4 cores (at most 4), and a single process on machines under 8 cores.

    One x264 process does not fill a large machine at 512²: on a 16-core Xeon it encoded
    467 frames/s (preset medium) where the same work per core would give ~1,000, so the
    frames are cut into segments encoded side by side (bench/bench_encode.py).
    """
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(f"encoder processes must be a whole number, 0 for auto; got {setting!r}")
    if setting:
        return setting
    cores = cores if cores is not None else usable_cores()
    return 1 if cores < 8 else min(4, cores // 4)


def usable_cores() -> int:
    """The cores this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere, all of them
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


class _Segment:
    """One ffmpeg process encoding frames handed to it through a small queue, on its own thread."""

    def __init__(self, encoder: FrameEncoder, path: Path) -> None:
        self.path = path
        self.error: BaseException | None = None
        self.queue: queue.Queue = queue.Queue(maxsize=8)  # x264's look-ahead holds more
        self._finished = False
        self._encoder = encoder
        self._thread = threading.Thread(target=self._run, name="frame-encoder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        enc = self._encoder
        try:
            writer = imageio_ffmpeg.write_frames(
                str(self.path),
                enc.size,
                fps=enc.fps,
                codec="libx264",
                pix_fmt_in="rgb24",
                pix_fmt_out="yuv420p",
                quality=None,
                macro_block_size=2,
                output_params=[
                    "-crf",
                    str(enc.crf),
                    "-preset",
                    PRESET,
                    "-movflags",
                    "+faststart",
                    *enc.threads,
                ],
                ffmpeg_log_level="error",
            )
            writer.send(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the producer's thread
            self.error = exc
            writer = None
        try:
            while True:
                item = self.queue.get()
                if item is _STOP:
                    break
                if self.error is None and writer is not None:
                    writer.send(item)
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            while self.queue.get() is not _STOP:
                pass
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception as exc:  # noqa: BLE001
                    self.error = self.error or exc

    def finish(self) -> None:
        """Wait until this segment's ffmpeg has written its file (or failed)."""
        if not self._finished:
            self._finished = True
            self.queue.put(_STOP)
            self._thread.join()


class FrameEncoder:
    """Encodes RGB frames to an H.264 MP4 as they are written; use as a context manager.

    With ``processes`` > 1 the frames are cut into segments of ``segment`` frames, each
    encoded by its own ffmpeg process (at most ``processes`` at once, handed out in
    turn) and joined without re-encoding at the end; each segment starts on a key
    frame, ~7 kB more per segment at 512² and the same quality.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        size: tuple[int, int],
        fps: float,
        crf: int = 20,
        processes: int = 1,
        segment: int = 64,
    ) -> None:
        if processes < 1 or segment < 1:
            raise ValueError(f"processes and segment must be at least 1, got {processes} and {segment}")
        self.path = Path(path)
        self.size = size
        self.fps = fps
        self.crf = crf
        self.frames = 0
        self.processes = processes
        self.segment = segment
        # Side by side, each process gets its share of the cores instead of x264's default
        # 1.5 threads per core each, which oversubscribes the machine.
        share = max(1, usable_cores() // processes)
        self.threads = ["-threads", str(share)] if processes > 1 else []
        self._segments: list[_Segment] = []

    def __enter__(self) -> FrameEncoder:
        return self

    def _current(self) -> _Segment:
        index = self.frames // self.segment if self.processes > 1 else 0
        if index == len(self._segments):
            if index >= self.processes:
                # The process that encoded this turn's segment last time must be done first.
                self._segments[index - self.processes].finish()
            path = self.path if self.processes == 1 else self._part(index)
            self._segments.append(_Segment(self, path))
        return self._segments[index]

    def _part(self, index: int) -> Path:
        return self.path.with_name(f".{self.path.name}.part{index:05d}.mp4")

    def _error(self) -> BaseException | None:
        return next((s.error for s in self._segments if s.error is not None), None)

    def write(self, frame: np.ndarray) -> None:
        """Queue one ``[H, W, 3]`` uint8 frame; blocks when the encoder is behind."""
        error = self._error()
        if error is not None:
            raise EncodeError(f"video encoding failed: {error}")
        if frame.shape[1::-1] != self.size or frame.dtype != np.uint8:
            raise ValueError(f"frame is {frame.shape} {frame.dtype}, expected {self.size[::-1]}x3 uint8")
        self._current().queue.put(np.ascontiguousarray(frame))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        for segment in self._segments:
            segment.finish()
        error = self._error()
        try:
            if exc_type is None and error is not None:
                raise EncodeError(f"video encoding failed: {error}")
            if exc_type is None and self.processes > 1 and self._segments:
                _concat([s.path for s in self._segments], self.path)
        finally:
            if self.processes > 1:
                for segment in self._segments:
                    segment.path.unlink(missing_ok=True)


def _concat(parts: list[Path], out: Path) -> None:
    """Join MP4 segments of one stream into ``out`` without re-encoding."""
    listing = out.with_name(f".{out.name}.parts.txt")
    # The concat demuxer's list syntax: one line per file, quotes escaped.
    listing.write_text("".join("file '{}'\n".format(str(p.resolve()).replace("'", "'\\''")) for p in parts))
    try:
        _run_ffmpeg(
            ["-f", "concat", "-safe", "0", "-i", str(listing), "-c", "copy"]
            + ["-movflags", "+faststart", "-f", "mp4", str(out)]
        )
    finally:
        listing.unlink(missing_ok=True)


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

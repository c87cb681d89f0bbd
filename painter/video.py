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
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

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
    quality: int | None = None,
) -> None:
    """Re-encode the master MP4 to ``fmt`` at the given rate and size.

    MP4 takes ``bitrate`` (or ``crf``), WebP takes ``quality`` (0-100, default
    ``WEBP_QUALITY[1]``); GIF has no rate control.
    """
    scale = f"fps={fps:g},scale={width}:{height}:flags=lanczos"
    if fmt == "webp":
        _encode_webp(master, out, fps=fps, size=(width, height), quality=quality)
        return
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
    else:
        raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")
    _run_ffmpeg(args)


# Animated WebP. ffmpeg's libwebp_anim encoder gives libwebp no key frames: every frame is a
# lossy patch blended over the previous one, and pixels within a quality-dependent distance
# (up to ~30 levels at low quality) of the previous frame are left as they were, so errors
# pile up over a painting and its held final picture was never clean (19.5 dB at a 40 kB
# budget, 26 dB at quality 40). Pillow's encoder takes kmin/kmax: a key frame at least every
# 5 frames bounds the drift (final picture 30-32 dB from quality 25 up). Quality is searched
# between these bounds against the budget; below the floor, frame rate and size give way.
WEBP_QUALITY = (40, 80)
WEBP_KEYFRAMES = (3, 5)  # kmin, kmax: gif2webp's and Pillow's defaults for lossy frames
WEBP_METHOD = 4  # 25 % smaller than 0 at the same quality, 2.5x slower


class _LazyFrames:
    """A multi-frame picture whose frames are read from ffmpeg one by one, in order.

    PIL's animated WebP writer walks ``append_images`` by ``n_frames`` and ``seek``;
    reading the frames as it asks keeps one frame in memory instead of the animation.
    """

    def __init__(self, frames: Iterator[Image.Image], count: int) -> None:
        self.n_frames = count
        self._frames = frames
        self._current: Image.Image | None = None
        self._index = -1

    def seek(self, index: int) -> None:
        """Move to frame ``index``: the next one, or the current one again."""
        if index == self._index:
            return
        if index != self._index + 1:
            raise ValueError(f"frames are read in order; asked for {index} after {self._index}")
        try:
            self._current = next(self._frames)
        except StopIteration:
            raise EncodeError(f"ffmpeg gave fewer frames than the {self.n_frames} counted") from None
        self._index = index

    def tell(self) -> int:
        """The current frame's index."""
        return self._index

    def __getattr__(self, name: str):
        # Everything else (mode, size, getim, tobytes, convert …) is the current frame's.
        if self._current is None:
            raise AttributeError(name)
        return getattr(self._current, name)


def _raw_frames(master: Path, filters: str, size: tuple[int, int]) -> Iterator[Image.Image]:
    """The master's frames through ffmpeg ``filters``, as RGB pictures of ``size``."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(master)]
            + ["-vf", filters, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert proc.stdout is not None
        length = size[0] * size[1] * 3
        try:
            while len(buf := proc.stdout.read(length)) == length:
                yield Image.frombytes("RGB", size, buf)
        except GeneratorExit:
            # The reader stopped early (it failed, or had all it needed): stop ffmpeg too.
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if proc.wait() != 0:
            log.seek(0)
            raise EncodeError(f"ffmpeg failed: {log.read().decode(errors='replace').strip()[-500:]}")


def _count_frames(master: Path, fps: float) -> int:
    """How many frames the master has at ``fps`` (ffmpeg's fps filter decides which)."""
    return sum(1 for _ in _raw_frames(master, f"fps={fps:g},scale=8:8", (8, 8)))


def _encode_webp(
    master: Path,
    out: Path,
    *,
    fps: float,
    size: tuple[int, int],
    quality: int | None = None,
    count: int | None = None,
) -> None:
    """Write the master as a looping lossy animated WebP with regular key frames."""
    quality = WEBP_QUALITY[1] if quality is None else quality
    count = _count_frames(master, fps) if count is None else count
    frames = _raw_frames(master, f"fps={fps:g},scale={size[0]}:{size[1]}:flags=lanczos", size)
    try:
        first = next(frames, None)
        if first is None:
            raise EncodeError(f"ffmpeg read no frames from {master}")
        rest = _LazyFrames(frames, count - 1)
        first.save(
            out,
            format="WEBP",
            save_all=True,
            append_images=[rest] if count > 1 else [],
            duration=1000.0 / fps,
            loop=0,
            lossless=False,
            quality=quality,
            method=WEBP_METHOD,
            kmin=WEBP_KEYFRAMES[0],
            kmax=WEBP_KEYFRAMES[1],
        )
    finally:
        frames.close()


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
    written to a temporary name, so ``out`` only ever appears complete. WebP searches
    its quality (down to a floor that keeps the picture clean) in place of a bitrate.
    """
    duration = max(frames / fps, 1e-3)
    if fmt == "mp4" and master.stat().st_size <= max_bytes:
        os.replace(master, out)
        return VideoInfo(out, fmt, frames, fps, width, height, out.stat().st_size)
    attempt = out.with_name(out.name + ".try")
    if fmt == "webp":
        try:
            return _fit_webp(master, out, attempt, fps=fps, width=width, height=height, max_bytes=max_bytes)
        finally:
            attempt.unlink(missing_ok=True)
            master.unlink(missing_ok=True)
    levels = _levels(fps, width, height)
    cur_fps, cur_w, cur_h = next(levels)
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
            elif (level := next(levels, None)) is not None:
                cur_fps, cur_w, cur_h = level
            else:
                bitrate = MIN_BITRATE  # as small as it gets: the floor test takes the next try
    finally:
        attempt.unlink(missing_ok=True)
        master.unlink(missing_ok=True)


def _levels(fps: float, width: int, height: int) -> Iterator[tuple[float, int, int]]:
    """Frame rate and size from the master's down to the smallest: fps to 10, size, fps to 5."""
    cur_fps, cur_w, cur_h = float(fps), width, height
    yield cur_fps, cur_w, cur_h
    while True:
        if cur_fps > 10:
            cur_fps = max(10.0, cur_fps / 2)
        elif cur_w > MIN_SIDE and cur_h > MIN_SIDE:
            cur_w, cur_h = _even(cur_w * 0.7), _even(cur_h * 0.7)
        elif cur_fps > MIN_FPS:
            cur_fps = float(MIN_FPS)
        else:
            return
        yield cur_fps, cur_w, cur_h


def _fit_webp(
    master: Path, out: Path, attempt: Path, *, fps: float, width: int, height: int, max_bytes: int
) -> VideoInfo:
    """The best WebP within budget: the highest quality in ``WEBP_QUALITY`` at the first
    frame rate and size where the floor quality fits (or the smallest file, if none does)."""
    low, high = WEBP_QUALITY
    best = out.with_name(out.name + ".best")
    counts: dict[float, int] = {}
    levels = list(_levels(fps, width, height))
    try:
        for number, (cur_fps, cur_w, cur_h) in enumerate(levels):
            if cur_fps not in counts:
                counts[cur_fps] = _count_frames(master, cur_fps)

            def encode(quality: int, fps_: float = cur_fps, w: int = cur_w, h: int = cur_h) -> int:
                _encode_webp(master, attempt, fps=fps_, size=(w, h), quality=quality, count=counts[fps_])
                return attempt.stat().st_size

            last_level = number == len(levels) - 1
            # Generous budgets fit at the top quality on the first try; later levels
            # exist because the floor did not fit, so they start from it.
            tries = [high, low] if number == 0 else [low, high]
            fitted: tuple[int, int] | None = None  # (quality, bytes) of the file kept in ``best``
            over = high + 1  # lowest quality known not to fit
            for quality in tries:
                size = encode(quality)
                if size <= max_bytes:
                    fitted = (quality, size)
                    os.replace(attempt, best)
                    if quality == high:
                        break
                else:
                    over = min(over, quality)
                    if quality == low:
                        break
            if fitted is None and last_level:
                # Nothing smaller is left to try: give up quality below the floor.
                for quality in (low // 2, 0):
                    size = encode(quality)
                    fitted = (quality, size)
                    os.replace(attempt, best)
                    if size <= max_bytes:
                        break
            if fitted is None:
                continue
            # Bisect between the best fitting quality and the lowest that did not fit.
            while over - fitted[0] > 5 and fitted[1] <= max_bytes:
                quality = (fitted[0] + over) // 2
                size = encode(quality)
                if size <= max_bytes:
                    fitted = (quality, size)
                    os.replace(attempt, best)
                else:
                    over = quality
            os.replace(best, out)
            shown = counts[cur_fps]
            return VideoInfo(out, "webp", shown, cur_fps, cur_w, cur_h, fitted[1])
        raise AssertionError("unreachable: the last level always keeps a file")
    finally:
        best.unlink(missing_ok=True)


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

"""Cheap real job runners for the queue and worker tests (no model, a few small files).

The prompt steers the runner, so tests can ask for behaviour through the real
``submit``/enqueue path: ``"fail=2 frames=3 sleep=0.5"`` fails the first two attempts,
then paints 3 frames over half a second. Words: ``fail=N`` (fail attempts 1..N),
``always-fail``, ``sleep=SECONDS`` (spread over the frames), ``stall-first=SECONDS``
(the first attempt only, as a job that hangs until its worker is killed), ``frames=N``,
``ignore-cancel``.

When ``LATENT_PAINTER_TEST_RUN_LOG`` names a file, every attempt appends
``job_id attempt pid event`` lines to it (``start``, ``end``), so a test can count how
many times each job really ran, across processes.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from pathlib import Path

from bot.worker import JobCancelled, JobContext, JobOutput


def _directives(prompt: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for word in prompt.split():
        name, _, value = word.partition("=")
        found[name] = value
    return found


def _log(ctx: JobContext, event: str) -> None:
    path = os.environ.get("LATENT_PAINTER_TEST_RUN_LOG")
    if path:
        # One short O_APPEND write per line: lines from several processes never interleave.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {ctx.attempt} {os.getpid()} {event}\n".encode())
        finally:
            os.close(fd)


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real, valid PNG of one colour (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def run_job(ctx: JobContext) -> JobOutput:
    """Paint nothing, quickly: progress, optional planned failures and sleeps, four small files."""
    _log(ctx, "start")
    prompt = str(ctx.params.get("prompt") or ctx.params.get("from_result", ""))
    plan = _directives(prompt)
    if "always-fail" in plan:
        raise RuntimeError(f"planned failure on attempt {ctx.attempt} (always)")
    if ctx.attempt <= int(plan.get("fail", "0") or 0):
        raise RuntimeError(f"planned failure on attempt {ctx.attempt}")
    frames = int(plan.get("frames", "3") or 3)
    pause = float(plan.get("sleep", "0") or 0) / frames
    if ctx.attempt == 1 and "stall-first" in plan:
        ctx.progress(0, 0, frames)
        deadline = time.monotonic() + float(plan["stall-first"])
        while time.monotonic() < deadline and (not ctx.cancelled() or "ignore-cancel" in plan):
            time.sleep(0.05)
    for frame in range(1, frames + 1):
        if ctx.cancelled() and "ignore-cancel" not in plan:
            _log(ctx, "cancelled")
            raise JobCancelled(f"job {ctx.job_id} stopped at frame {frame}")
        time.sleep(pause)
        ctx.progress(frame, frame, frames)
    files = {
        "video": ctx.workdir / "painting.mp4",
        "image": ctx.workdir / "final.png",
        "heatmap": ctx.workdir / "heatmap.png",
        "trail": ctx.workdir / "trail.safetensors",
    }
    stamp = f"job {ctx.job_id} attempt {ctx.attempt}\n".encode()
    files["video"].write_bytes(stamp * 8)
    files["image"].write_bytes(_png(8, 8, (200, 120, 40)))
    files["heatmap"].write_bytes(_png(8, 8, (255, 0, 0)))
    files["trail"].write_bytes(stamp)
    _log(ctx, "end")
    return JobOutput(
        files=files,
        result={
            "prompt": ctx.params.get("prompt", ""),
            "seed": int(ctx.params.get("seed", 7)),
            "steps": frames,
            "model_id": "test-runner",
            "vae_id": "test-vae",
            "effect": ctx.params.get("effect", "strokes"),
            "format": "mp4",
            "width": 8,
            "height": 8,
            "frames": frames,
            "duration_seconds": frames / 24,
        },
    )


def run_log(path: Path) -> list[tuple[int, int, int, str]]:
    """The lines :func:`run_job` appended: (job id, attempt, pid, event)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        job, attempt, pid, event = line.split()
        rows.append((int(job), int(attempt), int(pid), event))
    return rows

"""Are frames streamed? Peak memory of a 300-frame and a 3,000-frame animation.

Each measurement runs in a fresh subprocess (peak RSS is per process), which runs one
paint job through ``bot.paint_job.run_paint`` and reports its peak resident set size
(``resource.getrusage``; the RSS before the job from psutil where installed). Frames are decoded,
encoded and dropped batch by batch, so ten times the frames must cost almost no more
memory: the goal is a difference under 200 MB. Holding the frames would cost
H·W·3 bytes each as uint8 (3,000 × 512² ≈ 2.4 GB), far more.

On the CPU the job is the closed-form model at 512², as ``latent-painter demo``
paints, so 3,000 frames take a minute or two. With
``--device cuda`` it is SD 1.5's architecture with random weights at 512², and the
child also reports peak CUDA memory of the plain generation and of the paint job
(goal: at most 1.5 GiB more).

    python bench/bench_memory.py                  # CPU, about 2-3 minutes
    python bench/bench_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ROOT,
    add_device_args,
    build_sd15_pipeline,
    default_data_dir,
    machine_line,
    resolve_args,
    table,
)

MB = 1024 * 1024


def current_rss() -> int:
    """This process's resident set size in bytes: psutil where installed, else /proc (Linux)."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    return psutil.Process().memory_info().rss


def child(args: argparse.Namespace) -> None:
    """Run one paint job of ``args.frames`` frames; print its memory figures as JSON."""
    from common import quiet

    from bot.config import load_settings
    from bot.paint_job import ModelCache, PaintRequest, run_paint
    from painter.sample_image import sample_picture

    quiet()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fps = 30
    model: dict[str, Any] = {"device": str(device)}
    image = None
    if cuda:
        model["id"] = str(build_sd15_pipeline(args.data_dir / "models" / "sd15-random"))
    else:
        model["id"] = "analytic"
        buffer = io.BytesIO()
        sample_picture(args.size, args.size).save(buffer, format="PNG")
        image = buffer.getvalue()
    settings = load_settings(
        env={},
        overrides={
            "model": model,
            "painter": {"width": args.size, "height": args.size, "fps": fps, "duration": args.frames / fps},
            # A budget the master always fits: re-encoding is ffmpeg's memory, not ours.
            "render": {"max_bytes": 2_000_000_000},
            "storage": {"data_dir": str(args.data_dir)},
        },
    )
    models = ModelCache()
    result: dict[str, Any] = {}
    if cuda:
        loaded = models.model(settings)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            loaded.pipeline(
                prompt="a lighthouse at sunset",
                num_inference_steps=30,
                width=args.size,
                height=args.size,
                generator=torch.Generator("cpu").manual_seed(7),
            )
        result["cuda_plain_peak"] = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    before = current_rss()
    request = PaintRequest(prompt="a lighthouse at sunset", seed=7, image=image, save_trail=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        outputs = run_paint(settings, request, Path(tmp) / "job.mp4", models=models)
        result["seconds"] = time.perf_counter() - start
        result["frames"] = outputs.animation.video.frames
    if cuda:
        result["cuda_job_peak"] = torch.cuda.max_memory_allocated(device)
        # The batch the decoder fitted to [render] decode_memory_mb (its per-frame measure is kept).
        latent = torch.zeros(settings.render.batch_size, 4, args.size // 8, args.size // 8, device=device)
        result["decode_batch"] = models.decoder(settings, models.model(settings)).chunk_size(latent)
    result["rss_before_job"] = before
    result["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(json.dumps(result))


def measure(frames: int, size: int, device: torch.device, data_dir: Path) -> dict[str, Any]:
    """Run the child for ``frames`` frames and return what it reported."""
    command = [sys.executable, str(Path(__file__)), "--child", "--frames", str(frames), "--size", str(size)]
    command += ["--device", str(device), "--data-dir", str(data_dir)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the {frames}-frame child failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--size", type=int, default=None, help="picture side (default 512)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    device = resolve_args(args)
    print(machine_line(device))
    size = args.size or 512
    if device.type == "cuda":
        build_sd15_pipeline(args.data_dir / "models" / "sd15-random")  # once, outside the children
    # Peak RSS moves by tens of MB from run to run with how the allocator reuses freed
    # frame buffers (and how far the encoder's queue fills): keep each size's lower peak. On a
    # GPU one run each (CUDA peaks do not move; 3,000 frames through the SD VAE take minutes).
    repeats = 1 if device.type == "cuda" else 2
    runs = {
        frames: min(
            (measure(frames, size, device, args.data_dir) for _ in range(repeats)),
            key=lambda r: r["peak_rss"],
        )
        for frames in (300, 3000)
    }
    rows = []
    for frames, r in runs.items():
        row = [frames, r["frames"], r["seconds"], r["rss_before_job"] / MB, r["peak_rss"] / MB]
        if "cuda_job_peak" in r:
            row += [r["cuda_plain_peak"] / MB, r["cuda_job_peak"] / MB, r["decode_batch"]]
        rows.append(row)
    header = ["frames asked", "frames written", "seconds", "RSS before job MB", "peak RSS MB"]
    if device.type == "cuda":
        header += ["CUDA peak plain MB", "CUDA peak job MB", "decode batch"]
    what = "SD 1.5 architecture (random weights)" if device.type == "cuda" else "closed-form model (demo)"
    print(
        f"\nOne paint job per fresh process (lower peak of {repeats}): {what}, {size}x{size}, 30 fps,"
        f" on {device}"
    )
    print(table(rows, header))
    growth = (runs[3000]["peak_rss"] - runs[300]["peak_rss"]) / MB
    held = 2700 * size * size * 3 / MB
    print(
        f"peak RSS, 3,000 frames - 300 frames: {growth:+.0f} MB "
        f"(goal < 200 MB; holding the frames would add {held:.0f} MB)"
    )
    if device.type == "cuda":
        extra = (runs[300]["cuda_job_peak"] - runs[300]["cuda_plain_peak"]) / MB
        print(f"peak CUDA memory, paint job - plain generation: {extra:+.0f} MB (goal <= 1536 MB)")


if __name__ == "__main__":
    main()

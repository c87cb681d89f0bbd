"""What does painting add to a generation? One /paint job against the same generation without painting.

Runs, in one process and one run:

* the plain generation: the pipeline called as a user of diffusers would, to a PIL
  image (30 steps, then one VAE decode), same model, prompt, seed and size;
* one /paint job through ``bot.paint_job.run_paint`` — the code the queue's worker and
  ``latent-painter paint`` run — with the strokes effect and a 10 s animation at
  30 fps, its time split stage by stage: generation, painting (the effect's frames),
  decoding (the VAE, also the final PNG), interpolating (adaptive rendering's frames
  between decodes), paper and uint8, encoding (time animate
  waited for the background encoder), upload-fit (fit_to_budget) and the rest
  (heatmap, PNGs, trail file);
* ``latent-painter demo`` as a user runs it (a fresh process; CPU only).

It prints the ratio job / plain and writes a chart of the stages beside the plain
generation (``bench/paint_job_stages.png``; ``_cuda`` on a GPU). Goals on a GPU:
≤ 1.5× the plain generation with TAESD, ≤ 3× with the full VAE; painting < 10% of the job.

On the CPU the model is the tiny offline one (256² by default: its VAE decodes a 512²
frame in ~0.7 s here); with ``--device cuda`` it is SD 1.5's architecture with random
weights at 512², run once with the full VAE and once with TAESD; ``--full`` runs that
architecture on the CPU too (full VAE adaptive, TAESD exact and adaptive).

    python bench/bench_e2e.py                    # CPU, tiny model, about 2-3 minutes
    python bench/bench_e2e.py --size 512         # the spec's size on the CPU (~5 min)
    python bench/bench_e2e.py --full --size 256  # SD 1.5's architecture on the CPU (~15 min)
    python bench/bench_e2e.py --device cuda      # SD 1.5 architecture, VAE and TAESD
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from common import (
    ROOT,
    add_device_args,
    build_sd15_pipeline,
    default_data_dir,
    machine_line,
    quiet,
    resolve_args,
    table,
)
from common import taesd as random_taesd
from PIL import Image, ImageDraw, ImageFont

import bot.paint_job as paint_job
import painter.animate as animate_module
from bot.config import load_settings
from painter.decode import Decoder
from painter.sample_image import sample_picture
from painter.video import FrameEncoder, encoder_processes

STAGES = (
    "generation",
    "painting",
    "decoding",
    "interpolating",
    "paper + uint8",
    "encoding",
    "upload-fit",
    "other",
)
COLOURS = {
    "generation": (90, 110, 200),
    "painting": (230, 120, 50),
    "decoding": (200, 60, 80),
    "interpolating": (230, 150, 170),
    "paper + uint8": (240, 190, 60),
    "encoding": (70, 170, 110),
    "upload-fit": (140, 90, 170),
    "other": (160, 160, 160),
}


class StageClock:
    """Seconds spent in each stage of a paint job, measured by wrapping the functions each stage calls."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.device = device

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start

    def timed(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name):
                return fn(*args, **kwargs)

        return wrapper

    def timed_iterator(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with self.stage(name):
                iterator = iter(fn(*args, **kwargs))
            while True:
                with self.stage(name):
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                yield item

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Wrap the stage functions where the paint job looks them up; undo afterwards."""
        clock = self

        class TimedEncoder(FrameEncoder):
            # The encoder works in its own thread; what costs the job is the time animate
            # waits for it: a full queue in write(), and the flush in __exit__.
            def write(self, frame: Any) -> None:
                with clock.stage("encoding"):
                    super().write(frame)

            def __exit__(self, *exc: Any) -> None:
                with clock.stage("encoding"):
                    super().__exit__(*exc)

        import painter.analytic as analytic
        import painter.render as render_module

        patches = [
            (paint_job, "capture", self.timed("generation", paint_job.capture)),
            # The closed-form model's "generation": building its trail.
            (analytic, "analytic_trail", self.timed("generation", analytic.analytic_trail)),
            (animate_module, "paint", self.timed_iterator("painting", animate_module.paint)),
            (Decoder, "decode_float", self.timed("decoding", Decoder.decode_float)),
            # Adaptive rendering's frames between decodes (its checks' paper included).
            (render_module, "_interpolate", self.timed("interpolating", render_module._interpolate)),
            (animate_module, "lay_on_paper", self.timed("paper + uint8", animate_module.lay_on_paper)),
            (render_module, "lay_on_paper", self.timed("paper + uint8", render_module.lay_on_paper)),
            (animate_module, "to_uint8", self.timed("paper + uint8", animate_module.to_uint8)),
            (animate_module, "FrameEncoder", TimedEncoder),
            (animate_module, "fit_to_budget", self.timed("upload-fit", animate_module.fit_to_budget)),
        ]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, value in patches:
            setattr(owner, name, value)
        try:
            yield
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)


def reset_peak(device: torch.device) -> None:
    """Start counting peak CUDA memory afresh (nothing on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> int:
    """Peak CUDA memory allocated since the last ``reset_peak``, bytes (0 on the CPU)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def plain_generation(model: Any, size: int, steps: int, seed: int, device: torch.device) -> float:
    """Seconds for the same generation without painting: 30 steps and one decode to a PIL image."""
    pipe = model.pipeline
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt="a lighthouse at sunset",
            num_inference_steps=steps,
            guidance_scale=7.5,
            width=size,
            height=size,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def paint_job_stages(
    settings: Any, models: Any, out: Path, seed: int, device: torch.device, image: bytes | None = None
) -> dict[str, float]:
    """One paint job's seconds per stage, 'total' included; ``image``: paint that picture (analytic)."""
    clock = StageClock(device)
    request = paint_job.PaintRequest(
        prompt="a lighthouse at sunset", seed=seed, image=image, save_trail=image is None
    )
    with clock.installed():
        start = time.perf_counter()
        outputs = paint_job.run_paint(settings, request, out, models=models)
        total = time.perf_counter() - start
    stages = {name: clock.seconds.get(name, 0.0) for name in STAGES[:-1]}
    stages["other"] = max(0.0, total - sum(stages.values()))
    stages["total"] = total
    stages["frames"] = float(outputs.animation.video.frames)
    return stages


def demo_wall_time(workdir: Path) -> float:
    """Seconds of ``latent-painter demo`` in a fresh process, as a user runs it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", LATENT_PAINTER_STORAGE_DATA_DIR=str(workdir / "demo-data"))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", "--out-dir", str(workdir / "demo")],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def draw_chart(jobs: dict[str, dict[str, float]], plain: float, title: str, path: Path) -> None:
    """A horizontal stacked bar per paint job, one for the plain generation, on one time axis."""
    width, left, right, bar, gap = 1100, 330, 90, 46, 26
    bars = [*jobs.items(), ("plain generation", {"generation": plain, "total": plain})]
    height = 90 + len(bars) * (bar + gap) + 70
    image = Image.new("RGB", (width, height), (252, 250, 246))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    small = ImageFont.load_default(size=12)
    draw.text((12, 18), title, fill=(20, 20, 20), font=font)
    longest = max(stages["total"] for _, stages in bars)
    scale = (width - left - right) / longest
    y = 60
    for label, stages in bars:
        draw.text((12, y + bar / 2 - 9), label, fill=(20, 20, 20), font=font)
        x = float(left)
        for stage in STAGES:
            seconds = stages.get(stage, 0.0)
            if seconds <= 0:
                continue
            w = seconds * scale
            draw.rectangle([x, y, x + w, y + bar], fill=COLOURS[stage])
            if w > 42:
                draw.text((x + 4, y + bar / 2 - 7), f"{seconds:.1f}s", fill=(255, 255, 255), font=small)
            x += w
        draw.text((x + 6, y + bar / 2 - 8), f"{stages['total']:.1f} s", fill=(20, 20, 20), font=font)
        y += bar + gap
    # Time axis.
    step = next(s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600) if longest / s <= 10)
    tick = 0.0
    while tick <= longest + 1e-9:
        x = left + tick * scale
        draw.line([x, y - 6, x, y], fill=(80, 80, 80))
        draw.text((x - 8, y + 2), f"{tick:g}", fill=(80, 80, 80), font=small)
        tick += step
    draw.text((width - right - 60, y + 18), "seconds", fill=(80, 80, 80), font=small)
    x = 12
    for stage in STAGES:
        draw.rectangle([x, height - 30, x + 14, height - 16], fill=COLOURS[stage])
        draw.text((x + 20, height - 32), stage, fill=(20, 20, 20), font=small)
        x += 30 + int(draw.textlength(stage, font=small))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--size", type=int, help="picture side (default 512 on CUDA, 256 on the CPU)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-demo", action="store_true", help="skip the latent-painter demo timing")
    parser.add_argument(
        "--chart", type=Path, help="where the chart goes (default bench/paint_job_stages*.png)"
    )
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    device = resolve_args(args)
    cuda = device.type == "cuda"
    quiet()
    print(machine_line(device))
    size = args.size or (512 if cuda or args.full else 256)
    seed = 7
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        model_settings: dict[str, Any] = {"id": "tiny", "device": str(device)}
        # (decoder, TAESD id, [render] compile, [render] mode): exact and adaptive rendering side
        # by side; on a GPU each decoder also runs eager and compiled, as a one-shot command and
        # the long-running worker (compile = "auto") would paint.
        variants = [("vae", "", "never", "exact"), ("vae", "", "never", "adaptive")]
        if cuda or args.full:
            model_settings["id"] = str(build_sd15_pipeline(args.data_dir / "models" / "sd15-random"))
            taesd_dir = args.data_dir / "models" / "taesd-random"
            if not (taesd_dir / "config.json").is_file():
                random_taesd(torch.device("cpu")).save_pretrained(taesd_dir)
            decoders = (("vae", ""), ("taesd", str(taesd_dir)))
            variants = [
                (d, t, c, r)
                for d, t in decoders
                for c, r in (("never", "exact"), ("auto", "exact"), ("auto", "adaptive"))
            ]
            if not cuda:
                # The SD 1.5 architecture on the CPU: the same work per job as on a GPU, so the
                # job / generation ratio is the GPU's up to how each device runs convolutions and
                # attention. Eager only; 300 exact full-VAE decodes would take most of an hour.
                variants = [("vae", "", "never", "adaptive")]
                variants += [("taesd", str(taesd_dir), "never", r) for r in ("exact", "adaptive")]
        models = paint_job.ModelCache(long_running=True)  # as the worker's
        jobs: dict[str, dict[str, float]] = {}
        first_runs: dict[str, float] = {}
        job_peaks: dict[str, int] = {}
        plain_peak = 0
        plain = float("inf")
        for decoder, taesd_id, compile_mode, render in variants:
            settings = load_settings(
                env={},
                overrides={
                    "model": {**model_settings, "decoder": decoder, "taesd_id": taesd_id},
                    "painter": {
                        "width": size,
                        "height": size,
                        "steps": args.steps,
                        "fps": 30,
                        "duration": 10.0,
                    },
                    "render": {"compile": compile_mode, "mode": render},
                    "storage": {"data_dir": str(args.data_dir)},
                },
            )
            model = models.model(settings)
            if not jobs:
                plain_generation(model, size, 2, seed, device)  # first-call costs, untimed
                reset_peak(device)
                plain = min(plain_generation(model, size, args.steps, seed, device) for _ in range(2))
                plain_peak = peak_memory(device)
            label = "paint job, " + ("full VAE" if decoder == "vae" else "TAESD")
            if cuda:
                label += ", compiled" if models.compiles(settings, model) else ", eager"
            label += f", {render}"
            # On a GPU the first job also pays one-off costs (cuDNN picking kernels for the decode
            # batch, torch.compile, the encoder's start): the faster of two runs is the steady
            # state users of a running worker see; the first run's total is printed too.
            reset_peak(device)
            name = f"{decoder}-{compile_mode}-{render}"
            runs = [
                paint_job_stages(settings, models, workdir / f"{name}{n}.mp4", seed, device)
                for n in range(2 if cuda else 1)
            ]
            job_peaks[label] = peak_memory(device)
            first_runs[label] = runs[0]["total"]
            jobs[label] = min(runs, key=lambda stages: stages["total"])
            summary = ", ".join(f"{k} {v:.2f}" for k, v in jobs[label].items())
            latent = torch.zeros(8, 4, size // 8, size // 8, device=device)
            batch = models.decoder(settings, model).chunk_size(latent)
            first = runs[0]["total"]
            print(f"  done {label}: {summary} (first run {first:.2f} s; decode batch {batch})", flush=True)
        demo = None
        if not (args.no_demo or cuda):
            # The demo's job in-process, stage by stage, then the demo itself as a user runs it.
            buffer = io.BytesIO()
            sample_picture(512, 512).save(buffer, format="PNG")
            settings = load_settings(
                env={},
                overrides={
                    "model": {"id": "analytic", "device": "cpu"},
                    "painter": {"width": 512, "height": 512, "fps": 30, "duration": 15.0},
                    "storage": {"data_dir": str(args.data_dir)},
                },
            )
            label = "demo job (analytic, 512x512, 450 frames)"
            jobs[label] = paint_job_stages(
                settings, models, workdir / "demo-job.mp4", seed, device, buffer.getvalue()
            )
            summary = ", ".join(f"{k} {v:.2f}" for k, v in jobs[label].items())
            print(f"  done {label}: {summary}", flush=True)
            demo = demo_wall_time(workdir)
    what = "SD 1.5 architecture (random weights)" if cuda or args.full else "tiny offline model"
    print(
        f"\nOne /paint job vs the plain generation: {what}, {size}x{size}, {args.steps} steps, 10 s at 30 fps"
        f" (x264 processes: {encoder_processes(load_settings(env={}).render.encoder_processes)})"
    )
    rows = [
        [stage, *(f"{jobs[j][stage]:.2f} s ({100 * jobs[j][stage] / jobs[j]['total']:.0f}%)" for j in jobs)]
        for stage in (*STAGES, "total")
    ]
    rows.append(["plain generation", f"{plain:.2f} s", *([""] * (len(jobs) - 1))])
    print(table(rows, ["stage", *jobs]))
    for label, stages in jobs.items():
        share = f"painting {100 * stages['painting'] / stages['total']:.1f}% of the job"
        if label.startswith("demo"):
            print(f"{label}: {stages['total']:.1f} s ({share})")
            continue
        print(
            f"{label}: {stages['total'] / plain:.2f}x the plain generation "
            f"({int(stages['frames'])} frames; {share}); its first run {first_runs[label]:.1f} s"
        )
        if cuda:
            extra = (job_peaks[label] - plain_peak) / 2**20
            peak = job_peaks[label] / 2**20
            print(f"  peak CUDA memory {peak:,.0f} MB: {extra:+,.0f} MB over the plain generation's")
    if demo is not None:
        print(
            f"latent-painter demo (fresh process, analytic model, 512x512, 15 s at 30 fps): {demo:.1f} s wall"
        )
    print("Goals on a GPU: <= 1.5x with TAESD, <= 3x with the full VAE; painting < 10% of the job.")
    suffix = "_cuda" if cuda else "_sd15_cpu" if args.full else ""
    chart = args.chart or ROOT / "bench" / f"paint_job_stages{suffix}.png"
    title = (
        f"Where one /paint job's time goes: {what}, {size}x{size}, {args.steps} steps, 300 frames, {device}"
    )
    draw_chart({k: v for k, v in jobs.items() if not k.startswith("demo")}, plain, title, chart)
    print(f"chart: {chart}")


if __name__ == "__main__":
    main()

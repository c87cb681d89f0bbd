"""Is fast rendering worth shipping? Its speed and its quality (PSNR per frame) against exact decoding.

Fast rendering (painter/fast_render.py) decodes one key frame per run of frames that
paint the same step and channels (or every ``key_every`` frames) and composites the
frames between keys in pixel space with the upsampled stroke masks. This benchmark
paints one 10 s, 30 fps animation (270 painted frames) from a trail captured from the
tiny model and renders it both ways, in one run: decodes, seconds, speed-up, and the
PSNR of every fast frame against the exact one, as the viewer sees it (laid on paper).
The bar for shipping it: ≥ 30 dB.

The decoders are the tiny model's VAE, TAESD and (``--full``, or on CUDA) SD 1.5's VAE —
all with random weights, as no trained weights can be had offline. Random decoders
have no reason to be as local as trained ones, so the PSNR here is a first look, not
the verdict: give ``--vae`` a trained VAE (hub id or local diffusers directory) on a
machine that has one to measure it for real.

    python bench/bench_fast_render.py                  # CPU, 256², about 2-3 minutes
    python bench/bench_fast_render.py --device cuda    # 512², every decoder, every frame
    python bench/bench_fast_render.py --vae stabilityai/sd-vae-ft-mse --device cuda
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    add_device_args,
    default_data_dir,
    machine_line,
    quiet,
    resolve_args,
    sd15_vae,
    sync,
    table,
    taesd,
    tiny_trail,
    tiny_vae,
)

from painter.decode import Decoder, lay_on_paper
from painter.effects import paint
from painter.fast_render import psnr, render_batches

PAINTED_FRAMES = 270  # a 10 s animation at 30 fps, less its 1 s hold
MOTION = 8  # frames apart in the "motion" column: the scale the fast frames' error is read against


def shown(
    frames: list, rgb: torch.Tensor, painted: torch.Tensor, last: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frames as animate shows them: unpainted cells are paper; the last frame shows everything."""
    coverage = []
    for frame in frames:
        painted |= frame.mask.any(dim=0).to(painted.device)
        coverage.append(painted.clone())
    if last:
        coverage[-1] = torch.ones_like(painted)
    return lay_on_paper(rgb, torch.stack(coverage)), painted


def render(
    plan: torch.Tensor, decoder: Decoder, device: torch.device, **kwargs: Any
) -> tuple[list, float, int]:
    """All frames rendered (on paper), the seconds it took and the decodes it made."""
    calls = 0
    decode = decoder.decode_float

    def counting(canvases: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += canvases.shape[0]
        return decode(canvases)

    decoder.decode_float = counting  # type: ignore[method-assign]
    try:
        frames = paint(plan, "strokes", frames=PAINTED_FRAMES)
        start = torch.zeros(plan.shape[1:], device=plan.device)
        painted = torch.zeros(plan.shape[-2:], dtype=torch.bool, device=device)
        out, done = [], 0
        sync(device)
        began = time.perf_counter()
        for batch, rgb in render_batches(frames, decoder, start=start, batch_size=8, **kwargs):
            done += len(batch)
            image, painted = shown(batch, rgb, painted, done == PAINTED_FRAMES)
            out.append(image.cpu())
        sync(device)
        return out, time.perf_counter() - began, calls
    finally:
        del decoder.decode_float


def exact_sample(
    plan: torch.Tensor, decoder: Decoder, device: torch.device, sample: int | None
) -> tuple[dict[int, torch.Tensor], float, list[int]]:
    """Exactly decoded frames, the seconds per frame they cost, and the frames to compare
    (all, or ``sample`` evenly spaced; each with the frame ``MOTION`` on, where there is one)."""
    frames = list(paint(plan, "strokes", frames=PAINTED_FRAMES))
    if sample is None:
        compared = list(range(len(frames)))
    else:
        compared = sorted(set(torch.linspace(0, len(frames) - 1, sample).round().long().tolist()))
    # Each compared frame's successor 8 frames on too: how much the picture moves meanwhile.
    keep = sorted({j for i in compared for j in (i, i + MOTION) if j < len(frames)})
    painted = torch.zeros(plan.shape[-2:], dtype=torch.bool, device=device)
    coverage = {}
    for i, frame in enumerate(frames):
        painted |= frame.mask.any(dim=0).to(device)
        coverage[i] = painted.clone() if i < len(frames) - 1 else torch.ones_like(painted)
    out: dict[int, torch.Tensor] = {}
    sync(device)
    began = time.perf_counter()
    for lo in range(0, len(keep), 8):
        idx = keep[lo : lo + 8]
        rgb = decoder.decode_float(torch.stack([frames[i].canvas for i in idx]))
        image = lay_on_paper(rgb, torch.stack([coverage[i] for i in idx])).cpu()
        out.update(zip(idx, image, strict=True))
    sync(device)
    return out, (time.perf_counter() - began) / len(keep), compared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--size", type=int, help="picture side in pixels (default 512 with --full, else 256)")
    parser.add_argument("--vae", help="a trained VAE to measure instead of the random-weight decoders")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    device = resolve_args(args)
    quiet()
    print(machine_line(device))
    size = args.size or (512 if args.full else 256)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    plan = tiny_trail(args.data_dir, size=size).to(device)
    # (name, vae, frames compared exactly: None = all)
    decoders: list[tuple[str, Any, int | None]] = []
    if args.vae:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae)
        decoders.append((f"trained VAE {args.vae}", vae, None if args.full else 12))
    else:
        decoders.append(("tiny-model VAE (random)", tiny_vae(args.data_dir), None))
        decoders.append(("TAESD (random)", taesd(device, dtype), None if args.full else 12))
        if args.full:
            decoders.append(("SD 1.5 VAE (random)", sd15_vae(device, dtype), None))
    rows, psnr_rows = [], []
    for name, vae, sample in decoders:
        decoder = Decoder(
            vae, scaling_factor=float(getattr(vae.config, "scaling_factor", 1.0)), device=device, dtype=dtype
        )
        exact, per_frame, compared = exact_sample(plan, decoder, device, sample)
        later = [i for i in sorted(exact) if i + MOTION in exact]
        motion = psnr(torch.stack([exact[i] for i in later]), torch.stack([exact[i + MOTION] for i in later]))
        motion_median = float(motion.clamp(max=99.0).median())
        exact_s = per_frame * PAINTED_FRAMES
        label = "exact" if sample is None else f"exact (from {len(exact)} frames)"
        rows.append([name, label, PAINTED_FRAMES, exact_s, 1.0])
        # Sampled decoders are the slow ones on the CPU: there, one fast mode is enough.
        for key_every in (None, 8) if sample is None else (None,):
            out, seconds, calls = render(plan, decoder, device, mode="fast", key_every=key_every)
            fast = torch.cat(out)
            idx = compared
            scores = psnr(torch.stack([exact[i] for i in idx]), fast[idx])
            finite = scores.clamp(max=99.0)
            mode = "fast, key per run" if key_every is None else f"fast, key every {key_every}"
            rows.append([name, mode, calls, seconds, exact_s / seconds])
            psnr_rows.append(
                [
                    name,
                    mode,
                    len(idx),
                    float(finite.min()),
                    float(finite.median()),
                    float(finite.mean()),
                    f"{100 * float((scores >= 30).float().mean()):.0f}%",
                    motion_median,
                ]
            )
        print(f"  done {name}", flush=True)
    print(f"\nRendering {PAINTED_FRAMES} painted frames at {size}x{size} on {device} ({dtype}), tiny trail")
    print(table(rows, ["decoder", "mode", "decodes", "seconds", "speed-up"]))
    print("\nPSNR of fast frames against exact ones, on paper (dB; 99 = identical)")
    print(table(psnr_rows, ["decoder", "mode", "frames", "min", "median", "mean", ">= 30 dB", "motion"]))
    print(f"motion: median PSNR of an exact frame against the exact frame {MOTION} on (how far frames move).")
    print("\nShip fast rendering only if every frame holds >= 30 dB.")


if __name__ == "__main__":
    main()

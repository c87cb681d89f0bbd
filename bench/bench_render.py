"""Adaptive rendering against exact decoding: decodes, seconds, and the PSNR of every frame.

Adaptive rendering (painter/render.py, the default `[render] mode`) decodes every 32nd
frame and the last of each run of strokes, interpolates the frames between in pixel
space, and decodes more wherever a check against a decoded midpoint misses the
tolerance. This benchmark paints one 10 s, 30 fps animation (270 painted frames) of a
trail captured from the tiny model and renders it exactly and adaptively, in one run:
decodes, seconds, speed-up, and the PSNR of every adaptive frame against the exact one,
on paper as the viewer sees it. The bar (issue 6): every frame >= 30 dB. The unchecked
row (no tolerance: each interval's midpoint decoded, nothing else) shows what the check
guards against.

The decoders are the tiny model's VAE, TAESD and (``--full``, or on CUDA) SD 1.5's VAE —
all with random weights, as no trained weights can be had offline. Random decoders
have no reason to be as local as trained ones: the check decodes more for them, so
the decodes saved here are a floor, and the PSNR holds either way. Give ``--vae`` a
trained VAE (hub id or local diffusers directory) on a machine that has one.

    python bench/bench_render.py                  # CPU, 256², about 3-4 minutes
    python bench/bench_render.py --device cuda    # 512², every decoder
    python bench/bench_render.py --vae stabilityai/sd-vae-ft-mse --device cuda
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

from painter.decode import Decoder
from painter.effects import paint
from painter.render import psnr, render_batches

PAINTED_FRAMES = 270  # a 10 s animation at 30 fps, less its 1 s hold
# (label, tolerance in dB or None for unchecked); 35 dB is the shipped default.
MODES: list[tuple[str, float | None]] = [
    ("adaptive, unchecked", None),
    ("adaptive, 30 dB", 30.0),
    ("adaptive, 35 dB (default)", 35.0),
    ("adaptive, 40 dB", 40.0),
]


class Counting(Decoder):
    """The real decoder, counting the canvases it decodes."""

    decoded = 0

    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        self.decoded += canvases.shape[0]
        return super().decode_float(canvases)


def render(
    plan: torch.Tensor, decoder: Counting, device: torch.device, **kwargs: Any
) -> tuple[torch.Tensor, float, int]:
    """Every frame rendered on paper (on the CPU), the seconds it took and the decodes it made."""
    frames = list(paint(plan, "strokes", frames=PAINTED_FRAMES))
    start = torch.zeros(plan.shape[1:], device=plan.device)
    decoder.decoded = 0
    out = []
    sync(device)
    began = time.perf_counter()
    for _, rgb in render_batches(frames, decoder, start=start, batch_size=8, **kwargs):
        out.append(rgb.cpu())
    sync(device)
    return torch.cat(out), time.perf_counter() - began, decoder.decoded


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
    decoders: list[tuple[str, Any]] = []
    if args.vae:
        from diffusers import AutoencoderKL

        decoders.append((f"trained VAE {args.vae}", AutoencoderKL.from_pretrained(args.vae)))
    else:
        decoders.append(("tiny-model VAE (random)", tiny_vae(args.data_dir)))
        decoders.append(("TAESD (random)", taesd(device, dtype)))
        if args.full:
            decoders.append(("SD 1.5 VAE (random)", sd15_vae(device, dtype)))
    rows, psnr_rows = [], []
    for name, vae in decoders:
        scaling = float(getattr(vae.config, "scaling_factor", 1.0))
        decoder = Counting(vae, scaling_factor=scaling, device=device, dtype=dtype)
        exact, exact_s, calls = render(plan, decoder, device)
        rows.append([name, "exact", calls, exact_s, 1.0])
        for label, tolerance in MODES:
            rgb, seconds, calls = render(plan, decoder, device, mode="adaptive", tolerance_db=tolerance)
            scores = psnr(exact, rgb).clamp(max=99.0)
            rows.append([name, label, calls, seconds, exact_s / seconds])
            psnr_rows.append(
                [
                    name,
                    label,
                    float(scores.min()),
                    float(scores.quantile(0.01)),
                    float(scores.median()),
                    f"{100 * float((scores >= 30).float().mean()):.1f}%",
                ]
            )
        print(f"  done {name}", flush=True)
    print(f"\nRendering {PAINTED_FRAMES} painted frames at {size}x{size} on {device} ({dtype}), tiny trail")
    print(table(rows, ["decoder", "mode", "decodes", "seconds", "speed-up"]))
    print("\nPSNR of every rendered frame against exact decoding, on paper (dB; 99 = identical)")
    print(table(psnr_rows, ["decoder", "mode", "min", "1st pct", "median", ">= 30 dB"]))
    print("\nThe bar: every frame >= 30 dB.")


if __name__ == "__main__":
    main()

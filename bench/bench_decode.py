"""How fast are canvases decoded to RGB? Frames per second with SD 1.5's VAE and with TAESD.

Every figure goes through the product's own ``painter.decode.Decoder`` and is printed
beside the first row of its decoder (one frame at a time, float32) as a speed-up:

* one frame per call against batches (8; 16 on CUDA);
* float32 against float16 / bfloat16 (CUDA: both; CPU: bfloat16 with ``--dtypes``);
* channels_last memory format;
* ``torch.compile`` of the decoder (CUDA by default, ``--compile`` elsewhere);
* the rest of animate's per-batch work after decoding (paper, uint8, copy to the CPU).

The models are full-size architectures with random weights (same cost as trained
ones). On the CPU a full SD VAE decode at 512² takes ~20 s, so by default the SD VAE
runs at 256² with few frames and its 512² rate is *estimated* as a quarter of that
(clearly labelled); ``--full`` measures 512² itself. Goals on an H100: ≥ 100 frames/s
with the full VAE, ≥ 1,000 with TAESD.

    python bench/bench_decode.py                 # CPU, about 2-3 minutes
    python bench/bench_decode.py --device cuda   # 512², fp32/fp16/bf16, compile
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from common import (
    add_device_args,
    best_time,
    default_data_dir,
    machine_line,
    quiet,
    resolve_args,
    sd15_vae,
    table,
    taesd,
    tiny_vae,
)

from painter.decode import Decoder, lay_on_paper, to_uint8

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@torch.inference_mode()
def decode_chunk(decoder: Decoder, chunk: torch.Tensor) -> torch.Tensor:
    """One VAE call on ``chunk``, as ``Decoder.decode_float`` makes it (which picks its own
    chunk size: one canvas at a time on the CPU)."""
    z = chunk.to(decoder.device, decoder.dtype)
    rgb = decoder.vae.decode(decoder.scaling.to_vae(z)).sample
    return ((rgb.float() + 1) / 2).clamp_(0, 1)


def rate(decoder: Decoder, latents: torch.Tensor, per_call: int, device: torch.device, repeat: int) -> float:
    """Frames per second decoding ``latents`` ``per_call`` at a time."""

    def run() -> None:
        for lo in range(0, latents.shape[0], per_call):
            decode_chunk(decoder, latents[lo : lo + per_call])

    return latents.shape[0] / best_time(run, device, repeat=repeat)


def with_animate_work(decoder: Decoder, latents: torch.Tensor, device: torch.device, repeat: int) -> float:
    """Frames per second of ``Decoder.decode_float`` + lay on paper + uint8 on the CPU: animate's
    per-batch work, through the product's own decoder."""
    coverage = torch.ones(latents.shape[0], *latents.shape[-2:], dtype=torch.bool, device=device)
    decoder.batch_size = latents.shape[0]

    def run() -> None:
        to_uint8(lay_on_paper(decoder.decode_float(latents), coverage))

    return latents.shape[0] / best_time(run, device, repeat=repeat)


def bench_decoder(
    name: str, vae: Any, args: argparse.Namespace, device: torch.device, size: int, frames: int, batch: int
) -> list[list[Any]]:
    """Rows of (decoder, variant, frames/s, speed-up) for one autoencoder."""
    repeat = 3 if device.type == "cuda" else 1
    latents = torch.randn(frames, 4, size // 8, size // 8, device=device)
    rows: list[list[Any]] = []

    def add(variant: str, fps: float) -> None:
        base = rows[0][3] if rows else fps
        rows.append([name, f"{size}x{size}", variant, fps, fps / base])
        print(f"  {name} {variant}: {fps:.3g} frames/s", flush=True)

    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    fp32 = Decoder(vae, scaling_factor=scaling, device=device, dtype=torch.float32)
    best_time(lambda: decode_chunk(fp32, latents[:1]), device, repeat=1)  # first-call costs
    add("per frame, float32", rate(fp32, latents, 1, device, repeat))
    add(f"batch {batch}, float32", rate(fp32, latents, batch, device, repeat))
    for dtype_name in args.dtypes:
        low = Decoder(vae, scaling_factor=scaling, device=device, dtype=DTYPES[dtype_name])
        # Decoder may keep float32 (a VAE whose config asks to upcast): name what ran.
        ran = str(low.dtype).removeprefix("torch.")
        add(f"batch {batch}, {ran}", rate(low, latents, batch, device, repeat))
    fastest = args.dtypes[0] if args.dtypes else "float32"
    chosen = Decoder(vae, scaling_factor=scaling, device=device, dtype=DTYPES[fastest])
    chosen.vae = chosen.vae.to(memory_format=torch.channels_last)
    add(f"batch {batch}, {fastest}, channels_last", rate(chosen, latents, batch, device, repeat))
    if args.compile:
        chosen.vae.decoder = torch.compile(chosen.vae.decoder)
        try:
            best_time(lambda: decode_chunk(chosen, latents[:batch]), device, repeat=1, warmup=2)
            add(
                f"batch {batch}, {fastest}, channels_last, compiled",
                rate(chosen, latents, batch, device, repeat),
            )
        except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding, not a crash
            print(f"  {name}: torch.compile failed: {str(exc).splitlines()[0]}")
    add(
        f"Decoder, {fastest}, + paper, uint8, to CPU",
        with_animate_work(chosen, latents[:batch], device, repeat),
    )
    chosen.vae = None  # let the compiled copy go before the next decoder
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument(
        "--dtypes", nargs="*", choices=("float16", "bfloat16"), help="lower precisions to try"
    )
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args()
    device = resolve_args(args)
    cuda = device.type == "cuda"
    if args.dtypes is None:
        args.dtypes = ["float16", "bfloat16"] if cuda else []
    if args.compile is None:
        args.compile = cuda
    quiet()
    print(machine_line(device))
    rows: list[list[Any]] = []
    notes: list[str] = []
    if cuda or args.full:
        frames, batch = (64, 16) if cuda else (8, 8)
        # force_upcast=False: time float16 itself. diffusers defaults force_upcast to True when a
        # config lacks it (SD 1.5's published VAE config does), and Decoder then keeps float32.
        vae = sd15_vae(device, force_upcast=False)
        rows += bench_decoder("SD 1.5 VAE", vae, args, device, 512, frames, batch)
        rows += bench_decoder("TAESD", taesd(device), args, device, 512, 8 * frames, batch)
    else:
        sd_rows = bench_decoder("SD 1.5 VAE", sd15_vae(device, force_upcast=False), args, device, 256, 2, 2)
        rows += sd_rows
        for row in sd_rows:
            rows.append([row[0], "512x512 (est.)", row[2], row[3] / 4, row[4]])
        notes.append(
            "512x512 (est.) = the 256x256 rate / 4 (4x the pixels; attention grows faster: a bit optimistic)."
        )
        rows += bench_decoder("TAESD", taesd(device), args, device, 512, 4, 4)
        rows += bench_decoder("tiny-model VAE", tiny_vae(args.data_dir), args, device, 512, 8, 8)
    print("\nDecoding latents to RGB (random weights, full-size architectures)")
    print(table(rows, ["decoder", "size", "variant", "frames/s", "vs first row"]))
    for note in notes:
        print(note)
    print("Goals on an H100: >= 100 frames/s with the SD VAE, >= 1,000 with TAESD (512x512).")


if __name__ == "__main__":
    main()

"""How fast are frames encoded to H.264? Frames per second, alone and fed while decoding goes on.

``painter.video.FrameEncoder`` runs ffmpeg (libx264, CRF 20, preset fast, yuv420p)
from a background thread, so decoding the next batch can go on while the last is
encoded. For 512² and 1024² this times, in one run:

* encode alone: frames written as fast as the encoder takes them;
* decode alone: animate's per-batch work without encoding (CPU: the closed-form
  model's pixel-space canvases, as ``latent-painter demo`` renders them; CUDA: SD 1.5's
  VAE in float16 with random weights, batches of 8);
* both, as animate runs them: decode batches and write each frame to the encoder.

With perfect overlap "both" costs max(decode, encode); with none, their sum. The
frames are a painting being revealed block by block over the sample picture, so x264
sees the motion and detail of a real animation.

Then the encoder alone with 1, 2 and 4 x264 processes side by side on segments of 64
frames (``[render] encoder_processes``; "auto" is what this machine's core count
picks), taking turns three times, with each file's size and its frames' PSNR against
the source frames.

    python bench/bench_encode.py                  # CPU, about a minute
    python bench/bench_encode.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import add_device_args, machine_line, quiet, resolve_args, sd15_vae, sync, table

from painter.decode import Decoder, lay_on_paper, to_uint8
from painter.images import image_to_tensor
from painter.sample_image import sample_picture
from painter.video import FrameEncoder, encoder_processes, read_frames


def reveal_canvases(size: int, frames: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel canvases ``[N, 3, S, S]`` in [-1, 1] and coverage ``[N, S/8, S/8]``: the picture appearing."""
    picture = image_to_tensor(sample_picture(size, size)).to(device)
    cells = size // 8
    order = torch.randperm(cells * cells, generator=torch.Generator().manual_seed(0)).to(device)
    coverage = torch.zeros(frames, cells * cells, dtype=torch.bool, device=device)
    for i in range(frames):
        coverage[i, order[: (i + 1) * cells * cells // frames]] = True
    coverage = coverage.view(frames, cells, cells)
    mask = torch.nn.functional.interpolate(coverage[:, None].float(), size=(size, size), mode="nearest")
    canvases = picture[None] * mask - (1 - mask) * 0.2
    return canvases, coverage


def make_batches(decoder: Decoder, canvases: torch.Tensor, coverage: torch.Tensor, batch: int):
    """animate's per-batch work: decode, lay on paper, uint8 frames on the CPU."""
    for lo in range(0, canvases.shape[0], batch):
        rgb = decoder.decode_float(canvases[lo : lo + batch])
        yield to_uint8(lay_on_paper(rgb, coverage[lo : lo + batch]))


def measure(size: int, frames: int, device: torch.device, vae: Any, workdir: Path) -> list[Any]:
    """One row: encode alone, decode alone, both together, for ``frames`` frames of ``size``²."""
    canvases, coverage = reveal_canvases(size, frames, device)
    if vae is None:
        decoder = Decoder(None, device=device)
    else:
        # The VAE decodes latents: the same count of random ones, at the latent size.
        decoder = Decoder(vae, scaling_factor=0.18215, device=device, dtype=torch.float16)
        canvases = torch.randn(frames, 4, size // 8, size // 8, device=device)
    batch = 8
    next(make_batches(decoder, canvases[:batch], coverage[:batch], batch))  # warm up
    sync(device)
    start = time.perf_counter()
    images = [img for chunk in make_batches(decoder, canvases, coverage, batch) for img in chunk]
    sync(device)
    decode_s = time.perf_counter() - start
    if vae is not None:
        # Random VAE output is noise, which x264 encodes far slower than a picture: time the
        # encoder on the picture frames, as the product would feed it.
        images = picture_frames(size, frames)

    start = time.perf_counter()
    with FrameEncoder(workdir / f"alone-{size}.mp4", size=(size, size), fps=30) as encoder:
        for image in images:
            encoder.write(image)
    encode_s = time.perf_counter() - start

    start = time.perf_counter()
    with FrameEncoder(workdir / f"both-{size}.mp4", size=(size, size), fps=30) as encoder:
        for chunk in make_batches(decoder, canvases, coverage, batch):
            for image in chunk if vae is None else images[encoder.frames : encoder.frames + len(chunk)]:
                encoder.write(image)
    both_s = time.perf_counter() - start
    hidden = (decode_s + encode_s - both_s) / min(decode_s, encode_s)
    return [
        f"{size}x{size}",
        frames,
        frames / encode_s,
        frames / decode_s,
        frames / both_s,
        frames / (decode_s + encode_s),
        frames / max(decode_s, encode_s),
        f"{100 * hidden:.0f}%",
    ]


def picture_frames(size: int, frames: int) -> list[Any]:
    """The reveal's frames as uint8 RGB on paper, on the CPU: what the encoder is fed."""
    pixels, coverage = reveal_canvases(size, frames, torch.device("cpu"))
    return list(to_uint8(lay_on_paper((pixels + 1) / 2, coverage)))


def measure_processes(size: int, frames: int, workdir: Path, rounds: int = 3) -> list[list[Any]]:
    """Rows: the encoder alone with 1, 2, 4 and auto processes, frames/s, bytes and PSNR.

    The variants take turns, ``rounds`` times, and each keeps its fastest round.
    """
    images = picture_frames(size, frames)
    auto = encoder_processes(0)
    variants = [("1", 1), ("2", 2), ("4", 4), (f"auto ({auto})", auto)]
    best = {label: float("inf") for label, _ in variants}
    with FrameEncoder(workdir / "warm-up.mp4", size=(size, size), fps=30) as encoder:
        for image in images[:16]:  # ffmpeg's first start (binary, libraries) is not timed
            encoder.write(image)
    for _ in range(rounds):
        for label, processes in variants:
            start = time.perf_counter()
            with FrameEncoder(
                workdir / f"{label}.mp4", size=(size, size), fps=30, processes=processes
            ) as encoder:
                for image in images:
                    encoder.write(image)
            best[label] = min(best[label], time.perf_counter() - start)
    rows: list[list[Any]] = []
    for label, _ in variants:
        out = workdir / f"{label}.mp4"
        _, decoded = read_frames(out)
        pairs = zip(decoded, images, strict=True)
        mse = sum(float(((a.astype("float64") - b) ** 2).mean()) for a, b in pairs) / len(images)
        psnr = 10 * math.log10(255.0**2 / mse)
        speed = best["1"] / best[label]
        rows.append([f"{size}x{size}", frames, label, frames / best[label], speed, out.stat().st_size, psnr])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(parser)
    parser.add_argument("--frames", type=int, help="frames per size (default 240 at 512², 60 at 1024²)")
    args = parser.parse_args()
    device = resolve_args(args)
    quiet()
    print(machine_line(device))
    vae = sd15_vae(device, torch.float16) if device.type == "cuda" else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, default_frames in ((512, 240), (1024, 60)):
            rows.append(measure(size, args.frames or default_frames, device, vae, Path(tmp)))
            print(f"  done {size}", flush=True)
    source = (
        "SD 1.5 VAE fp16, batch 8" if vae is not None else "pixel canvases (the demo's closed-form model)"
    )
    print(f"\nH.264 (libx264 CRF 20, preset fast) through FrameEncoder; decode = {source}")
    print(
        table(
            rows,
            ["size", "frames", "encode fps", "decode fps", "both fps", "serial fps", "ideal fps", "overlap"],
        )
    )
    print("serial = no overlap (1 / (1/decode + 1/encode)); ideal = perfect overlap (the slower one alone);")
    print("overlap = share of the shorter stage hidden behind the longer.")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, default_frames in ((512, 300), (1024, 120)):
            rows += measure_processes(size, args.frames or default_frames, Path(tmp))
    print("\nThe encoder alone, segments of 64 frames encoded side by side (preset fast, CRF 20)")
    print(table(rows, ["size", "frames", "processes", "encode fps", "vs 1", "bytes", "PSNR dB"]))


if __name__ == "__main__":
    main()

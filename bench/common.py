"""What the painter benchmarks share: the machine line, timing, and full-size models with random weights.

Full-size architectures cost the same to run whatever their weights, so the decode and
end-to-end benchmarks build Stable Diffusion 1.5's components (VAE, UNet, CLIP text
encoder) and TAESD with random weights offline, exactly as the tiny test model is built
(painter/models.py), instead of downloading checkpoints. Their pictures are noise; their
timings and memory are the real ones.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# SD 1.5's VAE: four blocks (8x spatial factor), 4 latent channels.
SD15_VAE_CONFIG: dict[str, Any] = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
    "in_channels": 3,
    "out_channels": 3,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    # SD 1.5's VAE decodes in the pipeline's fp16 (diffusers upcasts only SDXL's); saved
    # without this, save_pretrained writes AutoencoderKL's default true and the painter's
    # decoder would measure an fp32 decode.
    "force_upcast": False,
}
# SD 1.5's UNet is diffusers' UNet2DConditionModel default but for these.
SD15_UNET_CONFIG: dict[str, Any] = {"sample_size": 64, "cross_attention_dim": 768}
# CLIP ViT-L/14's text tower, with the byte-level tokenizer's special-token ids.
SD15_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 512,
    "eos_token_id": 513,
    "pad_token_id": 513,
}


def quiet() -> None:
    """Silence the libraries' loading bars and notices, as the CLI does."""
    from bot.quiet import quiet_libraries

    quiet_libraries()


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--full``, the flags every painter benchmark takes."""
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda / cuda:N")
    parser.add_argument(
        "--full",
        action="store_true",
        help="the real sizes everywhere (default on CUDA; on the CPU it takes many minutes)",
    )


def resolve_args(args: argparse.Namespace) -> torch.device:
    """The device asked for; ``--full`` is implied on CUDA, where the real sizes are quick."""
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
        args.full = True
    return device


def machine_line(device: torch.device) -> str:
    """One line naming the machine, so a figure is never read without it."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [
        f"{cpu}, {os.cpu_count()} cores",
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
    ]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    else:
        parts.append("no GPU used")
    try:
        parts.append(f"load avg {os.getloadavg()[0]:.1f}")
    except OSError:
        pass
    return "machine: " + "; ".join(parts)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], Any], device: torch.device, *, repeat: int = 3, warmup: int = 1) -> float:
    """The fastest of ``repeat`` runs of ``fn`` in seconds, after ``warmup`` untimed runs.

    The fastest run is the one least disturbed by other work on a shared machine.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain text table, right-aligned numbers, for the terminal and RESULTS.md alike."""
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if n and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.2e}"
    return str(value)


def sd15_vae(device: torch.device, dtype: torch.dtype = torch.float32, **config: Any) -> Any:
    """SD 1.5's VAE architecture (83M parameters) with random weights; ``config`` overrides."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**{**SD15_VAE_CONFIG, **config}).to(device, dtype).eval()


def taesd(device: torch.device, dtype: torch.dtype = torch.float32) -> Any:
    """TAESD (diffusers ``AutoencoderTiny`` default config, 2.4M parameters) with random weights."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny().to(device, dtype).eval()


def build_sd15_pipeline(path: Path) -> Path:
    """Write an SD 1.5-architecture pipeline with random weights to ``path`` (~4 GB in fp32).

    Loading it back through ``load_pipeline`` then exercises the product's own path.
    The tokenizer is the tiny model's byte-level one: the prompt's token count, not
    its vocabulary, sets the text encoder's cost.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from painter.models import save_sd_pipeline

    if (path / "model_index.json").is_file():
        return path
    torch.manual_seed(0)
    return save_sd_pipeline(
        path,
        unet=UNet2DConditionModel(**SD15_UNET_CONFIG),
        vae=AutoencoderKL(**SD15_VAE_CONFIG),
        text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)),
    )


def tiny_trail(data_dir: Path, *, size: int = 512, steps: int = 30, seed: int = 1) -> torch.Tensor:
    """A real x0-hat trail ``[T, 4, size/8, size/8]`` captured from the tiny offline model.

    Captured once per size and kept under ``data_dir/bench`` (a capture takes ~20 s on a
    small CPU); the tiny model itself is built there on first use, as the CLI does.
    """
    from painter.capture import Generation, capture
    from painter.models import load_pipeline

    path = Path(data_dir) / "bench" / f"tiny-trail-{size}-{steps}-{seed}.pt"
    if path.is_file():
        return torch.load(path)
    model = load_pipeline("tiny", data_dir=data_dir, device="cpu")
    gen = Generation("a lighthouse at sunset", seed=seed, steps=steps, width=size, height=size)
    latents = capture(model, gen)[1].latents
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(latents, path)
    return latents


def tiny_vae(data_dir: Path) -> Any:
    """The tiny offline model's VAE (random weights, SD's 8x geometry), built on first use."""
    from diffusers import AutoencoderKL

    from painter.models import tiny_model_dir

    return AutoencoderKL.from_pretrained(tiny_model_dir(data_dir) / "vae").eval()


def upsample_plan(plan: torch.Tensor, size: int) -> torch.Tensor:
    """A plan resized to ``size``² cells (bilinear): SD 1.5's trail at SDXL's latent size."""
    if plan.shape[-1] == size:
        return plan
    return torch.nn.functional.interpolate(plan, size=(size, size), mode="bilinear", align_corners=False)


def default_data_dir() -> Path:
    """Where the benchmarks keep models they build: as the CLI, $LATENT_PAINTER_STORAGE_DATA_DIR or ./data."""
    return Path(os.environ.get("LATENT_PAINTER_STORAGE_DATA_DIR", "./data"))

"""Decode canvases to RGB, in batches, and lay unpainted cells onto paper."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_PAPER = (245, 240, 230)


def parse_colour(text: str) -> tuple[int, int, int]:
    """``#rrggbb`` to an RGB triple; a ValueError names the bad value."""
    value = text.strip().lstrip("#")
    if len(value) != 6:
        raise ValueError(f"colour {text!r} must be #rrggbb")
    try:
        return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))
    except ValueError:
        raise ValueError(f"colour {text!r} must be #rrggbb") from None


class Decoder:
    """Turns canvases ``[B, C, h, w]`` in a trail's space into RGB images ``[B, H, W, 3]`` uint8.

    ``vae`` is the pipeline's ``AutoencoderKL`` or an ``AutoencoderTiny`` (TAESD);
    ``None`` means the canvas is already RGB in [-1, 1] (the closed-form model).
    """

    def __init__(
        self,
        vae: Any | None = None,
        *,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 8,
    ) -> None:
        self.vae = vae
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tiny = vae is not None and type(vae).__name__ == "AutoencoderTiny"
        # TAESD reads the UNet's scaled latents as they are.
        self.scaling_factor = 1.0 if self.tiny else scaling_factor
        self.shift_factor = 0.0 if self.tiny else shift_factor
        self.dtype = dtype
        if vae is not None and dtype == torch.float16 and _asks_for_upcast(vae):
            self.dtype = torch.float32
        if vae is not None:
            if vae.device != self.device or vae.dtype != self.dtype:
                self.vae = vae.to(self.device, self.dtype)
            self.vae.eval()
        self.scale = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)

    @torch.inference_mode()
    def decode_float(self, canvases: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1], ``[B, 3, H, W]`` on the decoder's device, float32."""
        out = []
        # On the CPU one canvas per VAE call is fastest: a batch's activations spill out of
        # the caches (bench/bench_decode.py: batch 8 decoded 1.4-1.8x slower than one by one).
        size = 1 if self.device.type == "cpu" and self.vae is not None else self.batch_size
        for chunk in canvases.split(size):
            chunk = chunk.to(self.device, self.dtype)
            if self.vae is None:
                rgb = chunk
            else:
                rgb = self.vae.decode(chunk / self.scaling_factor + self.shift_factor).sample
            out.append(((rgb.float() + 1) / 2).clamp_(0, 1))
        return torch.cat(out)

    def decode(self, canvases: torch.Tensor) -> np.ndarray:
        """RGB uint8 ``[B, H, W, 3]`` on the CPU."""
        rgb = self.decode_float(canvases)
        return to_uint8(rgb)


def _asks_for_upcast(vae: Any) -> bool:
    """Whether the VAE's own config says it overflows in fp16 (SDXL's does).

    diffusers defaults ``force_upcast`` to True for configs that never mention it (SD
    1.5's), and SD 1.5's pipeline decodes in fp16 regardless: only an explicit setting
    counts, so SD 1.5 keeps its fast fp16 decode.
    """
    config = vae.config
    defaulted = set(config.get("_use_default_values", []) or [])
    return bool(config.get("force_upcast", False)) and "force_upcast" not in defaulted


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` floats in [0, 1] to ``[B, H, W, 3]`` uint8."""
    # Contiguous here, in one batched copy, so the encoder need not copy each frame.
    return (rgb * 255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def lay_on_paper(
    rgb: torch.Tensor,
    painted: torch.Tensor,
    paper: tuple[int, int, int] | torch.Tensor = DEFAULT_PAPER,
) -> torch.Tensor:
    """Show only painted cells: elsewhere the paper, with soft brush edges.

    ``rgb`` is ``[B, 3, H, W]`` in [0, 1]; ``painted`` is ``[B, h, w]`` (bool or
    coverage in [0, 1]) on the canvas grid. ``paper`` is a colour, or a picture
    ``[3, H, W]`` in [0, 1] (repainting a photo: it shows until painted over). The
    all-zero latent does not decode to white, so this is what makes a fresh canvas
    look like blank paper.
    """
    height, width = rgb.shape[-2:]
    cover = painted.to(rgb.device, torch.float32)[:, None]
    if cover.shape[-2:] != (height, width):
        cover = F.interpolate(cover, size=(height, width), mode="bilinear", align_corners=False)
    if isinstance(paper, torch.Tensor):
        backdrop = paper.to(rgb.device, torch.float32)[None]
    else:
        backdrop = torch.tensor(paper, device=rgb.device, dtype=torch.float32).view(1, 3, 1, 1) / 255
    return rgb * cover + backdrop * (1 - cover)
